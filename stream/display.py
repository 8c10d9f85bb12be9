"""Amounts, moments and rings as people read them: one spelling for the CLI tables and the rings picture.

Amounts are shown exactly (a Decimal is never rounded to a float): two decimal
places unless the amount has more, thousands separated, followed by its
currency code when it has one. Moments are UTC with the full date.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal

from ringwatch.graph import Alert


def money(amount: Decimal | float | int, currency: str | None = None) -> str:
    """`1,234.50 USD`: exact, at least two decimal places, the currency code when there is one."""
    exact = amount if isinstance(amount, Decimal) else Decimal(repr(amount) if isinstance(amount, float) else amount)
    places = max(2, -exact.normalize().as_tuple().exponent) if exact.is_finite() else 2
    text = f"{exact:,.{places}f}"
    return f"{text} {currency}" if currency else text


def total(amount: Decimal, currency: str | None, totals: Mapping[str, Decimal] | None = None) -> str:
    """A total with its currency; per currency ("1.00 EUR + 2.00 USD") when `totals` splits a mixed one."""
    if totals:
        return " + ".join(money(part, code or None) for code, part in sorted(totals.items()))
    return money(amount, currency)


def alert_total(alert: Alert) -> str:
    """The ring's total with its currency; per currency when its payments mix currencies."""
    return total(alert.total_amount, alert.currency, alert.totals)


def moment(ms: int | None, *, seconds: bool = True) -> str:
    """`2024-01-10 05:38:58` (UTC); "-" for no moment."""
    if ms is None:
        return "-"
    layout = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime(layout)


def ring_text(accounts: Sequence[str]) -> str:
    """`A -> B -> C -> A`: the ring in payment order, back to where it started."""
    return " -> ".join([*accounts, accounts[0]])

"""What counts as a ring: the search options, checked once where they are made.

The definition (docs/architecture.md, "The ring"): a simple cycle of 2 to
`max_hops` accounts, one payment per hop; its trigger is its newest payment in
`(ts, tx_id)` order; under `order="strict"` the payments read around the cycle
from just after the trigger never go back in time; the trigger is at most
`window_ms` after the earliest payment; with a flow rule each hop's amount is
within `[min_ratio, max_ratio]` of the previous hop's (the trigger's last);
payments below `min_amount` take no part. `max_rings_per_tx` caps what one
trigger reports and `max_degree` (off by default) skips hub accounts; both
cuts are reported on the alert and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ringwatch.runtime.errors import RingwatchError

from .model import AMOUNT_SCALE, InvalidTransactionError, parse_amount

ORDERS = ("strict", "none")


class InvalidSearchOptionError(RingwatchError, ValueError):
    """A search option out of range; the message names it."""


@dataclass(frozen=True)
class SearchOptions:
    max_hops: int = 6
    window_ms: int = 7 * 86_400_000
    order: str = "strict"
    min_amount: Decimal | None = None
    min_ratio: float | None = None
    max_ratio: float | None = None
    max_rings_per_tx: int | None = 100
    max_degree: int | None = None  # the hub guard: opt-in, every cut reported

    def __post_init__(self) -> None:
        if self.min_amount is not None and not isinstance(self.min_amount, Decimal):
            try:
                object.__setattr__(self, "min_amount", parse_amount(self.min_amount, max_amount=None))
            except InvalidTransactionError as exc:
                raise InvalidSearchOptionError(f"min_amount: {exc.reason}") from None
        if not isinstance(self.max_hops, int) or self.max_hops < 2:
            raise InvalidSearchOptionError(f"max_hops: need an int >= 2, got {self.max_hops!r}")
        if self.window_ms is None or self.window_ms < 0:
            raise InvalidSearchOptionError(f"window: need a non-negative duration, got {self.window_ms!r}")
        if self.order not in ORDERS:
            raise InvalidSearchOptionError(f"order: expected one of {ORDERS}, got {self.order!r}")
        if (self.min_ratio is None) != (self.max_ratio is None):
            raise InvalidSearchOptionError("min_ratio/max_ratio: give both bounds of the flow rule or neither")
        if self.min_ratio is not None and not 0 < self.min_ratio <= self.max_ratio:
            raise InvalidSearchOptionError(
                f"min_ratio/max_ratio: need 0 < min_ratio <= max_ratio, got {self.min_ratio}, {self.max_ratio}")
        for name in ("max_rings_per_tx", "max_degree"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidSearchOptionError(f"{name}: need an int >= 1 or None, got {value!r}")

    @property
    def flow_rule(self) -> bool:
        return self.min_ratio is not None

    @property
    def min_amount_units(self) -> int:
        """`min_amount` in the store's 1/10,000 units (0: no minimum)."""
        return 0 if self.min_amount is None else int(self.min_amount * AMOUNT_SCALE)

"""The records every part of ringwatch exchanges: `Transaction` in, `Alert` out.

Validation lives here so a Kafka message, a CSV row and a Python dict are all
judged by one rule, and every rejection names the field at fault.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping

from ringwatch.runtime.errors import RingwatchError

from .pickling import CompactPickle

_CORE_FIELDS = ("tx_id", "src", "dst", "amount", "ts", "currency")

AMOUNT_SCALE = 10_000  # the graph stores amounts as int64 in 1/10,000 units: 4 decimal places, every ISO 4217 currency
DEFAULT_MAX_AMOUNT = Decimal(10) ** 12  # the default ceiling on one payment; `Transaction.from_dict(max_amount=...)`
TS_MIN = 0  # 1970-01-01T00:00:00Z in epoch ms
TS_MAX = 7_258_118_400_000  # 2200-01-01T00:00:00Z: anything later is a typo or an attack, not a payment


class InvalidTransactionError(RingwatchError, ValueError):
    """A transaction that does not fit the contract; `field` names the culprit."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Transaction(CompactPickle):
    """One payment: a directed edge `src -> dst` at event time `ts` (epoch milliseconds)."""

    tx_id: str
    src: str
    dst: str
    amount: Decimal
    ts: int
    currency: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Exact money everywhere: an int or float given in Python code becomes the Decimal it spells.
        if not isinstance(self.amount, Decimal):
            object.__setattr__(self, "amount", parse_amount(self.amount))

    @property
    def amount_units(self) -> int:
        """The amount in 1/10,000 units, as the graph stores it."""
        return int(self.amount * AMOUNT_SCALE)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], *, max_amount: Decimal = DEFAULT_MAX_AMOUNT) -> "Transaction":
        """Validate a decoded message or row; raise `InvalidTransactionError` naming the bad field.

        Parse JSON with `parse_float=Decimal` (see `loads`) so amounts arrive exact.
        """
        if type(record) is not dict and not isinstance(record, Mapping):  # a decoded message is a dict: no ABC check
            raise InvalidTransactionError("message", f"expected a JSON object, got {type(record).__name__}")
        currency = record.get("currency")
        if currency is not None and not isinstance(currency, str):
            raise InvalidTransactionError("currency", f"expected a string, got {currency!r}")
        return cls(
            tx_id=_identifier(record, "tx_id"),
            src=_identifier(record, "src"),
            dst=_identifier(record, "dst"),
            amount=parse_amount(record.get("amount"), max_amount=max_amount),
            ts=parse_timestamp(record.get("ts"), required=True),
            currency=currency,
            extra={k: v for k, v in record.items() if k not in _CORE_FIELDS},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tx_id": self.tx_id, "src": self.src, "dst": self.dst,
                               "amount": decimal_text(self.amount), "ts": self.ts}
        if self.currency is not None:
            out["currency"] = self.currency
        out.update(self.extra)
        return out


def _identifier(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if value is None:
        raise InvalidTransactionError(name, "missing")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidTransactionError(name, f"expected a string, got {type(value).__name__} {value!r}")
    text = str(value)
    if not text.strip():
        raise InvalidTransactionError(name, "empty")
    return text


def parse_amount(value: Any, *, max_amount: Decimal | None = DEFAULT_MAX_AMOUNT) -> Decimal:
    """An exact amount: > 0, finite, at most 4 decimal places, at most `max_amount`.

    A float is read as the decimal it prints as (`repr`), so 20095.23 stays 20095.23.
    """
    if value is None:
        raise InvalidTransactionError("amount", "missing")
    if isinstance(value, bool):
        raise InvalidTransactionError("amount", f"expected a number, got {_shown(value)}")
    try:
        if isinstance(value, Decimal):
            amount = value
        elif isinstance(value, (int, str)):
            amount = Decimal(value.strip() if isinstance(value, str) else value)
        elif isinstance(value, float):
            amount = Decimal(repr(value))
        else:
            raise InvalidOperation
    except (InvalidOperation, ValueError):
        raise InvalidTransactionError("amount", f"expected a number, got {_shown(value)}") from None
    if not amount.is_finite() or amount <= 0:
        raise InvalidTransactionError("amount", f"must be a finite number > 0, got {_shown(value)}")
    if max_amount is not None and amount > max_amount:
        raise InvalidTransactionError("amount", f"{_shown(value)} is above the ceiling {max_amount}")
    if amount.normalize().as_tuple().exponent < -4:
        raise InvalidTransactionError("amount", f"{_shown(value)} has more than 4 decimal places")
    return amount


def _shown(value: Any) -> str:
    """A value as a reason shows it: JSON numbers arrive as Decimal, and read best as plain numbers."""
    return str(value) if isinstance(value, Decimal) else repr(value)


def decimal_text(amount: Decimal) -> str:
    """An exact amount as plain decimal text (no exponent): how amounts travel in JSON."""
    text = format(amount.normalize(), "f")
    return text


_DECODER = json.JSONDecoder(parse_float=Decimal)  # one decoder: json.loads(..., parse_float=) builds one per call


def loads(data: str | bytes) -> Any:
    """JSON with exact amounts: numbers with a fraction become `Decimal`, never float."""
    if isinstance(data, (bytes, bytearray)):
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    return _DECODER.decode(data)


def parse_timestamp(value: Any, *, required: bool = False, name: str = "ts") -> int:
    """Epoch milliseconds from epoch milliseconds (number or digit string) or ISO-8601.

    An ISO-8601 time without a zone is read as UTC.
    """
    if value is None:
        raise InvalidTransactionError(name, "missing")
    if isinstance(value, bool):
        raise InvalidTransactionError(name, f"cannot read {_shown(value)} as a timestamp")
    return _in_range(_timestamp(value, name), value, name)


def _timestamp(value: Any, name: str) -> int:
    if isinstance(value, (int, float, Decimal)):
        if isinstance(value, float) and not math.isfinite(value) or isinstance(value, Decimal) and not value.is_finite():
            raise InvalidTransactionError(name, f"cannot read {_shown(value)} as a timestamp")
        if not TS_MIN <= value <= TS_MAX:  # compared before int(): int(1e308) is a 300-digit number
            _in_range(TS_MAX + 1, value, name)
        return int(value)
    if isinstance(value, datetime):
        return _datetime_ms(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            if len(text) > 16:
                raise InvalidTransactionError(name, f"{text[:24]!r}… is outside 1970-2200 (epoch milliseconds)")
            return int(text)
        try:
            return _datetime_ms(datetime.fromisoformat(text.replace("Z", "+00:00")))
        except (ValueError, OverflowError):
            pass
        for layout in ("%Y/%m/%d %H:%M", "%Y/%m/%d %H:%M:%S"):
            try:
                return _datetime_ms(datetime.strptime(text, layout))
            except ValueError:
                continue
    raise InvalidTransactionError(name, f"cannot read {_shown(value)} as epoch milliseconds or ISO-8601")


def _in_range(ms: int, value: Any, name: str) -> int:
    if not TS_MIN <= ms <= TS_MAX:
        raise InvalidTransactionError(name, f"{_shown(value)} is outside the years 1970-2200 "
                                            f"(epoch milliseconds {TS_MIN}..{TS_MAX})")
    return ms


def _datetime_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def alert_id(trigger_tx_id: str, accounts: tuple[str, ...] | list[str]) -> str:
    """Stable id of the ring `accounts` closed by `trigger_tx_id`: a replay raises the same id.

    sha256 of the trigger's tx id and each account, each account preceded by 0x1f.
    """
    return hashlib.sha256("\x1f".join((trigger_tx_id, *accounts)).encode()).hexdigest()[:32]


MIXED = "mixed"  # an alert's `currency` when its payments are in several currencies


@dataclass(frozen=True, slots=True)
class Alert(CompactPickle):
    """A ring closed by `trigger_tx_id`.

    `accounts` is the ring in payment order starting at the trigger's `dst`
    (`v -> ... -> u`, then the trigger `u -> v`); `tx_ids[i]` witnesses the hop
    `accounts[i] -> accounts[i+1]`, the last one being the trigger itself.

    Money is exact: `total_amount` is a `Decimal`. `currency` is the payments'
    currency, None when they carry none, or `MIXED` ("mixed") when they differ;
    then `totals` holds the exact total per currency (`""` for payments without
    one) and `total_amount` is only their plain sum, a figure to rank by, not
    money. In JSON every amount is a decimal string ("20095.23"), exact for
    every parser. `cut_by` names what cut the search short (`max_rings_per_tx`,
    `max_degree`); `truncated` is true when anything did.
    """

    alert_id: str
    trigger_tx_id: str
    accounts: tuple[str, ...]
    tx_ids: tuple[str, ...]
    hops: int
    total_amount: Decimal
    first_ts: int
    last_ts: int
    detected_at: int
    latency_ms: float
    truncated: bool = False
    currency: str | None = None
    totals: Mapping[str, Decimal] = field(default_factory=dict)
    cut_by: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.total_amount, Decimal):
            object.__setattr__(self, "total_amount", _exact(self.total_amount))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lists for tuples, decimal strings for amounts."""
        return {
            "alert_id": self.alert_id, "trigger_tx_id": self.trigger_tx_id, "accounts": list(self.accounts),
            "tx_ids": list(self.tx_ids), "hops": self.hops, "total_amount": decimal_text(self.total_amount),
            "currency": self.currency, "totals": {k: decimal_text(v) for k, v in self.totals.items()},
            "first_ts": self.first_ts, "last_ts": self.last_ts, "detected_at": self.detected_at,
            "latency_ms": self.latency_ms, "truncated": self.truncated, "cut_by": list(self.cut_by),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "Alert":
        data = dict(record)
        data["accounts"] = tuple(data["accounts"])
        data["tx_ids"] = tuple(data["tx_ids"])
        data["total_amount"] = _exact(data["total_amount"])
        data["totals"] = {k: _exact(v) for k, v in (data.get("totals") or {}).items()}
        data["cut_by"] = tuple(data.get("cut_by") or ())
        names = cls.__slots__
        return cls(**{k: v for k, v in data.items() if k in names})


class _AlertDraft(CompactPickle):
    """`Alert`'s slots, same layout, writable: `alerts_from_columns` fills one and then makes it an `Alert`."""

    __slots__ = Alert.__slots__


def alerts_from_columns(*columns: Iterable[Any]) -> list[Alert]:
    """Alerts from one column per field, in field order, with the values `Alert` stores (`total_amount` a Decimal).

    For the graph, which raises dozens of rings per payment in a dense graph:
    a frozen dataclass's `__init__` sets each field through `object.__setattr__`
    by name, and even calling each slot's setter costs a call per field, which
    was the largest part of building an alert. Here each field is a plain
    attribute store on an `_AlertDraft` (same slots, not frozen), whose class
    is then switched to `Alert`: the result is the same `Alert`, in about half
    the time.
    """
    new = object.__new__
    alerts: list[Alert] = []
    append = alerts.append
    for a, b, c, d, e, f, g, h, i, j, k, l, m, n in zip(*columns, strict=True):
        alert = new(_AlertDraft)
        alert.alert_id = a
        alert.trigger_tx_id = b
        alert.accounts = c
        alert.tx_ids = d
        alert.hops = e
        alert.total_amount = f
        alert.first_ts = g
        alert.last_ts = h
        alert.detected_at = i
        alert.latency_ms = j
        alert.truncated = k
        alert.currency = l
        alert.totals = m
        alert.cut_by = n
        alert.__class__ = Alert
        append(alert)
    return alerts


def _exact(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(repr(value) if isinstance(value, float) else str(value))

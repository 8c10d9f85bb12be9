"""The records every part of ringwatch exchanges: `Transaction` in, `Alert` out.

Validation lives here so a Kafka message, a CSV row and a Python dict are all
judged by one rule, and every rejection names the field at fault.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from .pickling import CompactPickle

_CORE_FIELDS = ("tx_id", "src", "dst", "amount", "ts", "currency")


class InvalidTransactionError(ValueError):
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
    amount: float
    ts: int
    currency: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "Transaction":
        """Validate a decoded message or row; raise `InvalidTransactionError` naming the bad field."""
        if not isinstance(record, Mapping):
            raise InvalidTransactionError("message", f"expected a JSON object, got {type(record).__name__}")
        currency = record.get("currency")
        if currency is not None and not isinstance(currency, str):
            raise InvalidTransactionError("currency", f"expected a string, got {currency!r}")
        return cls(
            tx_id=_identifier(record, "tx_id"),
            src=_identifier(record, "src"),
            dst=_identifier(record, "dst"),
            amount=_amount(record),
            ts=parse_timestamp(record.get("ts"), required=True),
            currency=currency,
            extra={k: v for k, v in record.items() if k not in _CORE_FIELDS},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tx_id": self.tx_id, "src": self.src, "dst": self.dst,
                               "amount": self.amount, "ts": self.ts}
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


def _amount(record: Mapping[str, Any]) -> float:
    value = record.get("amount")
    if value is None:
        raise InvalidTransactionError("amount", "missing")
    if isinstance(value, bool):
        raise InvalidTransactionError("amount", f"expected a number, got {value!r}")
    try:
        amount = float(value)
    except (TypeError, ValueError):
        raise InvalidTransactionError("amount", f"expected a number, got {value!r}") from None
    if not math.isfinite(amount) or amount <= 0:
        raise InvalidTransactionError("amount", f"must be a finite number > 0, got {value!r}")
    return amount


def parse_timestamp(value: Any, *, required: bool = False, name: str = "ts") -> int:
    """Epoch milliseconds from epoch milliseconds (number or digit string) or ISO-8601.

    An ISO-8601 time without a zone is read as UTC.
    """
    if value is None:
        raise InvalidTransactionError(name, "missing")
    if isinstance(value, bool):
        raise InvalidTransactionError(name, f"cannot read {value!r} as a timestamp")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidTransactionError(name, f"cannot read {value!r} as a timestamp")
        return int(value)
    if isinstance(value, datetime):
        return _datetime_ms(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            return _datetime_ms(datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            pass
        for layout in ("%Y/%m/%d %H:%M", "%Y/%m/%d %H:%M:%S"):
            try:
                return _datetime_ms(datetime.strptime(text, layout))
            except ValueError:
                continue
    raise InvalidTransactionError(name, f"cannot read {value!r} as epoch milliseconds or ISO-8601")


def _datetime_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def alert_id(trigger_tx_id: str, accounts: tuple[str, ...] | list[str]) -> str:
    """Stable id of the ring `accounts` closed by `trigger_tx_id`: a replay raises the same id."""
    digest = hashlib.sha256()
    digest.update(trigger_tx_id.encode())
    for account in accounts:
        digest.update(b"\x1f")
        digest.update(account.encode())
    return digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Alert(CompactPickle):
    """A ring closed by `trigger_tx_id`.

    `accounts` is the ring in payment order starting at the trigger's `dst`
    (`v -> ... -> u`, then the trigger `u -> v`); `tx_ids[i]` witnesses the hop
    `accounts[i] -> accounts[i+1]`, the last one being the trigger itself.
    """

    alert_id: str
    trigger_tx_id: str
    accounts: tuple[str, ...]
    tx_ids: tuple[str, ...]
    hops: int
    total_amount: float
    first_ts: int
    last_ts: int
    detected_at: int
    latency_ms: float
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["accounts"] = list(self.accounts)
        out["tx_ids"] = list(self.tx_ids)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "Alert":
        data = dict(record)
        data["accounts"] = tuple(data["accounts"])
        data["tx_ids"] = tuple(data["tx_ids"])
        return cls(**data)

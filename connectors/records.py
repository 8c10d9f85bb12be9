"""`SourceRecord`: what every source yields, and the one way raw input becomes one.

A source never drops input: a row or message that does not fit the transaction
contract still becomes a record, carrying its raw bytes and the reason, so the
engine can send it to a dead-letter destination and still advance past it.
Kafka messages and JSON lines share `record_from_json`; CSV and Parquet rows
share `record_from_mapping`, so all sources judge input by the same rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from ringwatch.graph import InvalidTransactionError, Transaction, loads

from .mapping import IDENTITY, FieldMapping, RecordRejected


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One message or row: a valid `transaction`, or the `raw` input and the `error` that rejected it.

    `position` is `(topic, partition, offset)`: a Kafka message's, or `(path, 0, row_number)`
    for a file and `("synthetic", 0, row_number)` for the generator. `key` is the message key
    (Kafka), kept so a dead letter carries it.
    """

    position: tuple[str, int, int]
    transaction: Transaction | None
    raw: bytes | None = None
    error: str | None = None
    key: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def partition(self) -> tuple[str, int]:
        return (self.position[0], self.position[1])

    @property
    def offset(self) -> int:
        return self.position[2]


def record_from_mapping(position: tuple[str, int, int], data: Mapping[str, Any], raw: bytes | None = None,
                        key: bytes | None = None, *, mapping: FieldMapping = IDENTITY,
                        origin: tuple | None = None) -> SourceRecord:
    """Check, map and validate a decoded row; on failure keep `raw` (or the row as JSON) and the reason.

    `origin` is the record's place as the mapping's `@source`, `@partition`, `@offset` see it
    (a file: its stem, 0, the row number); by default `position`.
    """
    try:
        mapped = data
        if not mapping.is_identity and isinstance(data, Mapping):
            mapped = mapping.apply(data, origin or position)
        return SourceRecord(position, Transaction.from_dict(mapped, max_amount=mapping.max_amount), raw, None, key)
    except (InvalidTransactionError, RecordRejected) as exc:
        if raw is None:
            raw = json.dumps(dict(data), default=str, separators=(",", ":")).encode()
        reason = exc.reason if isinstance(exc, RecordRejected) else f"invalid:{exc}"
        return SourceRecord(position, None, raw, reason, key)


def record_from_json(position: tuple[str, int, int], raw: bytes, max_bytes: int | None = None,
                     key: bytes | None = None, *, mapping: FieldMapping = IDENTITY,
                     origin: tuple | None = None) -> SourceRecord:
    """Decode and validate one JSON object (a Kafka message value or a JSON line)."""
    if max_bytes is not None and len(raw) > max_bytes:
        return SourceRecord(position, None, raw, f"oversize:{len(raw)} bytes > limit {max_bytes}", key)
    try:
        data = loads(raw)  # exact amounts: numbers with a fraction become Decimal
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return SourceRecord(position, None, raw, f"malformed:not JSON: {exc}", key)
    if not isinstance(data, dict):
        return SourceRecord(position, None, raw, f"malformed:expected a JSON object, got {type(data).__name__}",
                            key)
    return record_from_mapping(position, data, raw, key, mapping=mapping, origin=origin)

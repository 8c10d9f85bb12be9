"""`SourceBatch`: what `Source.poll` returns — a poll's rows as payment columns for the engine, as records for the rest.

The engine's hot path never builds one Python object per payment: it joins a
micro-batch's polls (`SourceBatch.joined`) and asks for `payments()` once,
which decodes every row of the micro-batch in bulk (`columns.json_payments`
for Kafka's JSON) into a `PAYMENT_SCHEMA` table, the refused rows coming back
as error records with the per-row rule's reason. Anything else — a dead letter,
a test, a script — reads rows as `SourceRecord`s (`batch[i]`, iteration), each
judged alone by the per-row rule, so both views agree on every row.

Positions are columns too: row `i` is at `partitions[partition_ids[i]]`,
offset `offsets[i]`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ringwatch.graph import PAYMENT_SCHEMA, payment_table

from .columns import Payments, json_payments
from .mapping import IDENTITY, FieldMapping
from .records import SourceRecord, record_from_json

Partition = tuple[str, int]


class RowDecoder(Protocol):
    """How a source's rows become records (one at a time) and payments (in bulk), by one rule."""

    def record(self, position: tuple[str, int, int], item: Any, key: bytes | None) -> SourceRecord: ...

    def payments(self, batch: "SourceBatch") -> Payments: ...


@dataclass(frozen=True)
class JsonDecoder:
    """Rows that are JSON message values (Kafka): bulk through Arrow when the mapping is the identity."""

    max_bytes: int | None = None
    mapping: FieldMapping = IDENTITY

    def record(self, position: tuple[str, int, int], item: bytes | None, key: bytes | None) -> SourceRecord:
        if item is None:
            return SourceRecord(position, None, b"", "malformed:message has no value", key)
        return record_from_json(position, item, self.max_bytes, key, mapping=self.mapping)

    def payments(self, batch: "SourceBatch") -> Payments:
        if not self.mapping.is_identity:  # a mapping reads any layout: row by row
            return records_payments(list(batch))
        return json_payments(batch.items, batch.__getitem__, self.mapping.max_amount, self.max_bytes)


class RecordDecoder:
    """Rows that are records already (files, the generator): bulk is their valid transactions as columns."""

    def record(self, position: tuple[str, int, int], item: SourceRecord, key: bytes | None) -> SourceRecord:
        return item

    def payments(self, batch: "SourceBatch") -> Payments:
        return records_payments(batch.items)


RECORDS = RecordDecoder()


def records_payments(records: Sequence[SourceRecord]) -> Payments:
    """Decoded records as payments: the valid ones' columns, the others as they are."""
    valid = [k for k, record in enumerate(records) if record.ok]
    return Payments(payment_table([records[k].transaction for k in valid]), np.asarray(valid, np.int64),
                    [record for record in records if not record.ok])


class SourceBatch(Sequence[SourceRecord]):
    """The rows of one poll (or of a micro-batch's polls, `joined`), in poll order."""

    def __init__(self, partitions: list[Partition], partition_ids: np.ndarray, offsets: np.ndarray,
                 items: list, keys: list[bytes | None] | None, decoder: RowDecoder):
        self.partitions = partitions
        self.partition_ids = partition_ids
        self.offsets = offsets
        self.items = items
        self.keys = keys
        self.decoder = decoder
        self._payments: Payments | None = None

    @classmethod
    def of_records(cls, records: Sequence[SourceRecord]) -> "SourceBatch":
        """Records a source decoded one by one (files, the generator)."""
        partitions = sorted({record.partition for record in records})
        ids = {partition: i for i, partition in enumerate(partitions)}
        return cls(partitions, np.asarray([ids[r.partition] for r in records], np.int32),
                   np.asarray([r.offset for r in records], np.int64), list(records), None, RECORDS)

    @classmethod
    def empty(cls, decoder: RowDecoder = RECORDS) -> "SourceBatch":
        return cls([], np.zeros(0, np.int32), np.zeros(0, np.int64), [], None, decoder)

    @classmethod
    def joined(cls, batches: Sequence["SourceBatch"]) -> "SourceBatch":
        """Consecutive polls of one source as one batch: decoded together (one bulk call per micro-batch), or
        joined from the polls' payments when each was decoded already."""
        if len(batches) == 1:
            return batches[0]
        if not batches:
            return cls.empty()
        partitions = sorted({p for batch in batches for p in batch.partitions})
        ids = {partition: i for i, partition in enumerate(partitions)}
        partition_ids = np.concatenate([np.asarray([ids[p] for p in batch.partitions], np.int32)[batch.partition_ids]
                                        if len(batch) else np.zeros(0, np.int32) for batch in batches])
        items = [item for batch in batches for item in batch.items]
        keys = None if all(batch.keys is None for batch in batches) else \
            [key for batch in batches for key in (batch.keys or [None] * len(batch))]
        joined = cls(partitions, partition_ids, np.concatenate([batch.offsets for batch in batches]), items, keys,
                     batches[0].decoder)
        if all(batch._payments is not None for batch in batches):  # decoded poll by poll: not again
            joined._payments = Payments.joined([batch.payments() for batch in batches], [len(b) for b in batches])
        return joined

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, row: int) -> SourceRecord:  # type: ignore[override]
        """Row `row` as a record, judged alone by the per-row rule (slices are not supported)."""
        topic, partition = self.partitions[self.partition_ids[row]]
        key = self.keys[row] if self.keys is not None else None
        return self.decoder.record((topic, partition, int(self.offsets[row])), self.items[row], key)

    def __iter__(self) -> Iterator[SourceRecord]:
        return (self[row] for row in range(len(self)))

    def payments(self) -> Payments:
        """Every row decoded in bulk (once): the valid ones as columns, the refused as error records."""
        if self._payments is None:
            self._payments = self.decoder.payments(self) if len(self) else \
                Payments(PAYMENT_SCHEMA.empty_table(), np.zeros(0, np.int64))
        return self._payments

    def next_positions(self) -> dict[Partition, int]:
        """Per partition, the offset after its last row here."""
        if not len(self):
            return {}
        ends = np.full(len(self.partitions), -1, np.int64)
        np.maximum.at(ends, self.partition_ids, self.offsets)
        return {partition: int(end) + 1 for partition, end in zip(self.partitions, ends.tolist()) if end >= 0}

    def below(self, limits: dict[Partition, int]) -> np.ndarray:
        """Per row: whether its offset is below its partition's limit in `limits` (absent: 0)."""
        per_partition = np.asarray([limits.get(p, 0) for p in self.partitions], np.int64)
        return self.offsets < per_partition[self.partition_ids] if len(self) else np.zeros(0, np.bool_)


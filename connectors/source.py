"""The `Source` seam: what the engine asks of anything that feeds it payments.

Kafka (`KafkaSource`), files (`FileSource`) and the synthetic generator
(`GeneratorSource`) all implement it, so the engine has one loop for all of
them. A source only reads and parses: every record comes back from `poll`,
valid or not, at its `(topic, partition, offset)`; the engine decides what is
refused (unparseable, invalid, late, future) and hands it back to the source's
`dead_letter`, which puts it where that source keeps rejects (Kafka: a
dead-letter topic with the reason in headers; files and the generator: the
`dead_letters` list).

Positions are per partition: `commit({partition: next_offset})` says
everything before `next_offset` is safely processed, `seek` resumes from given
offsets. `caught_up()` names the partitions with nothing more to read right now
(the event-time clock needs it to tell an idle partition from one not fetched
yet). `hold` pauses partitions read too far ahead in event time (the engine's
alignment); `keep_alive` keeps a consumer group's membership while the engine
works on a batch and reads nothing.

`SequentialSource` is the one-partition implementation shared by the file
sources and the generator: positions are row numbers and there is no consumer
group, so positions live only in the engine's checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from .records import SourceRecord
from .source_batch import SourceBatch

logger = logging.getLogger(__name__)

Partition = tuple[str, int]
Positions = Mapping[Partition, int]


class RebalanceListener(Protocol):
    """Told when partitions come and go (a consumer group rebalanced); the calls may block."""

    def on_revoke(self, partitions: list[Partition]) -> None: ...
    def on_assign(self, partitions: list[Partition]) -> None: ...


class Source(Protocol):
    """A partitioned, replayable stream of `SourceRecord`s."""

    def poll(self, max_records: int, timeout_ms: int) -> SourceBatch:
        """Up to `max_records` records, waiting at most `timeout_ms` for the first; rebalances happen here.

        The batch is the records (a sequence of `SourceRecord`) and their payment columns (`payments()`).
        """
        ...

    def dead_letter(self, record: SourceRecord, reason: str) -> None:
        """Keep a refused record with its reason (made durable by the next `commit`)."""
        ...

    def commit(self, positions: Positions, *, wait: bool = True) -> None:
        """Everything before each partition's offset is processed: dead letters first, then the offsets.

        `wait=False` may return before the offsets are stored (a failure is then
        only logged): for commits that a later one supersedes.
        """
        ...

    def seek(self, positions: Positions) -> None:
        """Read each partition from the given offset next."""
        ...

    def hold(self, partitions: Collection[Partition]) -> None:
        """Prefer every other partition to `partitions` until the next `hold` (event-time alignment).

        Records read ahead from a held partition are kept for when it is read
        again; a poll that finds nothing else returns them rather than nothing,
        so holding never stalls a source.
        """
        ...

    def keep_alive(self) -> None:
        """Tell the consumer group this member is alive without reading a record; rebalances happen here too."""
        ...

    def committed(self, partition: Partition) -> int | None:
        """The committed offset of `partition` (None if never committed)."""
        ...

    def caught_up(self) -> set[Partition]:
        """Assigned partitions with nothing more to read now (position at the log end)."""
        ...

    def lag(self) -> dict[Partition, int]:
        """Records behind the log end, per assigned partition whose log end is known, as of the last poll.

        Safe to call from any thread (the metrics scrape reads it).
        """
        ...

    def assignment(self) -> list[Partition]:
        ...

    def close(self) -> None:
        ...


@dataclass(frozen=True)
class DeadLetter:
    """A refused record as a file or generator source keeps it."""

    partition: Partition
    offset: int
    key: bytes | None
    reason: str
    raw: bytes | None


class NoListener:
    """For sources used without an engine: rebalances are not reported."""

    def on_revoke(self, partitions: list[Partition]) -> None:
        pass

    def on_assign(self, partitions: list[Partition]) -> None:
        pass


class SequentialSource:
    """One partition read in order from `rows(start)`; subclasses say what the rows are.

    The partition is assigned on the first `poll`, as a consumer group would.
    With `rate` (records/s) records become available at that pace from the
    first poll on, so a benchmark can offer a fixed load. When nothing is
    available `poll` waits out its timeout, like a Kafka poll of a drained topic,
    and the partition counts as caught up; `exhausted` is set once every row has
    been handed out.
    """

    def __init__(self, partition: Partition, start: int = 0, listener: RebalanceListener | None = None,
                 rate: float | None = None):
        if rate is not None and rate <= 0:
            raise ValueError(f"rate: must be > 0 records/s, got {rate}")
        self.partition = partition
        self.start = start
        self.rate = rate
        self.listener: RebalanceListener = listener or NoListener()
        self.dead_letters: list[DeadLetter] = []
        self.exhausted = False
        self.offset = start
        self._rows: Iterator[SourceRecord] | None = None
        self._assigned = False
        self._drained = False
        self._committed: int | None = None
        self._paced_from: tuple[float, int] | None = None  # (monotonic time, offset) pacing counts from

    def rows(self, start: int) -> Iterator[SourceRecord]:
        """Records from offset `start` on, in offset order."""
        raise NotImplementedError

    def total(self) -> int | None:
        """How many rows there are in all, if known (for `lag`)."""
        return None

    def __iter__(self) -> Iterator[SourceRecord]:
        """Every record from `start` on, unpaced, without the engine's polling (for `detect` and scripts)."""
        return self.rows(self.start)

    def poll(self, max_records: int = 500, timeout_ms: int = 100) -> SourceBatch:
        if not self._assigned:
            self._assigned = True
            self.listener.on_assign([self.partition])
        if self._rows is None:
            self._rows = self.rows(self.offset)
        limit = min(max_records, self._due(timeout_ms))
        batch: list[SourceRecord] = []
        if limit > 0:
            for record in self._rows:
                batch.append(record)
                if len(batch) >= limit:
                    break
            else:
                self.exhausted = True
        self._drained = not batch
        if batch:
            self.offset = batch[-1].offset + 1
        elif self.exhausted:
            time.sleep(timeout_ms / 1000)
        return SourceBatch.of_records(batch)

    def _due(self, timeout_ms: int) -> int:
        """How many records may be handed out now; with a rate, waits (up to the timeout) for the next one."""
        if self.rate is None:
            return 2**62
        now = time.monotonic()
        if self._paced_from is None:
            self._paced_from = (now, self.offset)
        began, first = self._paced_from
        due = int((now - began) * self.rate) + 1 - (self.offset - first)
        if due > 0:
            return due
        wait_s = min(timeout_ms / 1000, (self.offset - first) / self.rate - (now - began))
        if wait_s > 0:
            time.sleep(wait_s)  # pacing: the next record is not due yet
        return int((time.monotonic() - began) * self.rate) + 1 - (self.offset - first)

    def dead_letter(self, record: SourceRecord, reason: str) -> None:
        self.dead_letters.append(DeadLetter(record.partition, record.offset, record.key, reason, record.raw))
        logger.warning("dead letter at %s[%d]@%d: %s", *record.position, reason)

    def commit(self, positions: Positions, *, wait: bool = True) -> None:
        if self.partition in positions:
            self._committed = positions[self.partition]

    def seek(self, positions: Positions) -> None:
        if self.partition in positions:
            self.offset = positions[self.partition]
            self._rows = None
            self._paced_from = None
            self.exhausted = False

    def hold(self, partitions: Collection[Partition]) -> None:
        pass  # one partition: holding it back would hold everything back

    def keep_alive(self) -> None:
        pass  # no consumer group

    def committed(self, partition: Partition) -> int | None:
        return self._committed if partition == self.partition else None

    def caught_up(self) -> set[Partition]:
        return {self.partition} if self._drained else set()

    def lag(self) -> dict[Partition, int]:
        total = self.total()
        return {} if total is None else {self.partition: max(0, total - self.offset)}

    def assignment(self) -> list[Partition]:
        return [self.partition] if self._assigned else []

    def close(self) -> None:
        self._rows = None

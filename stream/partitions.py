"""Where the engine stands on each partition it reads, and which records it has consumed before.

A rebalance and a rewind both make the engine read records a second time: a
new owner warms its own graph up to where the previous owner committed, and a
rewind replays from the aligned record. Those records are applied again but
not counted, dead-lettered or alerted on twice; the `PartitionLedger` is what
tells them from new ones. It also holds, per partition, the offset below which
the graph holds every record: what an aligned checkpoint records and a hand-over
commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ringwatch.connectors import SourceBatch, SourceRecord

from .checkpoint import Checkpoint
from .event_time import EventClock

Partition = tuple[str, int]


@dataclass
class PartitionLedger:
    """Per partition: how far the graph holds it, where this engine began it, and what it consumed before."""

    covered: dict[Partition, int] = field(default_factory=dict)  # the graph holds every record below this offset
    origin: dict[Partition, int] = field(default_factory=dict)  # where this engine started reading it
    owned: set[Partition] = field(default_factory=set)
    warm_until: dict[Partition, int] = field(default_factory=dict)  # below: alerted on by a previous owner already
    replay_until: dict[Partition, int] = field(default_factory=dict)  # below: seen before a rewind
    warmed: int = 0  # records read as a previous owner's warm-up (witnesses only)

    def resume_from(self, checkpoint: Checkpoint, clock: EventClock) -> None:
        """Take the record's positions as covered and its watermarks into the clock (a restore or a rewind)."""
        self.covered = dict(checkpoint.positions)
        lows = [p.low_watermark for p in checkpoint.engines.values() if p.low_watermark is not None]
        clock.restore(checkpoint.watermarks, min(lows) if lows else None)

    def advance(self, positions: Mapping[Partition, int]) -> None:
        """A batch ending at `positions` is in the graph."""
        for partition, offset in positions.items():
            self.covered[partition] = max(self.covered.get(partition, 0), offset)

    def mark_seen(self, positions: Iterable[tuple[Partition, int]]) -> None:
        """Records below these positions were consumed already: a replay counts and refuses none of them again."""
        for partition, offset in positions:
            self.replay_until[partition] = max(self.replay_until.get(partition, 0), offset)

    def fresh(self, batch: SourceBatch) -> int:
        """How many of the batch's records were not consumed before (by another owner, or before a rewind)."""
        if not (self.warm_until or self.replay_until):  # only after a rebalance or a rewind
            return len(batch)
        self.warmed += int(np.count_nonzero(batch.below(self.warm_until)))
        seen = batch.below(self.warm_until) | batch.below(self.replay_until)
        return len(batch) - int(np.count_nonzero(seen))

    def warming(self, batch: SourceBatch) -> np.ndarray | None:
        """Per row of `batch`, whether a previous owner alerted on it already; None when no partition warms up."""
        return batch.below(self.warm_until) if self.warm_until else None

    def seen_before(self, record: SourceRecord) -> bool:
        """Consumed before (by another owner, or by this engine before a rewind): not counted or refused again."""
        return (record.offset < self.warm_until.get(record.partition, 0)
                or record.offset < self.replay_until.get(record.partition, 0))


def show_positions(positions: Mapping[Partition, int]) -> str:
    """Positions as log text: `topic[partition]@offset,...`."""
    return ",".join(f"{topic}[{partition}]@{offset}" for (topic, partition), offset in sorted(positions.items()))

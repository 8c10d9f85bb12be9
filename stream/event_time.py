"""Event-time bookkeeping: per-partition watermarks, the low watermark, and which payments to refuse.

The ring definition is in event time (`(ts, tx_id)` order), so what the graph
finds does not depend on arrival order; the one thing time bookkeeping must get
right is when it is safe to forget. The rules (docs/architecture.md, "Time"):

- each source partition has a watermark: the newest `ts` it has delivered and
  this clock accepted;
- the low watermark is the minimum over the live partitions. A partition is
  idle (and stops holding the low watermark back) only once it has been caught
  up — nothing available to read, its position at the log end — for
  `idle_timeout_ms`. A partition that has not delivered anything yet and is not
  known to be caught up holds the low watermark back entirely: kafka-python
  drains a backlog one partition after another, and a partition it has not
  fetched yet is the opposite of idle. When no partition is live the low
  watermark stays where it is. It never moves back, with one exception:
  partitions newly assigned in a rebalance come with their previous owner's
  watermarks and count at once (their previous owner's watermark bounded
  eviction until then, see the engine's shared-shard rule);
- a payment with `ts` newer than wall clock + `max_clock_skew_ms` is `future`:
  refused, and it moves no watermark (one payment dated 2500 must not make every
  later payment late);
- a payment with `ts` older than low watermark - `allowed_lateness_ms` is
  `late`: refused, its ring witnesses may already be gone;
- edges older than low watermark - window - `allowed_lateness_ms` may be
  evicted: every payment still accepted finds its whole window in the graph.

Alignment (`read`, `ahead`): what the graph pays for is arrival out of
event-time order (a payment older than one stored before it is searched as a
witness of newer rings too), so under a backlog the engine reads partitions
close to event-time order, as Flink's watermark alignment does: a partition
read more than `max_drift_ms` ahead of the slowest partition with a backlog is
held (not read) until that one catches up. It changes no ring (the definition
is in event time), only the order payments arrive in. It cannot stall: the
slowest backlogged partition is never held (nor one not read from yet), and
partitions near their log end (a live stream) hold nothing back.

`ringwatch run` keeps one partition per Kafka partition; `ringwatch detect`
and the demo use one partition for their whole input. The state that must
survive a restart is `watermarks()` and `low_watermark`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .time_rules import TimeRules

Partition = tuple[str, int]

LATE = "late"
FUTURE = "future"


@dataclass
class _PartitionTime:
    watermark: int | None = None
    caught_up_since: float | None = None  # monotonic time since when it has had nothing to deliver
    read: int | None = None  # the median ts of its latest poll (judged or not yet): what alignment compares


class EventClock:
    """Watermarks of the partitions a consumer owns, and the verdict on each payment's time.

    `judge` says whether a payment may go into the graph (None) or why not
    (`"future: ..."`, `"late: ..."`, the reason's first word being the dead-letter
    category); `accept` records an accepted payment on its partition;
    `note_caught_up` is told after each poll which partitions had nothing more to
    read. `wall_clock` (epoch seconds) and `monotonic` are injectable for tests.
    """

    def __init__(self, rules: TimeRules, *, wall_clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.rules = rules
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._partitions: dict[Partition, _PartitionTime] = {}
        self._remembered: dict[Partition, int | None] = {}  # a checkpoint's watermarks, taken up by `assign`
        self.low_watermark: int | None = None

    # ---- which partitions count ------------------------------------------------------------------

    def assign(self, partitions: Iterable[Partition], watermarks: Mapping[Partition, int | None] | None = None
               ) -> None:
        """Start tracking `partitions`, each from `watermarks` (their previous owner's) or the restored checkpoint.

        The low watermark is recomputed from the partitions now held, so it may
        move back to a newcomer's watermark: a partition another engine was
        consuming is judged from where that engine had got to.
        """
        known = {**self._remembered, **(watermarks or {})}
        added = False
        for partition in partitions:
            if partition not in self._partitions:
                self._partitions[partition] = _PartitionTime(known.get(partition))
                added = True
        if added:
            self.low_watermark = None
            self.advance()

    def revoke(self, partitions: Iterable[Partition]) -> None:
        """Stop tracking `partitions` (another consumer owns them now); the low watermark stays."""
        for partition in partitions:
            self._partitions.pop(partition, None)

    def restore(self, watermarks: Mapping[Partition, int | None], low_watermark: int | None) -> None:
        """Take a checkpoint's watermarks: for partitions held now at once, for the others when assigned."""
        self._remembered = dict(watermarks)
        for partition, state in self._partitions.items():
            if partition in watermarks:
                state.watermark = watermarks[partition]
        self.low_watermark = low_watermark

    def watermarks(self) -> dict[Partition, int | None]:
        return {partition: state.watermark for partition, state in self._partitions.items()}

    def partitions(self) -> list[Partition]:
        return sorted(self._partitions)

    # ---- judging and recording ---------------------------------------------------------------------

    def judge(self, ts: int) -> str | None:
        """None if a payment at `ts` may be applied; otherwise the dead-letter reason."""
        if ts > self._newest_allowed():
            return (f"{FUTURE}: ts {ts} is more than max_clock_skew ({self.rules.max_clock_skew_ms} ms) ahead "
                    f"of the wall clock")
        low = self.low_watermark
        if low is not None and ts < low - self.rules.allowed_lateness_ms:
            return (f"{LATE}: ts {ts} is older than the low watermark {low} minus allowed_lateness "
                    f"({self.rules.allowed_lateness_ms} ms)")
        return None

    def _newest_allowed(self) -> int:
        return int(self._wall_clock() * 1000) + self.rules.max_clock_skew_ms

    def refused(self, ts: np.ndarray) -> np.ndarray:
        """Per payment time: whether `judge` would refuse it (the same rule, over a batch at once)."""
        refused = ts > self._newest_allowed()
        if self.low_watermark is not None:
            refused |= ts < self.low_watermark - self.rules.allowed_lateness_ms
        return refused

    def accept(self, partition: Partition, ts: int) -> None:
        """An accepted payment of `partition`: it moves that partition's watermark; the partition is busy."""
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _PartitionTime()
        if state.watermark is None or ts > state.watermark:
            state.watermark = ts
        state.caught_up_since = None

    def read(self, partitions: list[Partition], partition_ids: np.ndarray, ts: np.ndarray) -> None:
        """One poll's payments, before they are judged (`ts[i]` read from `partitions[partition_ids[i]]`).

        Alignment places each partition in event time by the median `ts` it
        delivered in its latest poll: one payment dated far ahead (up to
        `max_clock_skew`) does not hold its partition back. `future` times are left out.
        """
        keep = ts <= self._newest_allowed()
        ids, ts = partition_ids[keep], ts[keep]
        for index in np.unique(ids).tolist():
            state = self._partitions.get(partitions[index])
            if state is not None:
                state.read = int(np.median(ts[ids == index]))

    def ahead(self, backlogged: Collection[Partition]) -> set[Partition]:
        """Partitions to hold now: read more than `max_drift_ms` ahead of the slowest backlogged one.

        Only partitions that may have a backlog (`backlogged`: more to read than
        a poll takes, or not known yet) count as the slowest: a partition at or near its log end has
        nothing older to deliver, and a live stream is never held back. A
        backlogged partition not read from yet comes first: every partition read
        from is held until it delivers.
        """
        marks = {partition: state.watermark if state.read is None else state.read
                 for partition, state in self._partitions.items()
                 if state.watermark is not None or state.read is not None}
        behind = [marks.get(partition) for partition in backlogged if partition in self._partitions]
        if not behind:
            return set()
        if None in behind:  # a backlog not read from yet may start anywhere: it goes first (it is never held)
            return set(marks)
        bound = min(behind) + self.rules.max_drift_ms
        return {partition for partition, mark in marks.items() if mark > bound}

    def note_caught_up(self, caught_up: Iterable[Partition]) -> None:
        """After a poll: `caught_up` had nothing more to read (position at the log end); the others had."""
        now = self._monotonic()
        caught_up = set(caught_up)
        for partition, state in self._partitions.items():
            if partition not in caught_up:
                state.caught_up_since = None
            elif state.caught_up_since is None:
                state.caught_up_since = now

    def advance(self) -> int | None:
        """Recompute the low watermark from the live partitions (it never moves back); returns it."""
        now = self._monotonic()
        idle_after_s = self.rules.idle_timeout_ms / 1000
        live = [state for state in self._partitions.values()
                if state.caught_up_since is None or now - state.caught_up_since < idle_after_s]
        if not live or any(state.watermark is None for state in live):
            return self.low_watermark
        candidate = min(state.watermark for state in live)
        if self.low_watermark is None or candidate > self.low_watermark:
            self.low_watermark = candidate
        return self.low_watermark

    def idle(self) -> list[Partition]:
        """Partitions idle now (caught up for at least `idle_timeout_ms`)."""
        now, idle_after_s = self._monotonic(), self.rules.idle_timeout_ms / 1000
        return sorted(partition for partition, state in self._partitions.items()
                      if state.caught_up_since is not None and now - state.caught_up_since >= idle_after_s)

    def eviction_horizon(self) -> int | None:
        """Edges older than this may be dropped: low watermark - window - allowed lateness (None: keep all)."""
        if self.low_watermark is None:
            return None
        return self.low_watermark - self.rules.window_ms - self.rules.allowed_lateness_ms


def reason_category(reason: str) -> str:
    """The dead-letter category of a reason string: its text before the first colon (`late`, `invalid`, ...)."""
    return reason.split(":", 1)[0]

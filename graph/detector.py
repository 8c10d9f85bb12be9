"""The stateful front of the graph engine: stream order, watermark, late payments, alerts.

`RingDetector.process(batch)` gives every transaction its stream position,
stores the batch in the shards, searches the rings each new payment closes and
returns them as `Alert`s. Because witnesses must come earlier in the stream
(`seq` below the trigger's), a batch raises exactly the alerts that processing
its payments one at a time would raise, whatever the batch size.

Late payments. The low watermark is `max(ts seen) - window`. A payment older
than the watermark is rejected (the caller dead-letters it with the reason);
it could not be checked against a full window any more. A payment that is late
but not that late is stored and can witness later rings; as a trigger it closes
rings only with witnesses at or after the watermark and at or before its own
time. Edges older than the watermark are evicted, so memory holds one window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .model import Alert, Transaction, alert_id
from .pickling import CompactPickle
from .ring_search import Ring, SearchOptions, SearchOutcome, Trigger, search
from .shard_set import ShardSet

logger = logging.getLogger(__name__)

_NEVER = -(2**62)


@dataclass(frozen=True, slots=True)
class Rejected(CompactPickle):
    """A transaction the detector would not take, and why."""

    transaction: Transaction
    reason: str


@dataclass
class BatchResult:
    alerts: list[Alert] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: int = 0
    truncated_searches: int = 0


class RingDetector:
    """Finds the rings each payment closes, over shards it does not own the lifetime of."""

    def __init__(self, shards: ShardSet, options: SearchOptions, *,
                 searcher: Callable[[Sequence[Trigger], ShardSet, SearchOptions], list[SearchOutcome]] = search,
                 clock: Callable[[], float] = time.time, evict_every_ms: int | None = None):
        self.shards = shards
        self.options = options
        self.searcher = searcher
        self.clock = clock
        self.next_seq = 0
        self.watermark = _NEVER
        self._evicted_to = _NEVER
        # Evicting costs a pass over the shards: do it when the watermark has moved a slice of the window.
        self._evict_every_ms = evict_every_ms if evict_every_ms is not None else max(options.window_ms // 16, 1)

    def process(self, batch: Sequence[Transaction], received_at: Sequence[float] | None = None) -> BatchResult:
        """Store and search one micro-batch; `received_at[i]` (epoch seconds) times alert latency."""
        result = BatchResult()
        accepted: list[tuple[Transaction, Trigger, float | None]] = []
        for index, tx in enumerate(batch):
            if tx.ts < self.watermark:
                result.rejected.append(Rejected(tx, self._late_reason(tx)))
                continue
            trigger = Trigger(tx.tx_id, tx.src, tx.dst, tx.amount, tx.ts, self.next_seq,
                              max(tx.ts - self.options.window_ms, self.watermark))
            self.next_seq += 1
            self.watermark = max(self.watermark, tx.ts - self.options.window_ms)
            accepted.append((tx, trigger, received_at[index] if received_at is not None else None))
        if not accepted:
            return result
        repeated = self.shards.apply([(t.tx_id, t.src, t.dst, t.amount, t.ts, t.seq) for _, t, _ in accepted])
        fresh = [(tx, trigger, arrived) for tx, trigger, arrived in accepted if tx.tx_id not in repeated]
        result.duplicates = len(accepted) - len(fresh)
        outcomes = self.searcher([trigger for _, trigger, _ in fresh], self.shards, self.options)
        for (tx, _, arrived), outcome in zip(fresh, outcomes):
            result.truncated_searches += outcome.truncated
            result.alerts.extend(self._alert(ring, tx, arrived, outcome.truncated) for ring in outcome.rings)
        self._evict_if_due()
        return result

    def _late_reason(self, tx: Transaction) -> str:
        return (f"late: ts {tx.ts} is older than the low watermark {self.watermark} "
                f"(newest ts seen minus the {self.options.window_ms} ms window)")

    def _alert(self, ring: Ring, tx: Transaction, arrived: float | None, truncated: bool) -> Alert:
        now = self.clock()
        witnesses = ring.witnesses
        return Alert(
            alert_id=alert_id(tx.tx_id, ring.accounts),
            trigger_tx_id=tx.tx_id,
            accounts=ring.accounts,
            tx_ids=tuple(w.tx_id for w in witnesses) + (tx.tx_id,),
            hops=len(ring.accounts),
            total_amount=sum(w.amount for w in witnesses) + tx.amount,
            first_ts=witnesses[0].ts,
            last_ts=tx.ts,
            detected_at=int(now * 1000),
            latency_ms=round((now - arrived) * 1000, 3) if arrived is not None else 0.0,
            truncated=truncated,
        )

    def _evict_if_due(self) -> None:
        if self.watermark - self._evicted_to >= self._evict_every_ms:
            dropped = self.shards.evict(self.watermark)
            self._evicted_to = self.watermark
            logger.debug("evicted %d edge records below watermark %d", dropped, self.watermark)

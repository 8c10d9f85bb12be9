"""Partitions changing hands in a consumer-group rebalance: commit where they stop, resume where the graph stops.

A rebalance must lose and repeat nothing: the engine giving a partition up
commits only what its graph holds and its sinks made durable; the engine
taking it resumes where its graph stops, warming a graph of its own up to the
committed offset without sending the previous owner's alerts again.
"""

from __future__ import annotations

import logging
import threading

from ringwatch.connectors import KafkaConnectorError, Source

from .checkpoint import Checkpoint, CheckpointRecords
from .checkpointing import Batches
from .claims import AlertClaims
from .delivery import AlertDelivery
from .event_time import EventClock
from .partitions import Partition, PartitionLedger, show_positions

logger = logging.getLogger(__name__)

HAND_OVER_FLUSH_TIMEOUT_S = 5.0  # in a rebalance: well inside the group's max_poll_interval_ms (10 s)


class PartitionHandOver:
    """The engine's side of a rebalance; `revoke` and `assign` run under the loop's lock (`Engine.on_*`)."""

    def __init__(self, *, batches: Batches, source: Source, ledger: PartitionLedger, clock: EventClock,
                 delivery: AlertDelivery, claims: AlertClaims | None,
                 records: CheckpointRecords, shared: bool, failed: threading.Event):
        self.batches, self.source, self.ledger, self.clock = batches, source, ledger, clock
        self.delivery, self.claims, self.records = delivery, claims, records
        self.shared, self.failed = shared, failed

    def revoke(self, partitions: list[Partition]) -> None:
        """Before partitions go: finish the open batch and commit, so the next owner starts where we stop."""
        owned = self.ledger.owned
        if owned.intersection(partitions):
            self._hand_over(sorted(owned.intersection(partitions)))
        owned.difference_update(partitions)
        self.clock.revoke(partitions)

    def _hand_over(self, partitions: list[Partition]) -> None:
        """Commit where `partitions` stop once every alert raised from them is durable; no shard checkpoint.

        This runs inside kafka-python's rebalance listener: the whole group
        waits for it, and a member that takes longer than `max_poll_interval_ms`
        is dropped (and its rejoin starts another rebalance). Shard checkpoints
        of a large graph, or a periodic one still in flight, can take that long,
        so none is taken or waited for here. The next owner resumes at the
        committed offsets (shared shards hold what was applied; a graph of its
        own warms up to them), and the next aligned checkpoint covers the rest.
        Nothing is committed if the shards went back meanwhile, a sink did not
        make its alerts durable or an alert another engine claimed is not sent
        yet: the next owner then replays from older offsets, losing nothing.
        """
        if self.failed.is_set():
            return
        self.batches.process_pending()
        self.delivery.drain()
        if self.batches.rewound_for_restarts():
            return
        if not self.delivery.durable(HAND_OVER_FLUSH_TIMEOUT_S).result():
            logger.warning("partitions %s handed over uncommitted: a sink did not make its alerts durable in %.0f s",
                           partitions, HAND_OVER_FLUSH_TIMEOUT_S)
            return
        if self.claims is not None and not self.claims.settle():
            logger.warning("partitions %s handed over uncommitted: alerts claimed by live engines are not sent yet",
                           partitions)
            return
        covered = self.ledger.covered
        positions = {partition: covered[partition] for partition in partitions if partition in covered}
        try:
            self.source.commit(positions)
        except KafkaConnectorError as exc:  # the next owner replays from the offsets committed before
            logger.error("partitions %s handed over uncommitted: %s", partitions, exc)
            return
        logger.info("partitions handed over positions=%s", show_positions(positions))

    def assign(self, partitions: list[Partition]) -> None:
        """Resume each partition where the graph stops; with a graph of its own, warm up what another owner did.

        Shared shards (a cluster) already hold what the previous owner applied:
        the partition resumes at the group's committed offset. An engine with a
        graph of its own resumes where that graph stops; if the committed offset
        is beyond (another engine owned the partition meanwhile), the records in
        between are read into the graph as witnesses, but their alerts and dead
        letters are not sent again: the previous owner sent them before it
        committed.
        """
        ledger = self.ledger
        for partition in partitions:
            committed = self.source.committed(partition) or 0
            start = ledger.covered.get(partition, 0)
            if self.shared:
                start = max(start, committed)
                ledger.covered[partition] = start
            self.source.seek({partition: start})
            ledger.origin.setdefault(partition, start)
            if committed > start:
                ledger.warm_until[partition] = committed
            ledger.owned.add(partition)
            logger.info("partition assigned %s[%d] from=%d warm_until=%d", *partition, start, max(committed, start))
        self.clock.assign(partitions, self._group_watermarks() if self.shared else None)

    def _group_watermarks(self) -> dict[Partition, int | None]:
        """Each partition's watermark as the group's engines last published it (the newest of them)."""
        return Checkpoint(0, self.records.group_progress(), []).watermarks

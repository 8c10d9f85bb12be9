"""Aligned checkpoints: shard checkpoints tied to source positions by one record, and the restore from it.

The record format and where records live are `checkpoint.py`'s; this module
decides when a record may be written. An aligned checkpoint is taken between
batches, after every alert raised so far has been handed to the sinks and the
sinks made it durable (file fsynced, Kafka acknowledged, webhook outbox on
disk). Each shard checkpoints itself through the runtime (the slow part, on a
thread beside the loop for the periodic checkpoint: `CheckpointJob`); one
record then ties those checkpoint ids to the source positions and watermarks,
and Kafka offsets are committed only after that record is durable. A record
names only shard checkpoints that were taken after everything below its
positions was applied, and none if a shard restarted meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from ringwatch import runtime as rt
from ringwatch.connectors import KafkaConnectorError, Sink, Source, WebhookSink

from .checkpoint import Checkpoint, CheckpointRecordError, CheckpointRecords, EngineProgress
from .claims import AlertClaims
from .config import Config
from .delivery import AlertDelivery
from .event_time import EventClock
from .eviction import Eviction
from .graph_port import EngineGraph, open_graph
from .partitions import PartitionLedger, show_positions
from .tally import EngineTally

logger = logging.getLogger(__name__)

SINK_FLUSH_TIMEOUT_S = 30.0


class Batches(Protocol):
    """What a checkpoint needs of the micro-batch stage (`batching.MicroBatches`)."""

    def finish(self) -> None: ...
    def process_pending(self) -> None: ...
    def rewound_for_restarts(self) -> bool: ...
    def rewind(self, seen: Mapping[tuple[str, int], int] | None = None) -> None: ...
    def restart_behind(self, error: Exception) -> bool: ...


def sinks_durable(sinks: Mapping[str, Sink], timeout_s: float = SINK_FLUSH_TIMEOUT_S) -> bool:
    """Every alert handed over so far survives a crash: the webhook outbox is written at `deliver`."""
    return all(sink.flush(timeout_s) for sink in sinks.values() if not isinstance(sink, WebhookSink))


def restore_graph(config: Config, records: CheckpointRecords, *, checkpoint_uri: str, shared_as: str | None,
                  engine_id: str, ledger: PartitionLedger, clock: EventClock,
                  tally: EngineTally) -> tuple[EngineGraph, Checkpoint | None]:
    """The graph, from the newest aligned checkpoint if there is one; the clock, positions and counts with it."""
    checkpoint = records.latest()
    graph_config = config.graph
    in_process = graph_config.placement == "in-process"
    if checkpoint is None:
        logger.info("no checkpoint: starting from the group's committed offsets")
        return open_graph(graph_config.shards, config.search_options(), checkpoint_uri=checkpoint_uri,
                          shared_as=shared_as, in_process=in_process), None
    placement = checkpoint.graph.get("placement", "actors")
    if placement != graph_config.placement:
        raise CheckpointRecordError(
            f"checkpoint epoch {checkpoint.epoch} was taken with graph.placement {placement!r}, the engine is "
            f"set to {graph_config.placement!r}; run with the same placement or a fresh state_dir")
    if not in_process and len(checkpoint.shards) != graph_config.shards:
        raise CheckpointRecordError(
            f"checkpoint epoch {checkpoint.epoch} holds {len(checkpoint.shards)} shards but graph.shards is "
            f"{graph_config.shards}; run with the same shard count or a fresh state_dir")
    graph = open_graph(graph_config.shards, config.search_options(), checkpoint_uri=checkpoint_uri,
                       restore=checkpoint.shards, shared_as=shared_as, in_process=in_process)
    ledger.resume_from(checkpoint, clock)
    mine = checkpoint.engines.get(engine_id)
    tally.transactions = mine.transactions if mine else 0 if shared_as is not None else checkpoint.transactions
    tally.handed = int(checkpoint.graph.get("next_seq", 0))
    logger.info("restored checkpoint epoch=%d transactions=%d positions=%s", checkpoint.epoch,
                checkpoint.transactions, show_positions(checkpoint.positions))
    return graph, checkpoint


class CheckpointJob:
    """The part of an aligned checkpoint that may run beside the loop: publish the progress, checkpoint the shards.

    The loop writes the record afterwards (`AlignedCheckpoints.finish`): only the
    loop can tell whether a shard restarted while its checkpoint was taken.
    """

    def __init__(self, records: CheckpointRecords, graph: EngineGraph, engine_id: str, progress: EngineProgress,
                 reason: str, started: float, recoveries: int, graph_state: dict[str, Any]):
        self.records, self.graph, self.engine_id = records, graph, engine_id
        self.progress = progress
        self.reason = reason
        self.started = started
        self.recoveries = recoveries  # the engine's rewinds when it began: one more means a shard went back
        self.graph_state = graph_state
        self.group: dict[str, EngineProgress] = {}
        self.group_low: int | None = None  # the lowest low watermark the group published
        self.shard_ids: list[str] = []
        self.error: Exception | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.records.publish(self.engine_id, self.progress)
            self.group = self.records.group_progress()  # everything it says is in the shards now: checkpoint them
            lows = [p.low_watermark for p in self.group.values()]
            self.group_low = None if not lows or None in lows else min(lows)
            self.shard_ids = self.graph.checkpoint()
        except Exception as exc:  # raised on the loop by `AlignedCheckpoints.finish`
            self.error = exc
        finally:
            self.done.set()


class AlignedCheckpoints:
    """Takes aligned checkpoints between batches and writes their records; `last` is the newest written or restored."""

    def __init__(self, *, batches: Batches, records: CheckpointRecords, graph: EngineGraph, source: Source,
                 ledger: PartitionLedger, clock: EventClock, tally: EngineTally, delivery: AlertDelivery,
                 sinks: Mapping[str, Sink], claims: AlertClaims | None, eviction: Eviction, engine_id: str,
                 placement: str, failed: threading.Event, last: Checkpoint | None):
        self.batches, self.records, self.graph, self.source = batches, records, graph, source
        self.ledger, self.clock, self.tally, self.delivery = ledger, clock, tally, delivery
        self.sinks, self.claims, self.eviction = sinks, claims, eviction
        self.engine_id, self.placement, self.failed = engine_id, placement, failed
        self.last = last
        self.in_flight: CheckpointJob | None = None  # a checkpoint whose shard checkpoints are being taken

    def take(self, reason: str, *, wait: bool = True) -> Checkpoint | None:
        """Aligned checkpoint between batches; None (and the engine keeps running) when none was written now.

        The aligned part runs here, on the loop: finish the batch, hand every
        alert to the sinks and make it durable, note positions and watermarks.
        The shard checkpoints (the slow part) are then taken by a `CheckpointJob`;
        with `wait=False` (the periodic checkpoint) on a thread of its own while
        the loop goes on. Each shard checkpoint is taken after every batch below
        the noted positions was applied, so it holds them all; it may hold later
        payments too, which is harmless (a replay raises their rings again with
        the same ids). Eviction waits while a job runs: what replaying from the
        noted positions needs is still in the shards' checkpoints. Back on the
        loop (`finish`) the record is written only if no shard restarted
        meanwhile, then the offsets are committed. The final checkpoint waits
        for all of it (a rebalance takes none: `PartitionHandOver`). A failure
        leaves the previous record standing: a shard lost meanwhile rewinds,
        anything else stops the engine (raised on the loop, as if it had
        happened there).
        """
        if self.failed.is_set():
            return None
        self.batches.finish()  # nothing in the graph while the record is written: a rewind replays from it
        self.finish(block=wait)
        if self.in_flight is not None:
            return None  # the previous one is still being taken
        started = time.monotonic()
        if wait:
            self.batches.process_pending()
        self.delivery.drain()
        if self.batches.rewound_for_restarts():
            return None
        if self._unchanged_since_last():
            return self.last
        if not sinks_durable(self.sinks):
            logger.warning("checkpoint skipped reason=%s: a sink did not make its alerts durable in %.0f s",
                           reason, SINK_FLUSH_TIMEOUT_S)
            return None
        if self.claims is not None and not self.claims.settle():
            logger.warning("checkpoint skipped reason=%s: %d alerts claimed by live engines are not sent yet",
                           reason, self.claims.parked)
            return None
        progress = EngineProgress(dict(self.ledger.covered), self.clock.watermarks(), self.clock.low_watermark,
                                  self.tally.transactions)
        job = CheckpointJob(self.records, self.graph, self.engine_id, progress, reason, started,
                            self.tally.recoveries, {"placement": self.placement, "next_seq": self.tally.handed})
        self.in_flight = job
        self.eviction.held = True
        if not wait:
            threading.Thread(target=job.run, name="ringwatch-checkpoint", daemon=True).start()
            return None
        job.run()
        return self.finish(block=True)

    def finish(self, *, block: bool) -> Checkpoint | None:
        """Write the record of a job whose shard checkpoints are taken, then commit (waits for it if `block`)."""
        job = self.in_flight
        if job is None or not (block or job.done.is_set()):
            return None
        job.done.wait()
        self.in_flight = None
        self.eviction.held = False
        if self.tally.recoveries != job.recoveries:  # the engine rewound meanwhile: a shard went back in time
            logger.warning("checkpoint reason=%s dropped: shards restarted while it was taken", job.reason)
            return None
        if job.error is not None:
            if isinstance(job.error, (rt.ActorDiedError, rt.TaskError)) and self.batches.restart_behind(job.error):
                self.batches.rewind()  # a shard lost while it checkpointed: replay what it lost
                return None
            raise job.error  # the previous record stands; a restart resumes from it
        if self.batches.rewound_for_restarts():  # a call parked through a restart gives an id of older state
            return None
        try:
            checkpoint = self.records.save(Checkpoint(0, job.group, job.shard_ids, graph=job.graph_state))
        except CheckpointRecordError as exc:  # its shard checkpoints were pruned: the next checkpoint takes new ones
            logger.warning("checkpoint reason=%s dropped: %s", job.reason, exc)
            return None
        self.eviction.group_low = job.group_low
        positions = job.progress.positions
        try:
            self.source.commit({p: offset for p, offset in positions.items() if p in self.ledger.owned})
        except KafkaConnectorError as exc:  # the checkpoint stands; the next one commits again
            logger.error("checkpoint epoch=%d written but offsets not committed: %s", checkpoint.epoch, exc)
        self.last = checkpoint
        elapsed = time.monotonic() - job.started
        self.tally.metrics.checkpoint_duration.observe(elapsed)
        self.tally.metrics.checkpoints.inc()
        logger.info("checkpoint epoch=%d reason=%s transactions=%d duration_ms=%.1f low_watermark=%s positions=%s",
                    checkpoint.epoch, job.reason, job.progress.transactions, elapsed * 1000,
                    job.progress.low_watermark, show_positions(positions))
        return checkpoint

    def _unchanged_since_last(self) -> bool:
        """Nothing new from this engine since its last record (other engines checkpoint their own progress)."""
        last = self.last
        mine = last.engines.get(self.engine_id) if last is not None else None
        return mine is not None and mine.transactions == self.tally.transactions and mine.positions == \
            self.ledger.covered

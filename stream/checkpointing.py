"""Aligned checkpoints: shard checkpoints tied to source positions by one record, and the restore from it.

The record format and where records live are `checkpoint.py`'s; this module
decides when a record may be written. An aligned checkpoint is noted between
batches; it is written once every alert raised before it has been handed to
the sinks and the sinks made it durable (file fsynced, Kafka acknowledged,
webhook outbox on disk). Each shard checkpoints itself through the runtime;
one record then ties those checkpoint ids to the source positions and
watermarks, and Kafka offsets are committed only after that record is durable.
A record names only shard checkpoints that were taken after everything below
its positions was applied, and none if a shard restarted meanwhile.

For the periodic checkpoint the waits run beside the loop (`CheckpointJob`):
the sinks flush on the delivery thread, the shards checkpoint and the record
is written on a thread of the job's, and the offsets are committed without
waiting for the coordinator. Only the checks between those steps run on the
loop: on the end-to-end benchmark (in process, 20k payments/s) the record's
write and fsync and the synchronous commit had been 30-45 ms stalls of the
loop at every checkpoint, the sinks' fsync 4-9 ms more.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from ringwatch import runtime as rt
from ringwatch.connectors import KafkaConnectorError, Source

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
    """The parts of an aligned checkpoint that may run beside the loop, in two steps with a check on the loop between.

    `run_shards`: wait until the sinks made every alert before the checkpoint
    durable (`durable`, None when the loop waited already), publish the
    progress, checkpoint the shards. Then the loop checks that no shard
    restarted meanwhile (only the loop can tell: `AlignedCheckpoints.finish`),
    and `run_record` writes the record.
    """

    def __init__(self, records: CheckpointRecords, graph: EngineGraph, engine_id: str, progress: EngineProgress,
                 reason: str, started: float, recoveries: int, graph_state: dict[str, Any],
                 durable: concurrent.futures.Future | None):
        self.records, self.graph, self.engine_id = records, graph, engine_id
        self.progress = progress
        self.reason = reason
        self.started = started
        self.recoveries = recoveries  # the engine's rewinds when it began: one more means a shard went back
        self.graph_state = graph_state
        self.durable = durable
        self.sinks_durable = True
        self.group: dict[str, EngineProgress] = {}
        self.group_low: int | None = None  # the lowest low watermark the group published
        self.shard_ids: list[str] = []
        self.error: Exception | None = None
        self.shards_done = threading.Event()
        self.recording = False  # the loop passed the record's checks: `run_record` is running or ran
        self.record: Checkpoint | None = None
        self.record_error: Exception | None = None
        self.record_done = threading.Event()

    def run_shards(self) -> None:
        try:
            if self.durable is not None and not self.durable.result():
                self.sinks_durable = False
                return
            self.records.publish(self.engine_id, self.progress)
            self.group = self.records.group_progress()  # everything it says is in the shards now: checkpoint them
            lows = [p.low_watermark for p in self.group.values()]
            self.group_low = None if not lows or None in lows else min(lows)
            self.shard_ids = self.graph.checkpoint()
        except Exception as exc:  # raised on the loop by `AlignedCheckpoints.finish`
            self.error = exc
        finally:
            self.shards_done.set()

    def run_record(self) -> None:
        try:
            self.record = self.records.save(Checkpoint(0, self.group, self.shard_ids, graph=self.graph_state))
        except Exception as exc:  # raised (or, pruned shard checkpoints, logged) on the loop
            self.record_error = exc
        finally:
            self.record_done.set()


class AlignedCheckpoints:
    """Takes aligned checkpoints between batches and writes their records; `last` is the newest written or restored."""

    def __init__(self, *, batches: Batches, records: CheckpointRecords, graph: EngineGraph, source: Source,
                 ledger: PartitionLedger, clock: EventClock, tally: EngineTally, delivery: AlertDelivery,
                 claims: AlertClaims | None, eviction: Eviction, engine_id: str, placement: str,
                 failed: threading.Event, last: Checkpoint | None):
        self.batches, self.records, self.graph, self.source = batches, records, graph, source
        self.ledger, self.clock, self.tally, self.delivery = ledger, clock, tally, delivery
        self.claims, self.eviction = claims, eviction
        self.engine_id, self.placement, self.failed = engine_id, placement, failed
        self.last = last
        self.in_flight: CheckpointJob | None = None  # a checkpoint being taken
        # One long-lived thread for the jobs' steps: `Thread.start` waits until the new thread runs, which on a
        # busy machine (it needs a core and the GIL) stalled the loop for up to hundreds of ms per checkpoint.
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ringwatch-checkpoint")

    def close(self) -> None:
        """Let a job still running end on its own (the process may be stopping without waiting for it)."""
        self._worker.shutdown(wait=False)

    def take(self, reason: str, *, wait: bool = True) -> Checkpoint | None:
        """Aligned checkpoint between batches; None (and the engine keeps running) when none was written now.

        The aligned part runs here, on the loop: finish the batch, note
        positions and watermarks, and queue a durability request behind every
        alert on the delivery thread (`AlertDelivery.durable`: it is served once
        they are all handed over). The rest is
        a `CheckpointJob`; with `wait=False` (the periodic checkpoint) it runs
        beside the loop, which goes on. Each shard checkpoint is taken after
        every batch below the noted positions was applied, so it holds them
        all; it may hold later payments too, which is harmless (a replay raises
        their rings again with the same ids). Eviction waits while a job runs:
        what replaying from the noted positions needs is still in the shards'
        checkpoints. Back on the loop (`finish`) the record is written only if no
        shard restarted meanwhile, then the offsets are committed. The final
        checkpoint waits for all of it (a rebalance takes none:
        `PartitionHandOver`). A failure leaves the previous record standing: a
        shard lost meanwhile rewinds, anything else stops the engine (raised on
        the loop, as if it had happened there).

        With alert claims (shared shards) the loop waits for the sinks itself:
        claims are marked sent only once their alerts are durable.
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
        if self.claims is not None:  # hands over the parked alerts that are ours now, before they are settled
            self.delivery.drain()
        if self.batches.rewound_for_restarts():
            return None
        if self._unchanged_since_last():
            return self.last
        durable: concurrent.futures.Future | None = self.delivery.durable(SINK_FLUSH_TIMEOUT_S)
        if self.claims is not None:
            if not durable.result():
                logger.warning("checkpoint skipped reason=%s: a sink did not make its alerts durable in %.0f s",
                               reason, SINK_FLUSH_TIMEOUT_S)
                return None
            durable = None
            if not self.claims.settle():
                logger.warning("checkpoint skipped reason=%s: %d alerts claimed by live engines are not sent yet",
                               reason, self.claims.parked)
                return None
        progress = EngineProgress(dict(self.ledger.covered), self.clock.watermarks(), self.clock.low_watermark,
                                  self.tally.transactions)
        job = CheckpointJob(self.records, self.graph, self.engine_id, progress, reason, started,
                            self.tally.recoveries, {"placement": self.placement, "next_seq": self.tally.handed},
                            durable)
        self.in_flight = job
        self.eviction.held = True
        if not wait:
            self._worker.submit(job.run_shards)
            return None
        job.run_shards()
        return self.finish(block=True)

    def finish(self, *, block: bool) -> Checkpoint | None:
        """Move the job on when its step is done (waits for each if `block`): check its shard checkpoints and have
        the record written; once it is, commit the offsets. The checkpoint written, or None."""
        job = self.in_flight
        if job is None:
            return None
        if not job.recording:
            if not (block or job.shards_done.is_set()):
                return None
            job.shards_done.wait()
            if not self._may_record(job):
                self._done()
                return None
            job.recording = True
            if not block:
                self._worker.submit(job.run_record)
                return None
            job.run_record()
        if not (block or job.record_done.is_set()):
            return None
        job.record_done.wait()
        self._done()
        if isinstance(job.record_error, CheckpointRecordError):  # its shard checkpoints were pruned: the next
            logger.warning("checkpoint reason=%s dropped: %s", job.reason, job.record_error)  # one takes new ones
            return None
        if job.record_error is not None:
            raise job.record_error  # the previous record stands; a restart resumes from it
        checkpoint = job.record
        self.eviction.group_low = job.group_low
        positions = job.progress.positions
        try:
            self.source.commit({p: offset for p, offset in positions.items() if p in self.ledger.owned}, wait=block)
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

    def _may_record(self, job: CheckpointJob) -> bool:
        """Whether the job's shard checkpoints may go in a record: taken whole, with no shard restarted meanwhile."""
        if self.tally.recoveries != job.recoveries:  # the engine rewound meanwhile: a shard went back in time
            logger.warning("checkpoint reason=%s dropped: shards restarted while it was taken", job.reason)
            return False
        if not job.sinks_durable:
            logger.warning("checkpoint skipped reason=%s: a sink did not make its alerts durable in %.0f s",
                           job.reason, SINK_FLUSH_TIMEOUT_S)
            return False
        if job.error is not None:
            if isinstance(job.error, (rt.ActorDiedError, rt.TaskError)) and self.batches.restart_behind(job.error):
                self.batches.rewind()  # a shard lost while it checkpointed: replay what it lost
                return False
            self._done()
            raise job.error  # the previous record stands; a restart resumes from it
        # a call parked through a restart gives an id of older state
        return not self.batches.rewound_for_restarts()

    def _done(self) -> None:
        self.in_flight = None
        self.eviction.held = False

    def _unchanged_since_last(self) -> bool:
        """Nothing new from this engine since its last record (other engines checkpoint their own progress)."""
        last = self.last
        mine = last.engines.get(self.engine_id) if last is not None else None
        return mine is not None and mine.transactions == self.tally.transactions and mine.positions == \
            self.ledger.covered

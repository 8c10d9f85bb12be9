"""The micro-batch stage: poll the source into a batch, judge it, hand it to the graph, take the graph's answer.

A micro-batch closes on its cap of payments or `batch_max_delay_ms` after its
first one. The cap starts at `BATCH_START` and grows to `batch_max_size` while
full batches are quick (`fit`): under a backlog a batch's fixed cost is paid per
thousands of payments, live ones stay small, and no batch takes so long that
the consumer misses `max_poll_interval_ms` and leaves its group.

With shard actors the graph works on a batch on a thread of its own while the
stage polls the next one (and keeps the consumer in its group if the graph
takes long: `await_graph`); partitions are then read close to event-time order
(`EventClock.ahead`, `Source.hold`). In process the graph runs on the loop (it
holds the GIL anyway).

This stage owns the read position too, so it is also where the engine goes
back when shards do (`rewind`): a shard restarted from its checkpoint lost
what it applied since, and every owned partition is read again from the
aligned record, without counting or refusing anything twice.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ringwatch import runtime as rt
from ringwatch.connectors import Source, SourceBatch, SourceRecord

from .checkpoint import CheckpointRecords
from .config import EngineConfig
from .delivery import AlertDelivery
from .engine_setup import MIN_FETCH_WAIT_MS
from .event_time import EventClock
from .eviction import Eviction
from .graph_port import EngineGraph, GraphBatch
from .partitions import Partition, PartitionLedger, show_positions
from .tally import EngineTally

logger = logging.getLogger(__name__)

POLL_IDLE_MS = 100  # longest a poll waits with no batch open: bounds how late a stop is noticed
SHARD_RESTART_WAIT_S = 30.0  # after a failed graph call: how long to look for the shard restart behind it
BATCH_START = 256  # the first batch's cap; the cap doubles after each full batch done in under a quarter of:
BATCH_TARGET_S = 1.0  # ... this, and halves after a batch that took longer (polls stay frequent: group membership)
POLL_CHUNK = 2_000  # with shard actors and several partitions, the most one poll takes: alignment decides between
# polls (500 cost ~15% more CPU per payment in kafka-python's per-poll coordinator check, for finer steps)
IN_GRAPH_WAIT_S = MIN_FETCH_WAIT_MS / 1000  # while the graph works and the consumer holds nothing: wait this
# long on the graph (not on the broker), so the next batch starts the moment it is free; polls stay one a fetch
KEEP_ALIVE_S = 0.5  # while a full batch waits for the graph: how often the consumer polls to stay in its group
SLOW_GRAPH_LOG_S = 5  # a batch in the graph this long is logged (and again at each multiple)


@dataclass
class InGraph:
    """A micro-batch handed to the graph, with what finishing it needs once the graph answers."""

    batch: SourceBatch
    payments: pa.Table  # the rows the graph was given: batch rows `rows`
    rows: np.ndarray
    fresh: int  # records not consumed before (counted when it finishes)
    positions: dict[Partition, int]  # where its partitions resume after it
    started: float  # monotonic
    result: concurrent.futures.Future
    reported: int = 0  # SLOW_GRAPH_LOG_S periods logged so far

    def report_slow(self) -> None:
        """Log a batch long in the graph, once per `SLOW_GRAPH_LOG_S` (the loop polls meanwhile)."""
        slow = int((time.monotonic() - self.started) // SLOW_GRAPH_LOG_S)
        if slow > self.reported:
            self.reported = slow
            logger.info("a batch of %d payments has been in the graph for %d s; polling to stay in the consumer "
                        "group", self.payments.num_rows, slow * SLOW_GRAPH_LOG_S)


class MicroBatches:
    """Reads `source` into micro-batches for `graph`; the engine's loop sequences `fill`, `await_graph`,
    `finish` and `start`. Everything but the waits runs under `lock` (the rebalance listener takes it too)."""

    def __init__(self, settings: EngineConfig, *, lock: threading.RLock, source: Source, graph: EngineGraph,
                 clock: EventClock, ledger: PartitionLedger, tally: EngineTally, delivery: AlertDelivery,
                 eviction: Eviction, records: CheckpointRecords, graph_thread: bool):
        self.settings = settings
        self.lock = lock
        self.source, self.graph, self.clock, self.ledger = source, graph, clock, ledger
        self.tally, self.delivery, self.eviction, self.records = tally, delivery, eviction, records
        self.pending: list[tuple[SourceBatch, float]] = []  # the open batch's polls, each with its arrival time
        self.pending_rows = 0
        self.in_graph: InGraph | None = None  # the batch the graph is working on
        # With shard actors the graph works on a thread of its own while the loop polls the next batch.
        self.graph_thread = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ringwatch-graph")
                             if graph_thread else None)
        self.limit = min(BATCH_START, settings.batch_max_size)  # grows with a backlog (`fit`)

    def close(self) -> None:
        if self.graph_thread is not None:
            self.graph_thread.shutdown()

    def fill(self, stop: threading.Event) -> None:
        """Poll until the batch holds its cap of records, its first is `batch_max_delay_ms` old, or the graph
        is free again after the batch before.

        With shard actors the batch goes on filling while the graph is busy with
        the one before (it could not start anyway), and with more than one
        partition each poll is decoded at once and the partitions read too far
        ahead in event time are held for the next one (`EventClock.ahead`, under
        a backlog); polls are at most `POLL_CHUNK` records, so a batch
        interleaves partitions. A source returns held records rather than
        nothing (`Source.hold`): alignment never stalls. In process the search
        of a late payment is cheap, and alignment's cost per poll was not repaid
        (about 3 us more CPU per payment on the end-to-end benchmark): it is off.
        """
        opened_at = None
        while not stop.is_set():
            with self.lock:
                room = self.limit - self.pending_rows
                in_graph = self.in_graph
                aligned = self.graph_thread is not None and len(self.clock.partitions()) > 1
            busy = in_graph is not None and not in_graph.result.done()
            if room <= 0 or (in_graph is not None and not busy):
                return
            if opened_at is None:
                timeout_ms = POLL_IDLE_MS
            else:
                timeout_ms = int(self.settings.batch_max_delay_ms - (time.monotonic() - opened_at) * 1000)
                if timeout_ms <= 0 and not busy:
                    return
            if busy:
                timeout_ms = 0  # what the consumer holds now; then wait on the graph, below
                in_graph.report_slow()
            polled = self.source.poll(max_records=min(room, POLL_CHUNK) if aligned else room, timeout_ms=timeout_ms)
            arrived = time.time()
            decoded = polled.payments() if aligned and len(polled) else None
            with self.lock:
                self.clock.note_caught_up(self.source.caught_up())
                if len(polled):
                    self.pending.append((polled, arrived))
                    self.pending_rows += len(polled)
                if aligned:
                    if decoded is not None:
                        self.clock.read(polled.partitions, polled.partition_ids[decoded.rows],
                                        decoded.table.column("ts").to_numpy())
                    lag = self.source.lag()
                    self.source.hold(self.clock.ahead(
                        [p for p in self.clock.partitions() if lag.get(p, POLL_CHUNK + 1) > POLL_CHUNK]))
            if not len(polled):
                if opened_at is None and in_graph is None:
                    return
                if busy:
                    concurrent.futures.wait([in_graph.result], timeout=IN_GRAPH_WAIT_S)
                continue
            opened_at = opened_at or time.monotonic()

    def await_graph(self) -> None:
        """Wait for the batch in the graph (outside the lock), polling meanwhile to stay in the consumer group.

        Shard actors can take longer than the group's `max_poll_interval_ms`
        (fresh shards compiling, a shard busy with its checkpoint); a member that
        does not poll for that long is dropped and its partitions' next owner
        repeats alerts. `Source.keep_alive` polls without reading; a rebalance it
        runs hands the partitions over (`PartitionHandOver.revoke`), which
        finishes this batch first.
        """
        job = self.in_graph
        if job is None:
            return
        while not concurrent.futures.wait([job.result], timeout=KEEP_ALIVE_S).done:
            self.source.keep_alive()
            job.report_slow()

    def process_pending(self) -> None:
        """Finish the batch in the graph, then judge, apply and search the open one and finish it too."""
        self.finish()
        if self.pending:
            self.start()
            self.finish()
        else:
            self.eviction.advance()

    def start(self) -> None:
        """Judge the open batch, dead-letter what it refuses and hand the rest to the graph (not waiting for it
        with shard actors: `finish` takes the result).

        The batch stays columns throughout: its polls are decoded in bulk,
        judged by the event-time clock as arrays, and handed to the graph as one
        table; a record is built only for a row that is dead-lettered.
        """
        pending = self.pending
        if not pending:
            return
        self.pending, self.pending_rows = [], 0
        started = time.monotonic()
        batch = SourceBatch.joined([polled for polled, _ in pending])
        received = np.repeat([at for _, at in pending], [len(polled) for polled, _ in pending])
        decoded = batch.payments()
        payments, rows = decoded.table, decoded.rows
        refused: list[tuple[SourceRecord, str]] = [(record, record.error) for record in decoded.rejected]
        ts = payments.column("ts").to_numpy()
        late_or_future = self.clock.refused(ts)
        if late_or_future.any():
            for k in np.flatnonzero(late_or_future).tolist():
                refused.append((batch[int(rows[k])], self.clock.judge(int(ts[k]))))
            keep = ~late_or_future
            payments, rows, ts = payments.filter(pa.array(keep)), rows[keep], ts[keep]
        for record, reason in sorted(refused, key=lambda refusal: refusal[0].position):
            self.dead_letter(record, reason)
        self._accept_times(batch, rows, ts)
        fresh = self.ledger.fresh(batch)  # before a rewind marks them seen
        if not len(rows):
            result: concurrent.futures.Future = concurrent.futures.Future()
            result.set_result(GraphBatch())
        elif self.graph_thread is not None:
            result = self.graph_thread.submit(self.graph.process, payments, received[rows])
        else:
            result = concurrent.futures.Future()
            try:
                result.set_result(self.graph.process(payments, received[rows]))
            except Exception as exc:  # raised where the result is taken, as from the graph thread
                result.set_exception(exc)
        self.in_graph = InGraph(batch, payments, rows, fresh, batch.next_positions(), started, result)

    def finish(self) -> None:
        """Take the graph's answer for the batch in it: alerts to delivery, positions and time advanced."""
        job, self.in_graph = self.in_graph, None
        if job is None:
            return
        applied = self._apply(job)
        self.tally.count_batch(job.fresh)  # after the batch's alerts are counted: never runs ahead of them
        self.fit(len(job.batch), time.monotonic() - job.started)
        if not applied:
            self.rewind(seen=job.positions)
            return
        self.ledger.advance(job.positions)
        self.eviction.advance()

    def fit(self, size: int, elapsed_s: float) -> None:
        """Double the batch cap after a full batch that was quick (a backlog), halve it after a slow one."""
        if elapsed_s > BATCH_TARGET_S:
            self.limit = max(1, self.limit // 2)
        elif size >= self.limit and elapsed_s < BATCH_TARGET_S / 4:
            self.limit = min(self.settings.batch_max_size, self.limit * 2)

    def _accept_times(self, batch: SourceBatch, rows: np.ndarray, ts: np.ndarray) -> None:
        """Move each partition's watermark to its newest accepted payment."""
        if not len(rows):
            return
        partition_ids = batch.partition_ids[rows]
        for index in np.unique(partition_ids).tolist():
            self.clock.accept(batch.partitions[index], int(ts[partition_ids == index].max()))

    def _apply(self, job: InGraph) -> bool:
        """The graph's answer for `job`; False if a shard was lost meanwhile (the caller rewinds and replays)."""
        try:
            result = job.result.result()
        except (rt.ActorDiedError, rt.TaskError) as exc:
            if not self.restart_behind(exc):
                raise
            return False
        batch, payments, rows = job.batch, job.payments, job.rows
        self.tally.handed += payments.num_rows
        self.tally.cut_short += result.truncated_searches
        self.tally.metrics.late_payments.inc(result.late_payments)
        for k, reason in result.refused:  # by row, not tx id: a batch may hold one tx id more than once
            self.dead_letter(batch[int(rows[k])], reason)
        alerts = result.alerts
        warm = self.ledger.warming(batch)
        if warm is not None:
            warming = set(payments.column("tx_id").filter(pa.array(warm[rows])).to_pylist())
            alerts = [alert for alert in alerts if alert.trigger_tx_id not in warming]
        if alerts:
            self.tally.note_raised(alerts)  # counted first: what the sinks hold never runs ahead of `alerts_raised`
            self.delivery.put(alerts)
        return True

    def dead_letter(self, record: SourceRecord, reason: str) -> None:
        """Refuse `record` to the source's dead-letter destination, unless it was consumed (and refused) before."""
        if (self.ledger.warm_until or self.ledger.replay_until) and self.ledger.seen_before(record):
            return
        self.source.dead_letter(record, reason)
        self.tally.note_dead_letter(reason)

    # ---- shards that went back in time ------------------------------------------------------------

    def restart_behind(self, error: Exception) -> bool:
        """Whether a failed graph call was a shard being lost and restarted (waits for the restart to show)."""
        deadline = time.monotonic() + SHARD_RESTART_WAIT_S
        while time.monotonic() < deadline:
            restarted = self.graph.restarted()
            if restarted:
                logger.warning("a graph call failed as shards %s restarted: %s", restarted, error)
                return True
            time.sleep(0.2)  # the runtime records the restart shortly after the call fails
        return False

    def rewound_for_restarts(self) -> bool:
        """Shards restarted from their checkpoints (their state went back in time): rewind to replay what they lost."""
        restarted = self.graph.restarted()
        if restarted:
            logger.warning("shards %s restarted from their checkpoints", restarted)
            self.rewind()
        return bool(restarted)

    def rewind(self, seen: Mapping[Partition, int] | None = None) -> None:
        """Shards went back to their checkpoints: replay every owned partition from the aligned record.

        The replayed payments are applied again (the shards that kept them skip
        them), their rings are raised again with the same ids (sinks deliver none
        twice), and nothing they hold is counted or dead-lettered a second time.
        `seen`: positions beyond the covered ones consumed already (the batch that failed).
        """
        self.pending, self.pending_rows = [], 0
        self.delivery.drain()
        checkpoint = self.records.latest()
        ledger = self.ledger
        ledger.mark_seen([*ledger.covered.items(), *(seen or {}).items()])
        if checkpoint is not None:
            ledger.resume_from(checkpoint, self.clock)
        targets = {p: (checkpoint.positions.get(p) if checkpoint else None) for p in ledger.owned}
        targets = {p: ledger.origin.get(p, 0) if offset is None else offset for p, offset in targets.items()}
        ledger.covered.update(targets)
        self.source.seek(targets)
        self.tally.recoveries += 1
        logger.warning("replaying from checkpoint epoch %s positions=%s", checkpoint.epoch if checkpoint else None,
                       show_positions(targets))

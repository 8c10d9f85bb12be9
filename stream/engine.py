"""The streaming engine: a coordinator over a source, an event-time clock, the graph and the sinks.

    Source.poll ──► micro-batch ──► EventClock.judge ──► EngineGraph.process ──► AlertDelivery ──► sinks
         ▲             (size or delay)   late/future/invalid        (apply + search)       (own thread)
         │                               └─► Source.dead_letter
         └── seek/commit ◄── aligned checkpoint: shard checkpoints + one record (CheckpointRecords)

Each seam is a small protocol of its own module: `Source`
(connectors/source.py: Kafka, files, the generator), `EventClock`
(event_time.py), `EngineGraph` (graph_port.py), `AlertDelivery` (delivery.py)
and `CheckpointRecords` (checkpoint.py). The engine only sequences them.

A micro-batch closes on `batch_max_size` payments or `batch_max_delay_ms`
after its first one. Batches overlap with delivery: once a batch is searched
its alerts go to the delivery thread and the next batch is applied and
searched while they are handed to the sinks. With shard actors they overlap
with polling too: the graph works on a batch on a thread of its own while the
loop polls the next one, and keeps the consumer in its group if the graph takes
long (`_await_graph`), and partitions are read close to event-time order
(`EventClock.ahead`, `Source.hold`). The ring definition is in event time, so
which batch a payment lands in changes nothing about the rings.

Exactly once per alert id, through crashes:
1. An aligned checkpoint is taken between batches, after every alert raised so
   far has been handed to the sinks and the sinks made it durable (file
   fsynced, Kafka acknowledged, webhook outbox on disk). Each shard checkpoints
   itself through the runtime (on a thread beside the loop, see `_checkpoint`);
   one record then ties those checkpoint ids to the source positions and
   watermarks.
2. Kafka offsets are committed only after that record is durable.
3. After a crash of the engine the newest record is restored and every
   partition replays from its position; after the loss of a shard actor (the
   runtime restarts it from its checkpoint) the engine rewinds its sources to
   the record and replays, without restarting. Replays raise the same alert
   ids, and sinks skip ids they have delivered.

Refused input never stops the engine: unparseable or invalid records, `late`
and `future` payments go to the source's dead-letter destination with their
partition, offset, key and reason (once: a replay does not send them again).

With `service.query_port` set, the engine also serves the query service
(`stream/query/`) on the live shard actors, from a thread pool of its own:
queries never take the loop's lock, so they do not pause ingestion.
"""

from __future__ import annotations

import concurrent.futures
import gc
import json
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ringwatch import runtime as rt
from ringwatch.connectors import (
    JsonlSink,
    KafkaConnectorError,
    KafkaSink,
    KafkaSource,
    RebalanceListener,
    Sink,
    Source,
    SourceBatch,
    SourceRecord,
    WebhookSink,
)
from ringwatch.graph import Alert, RingGraph, SearchOptions
from ringwatch.runtime.backend import backend_name
from ringwatch.runtime.checkpoints import default_uri, open_store
from ringwatch.runtime.cli import read_query_token
from ringwatch.runtime.errors import TokenMissingError
from ringwatch.runtime.tls import TlsConfigError, TlsFiles

from .checkpoint import (
    Checkpoint,
    CheckpointRecordError,
    CheckpointRecords,
    EngineProgress,
    FileCheckpointRecords,
    GcsCheckpointRecords,
)
from .claims import AlertClaims
from .config import Config, ConfigError, describe, dump_sections
from .delivery import AlertDelivery
from .event_time import EventClock, reason_category
from .graph_port import EngineGraph, GraphBatch, open_graph
from .history import FILE_NAME as HISTORY_FILE
from .history import AlertHistory
from .metrics import EngineMetrics
from .query import EngineStats, Health, QueryHandler, QueryService

logger = logging.getLogger(__name__)

Partition = tuple[str, int]
# Opens the source with the engine as its rebalance listener; by default a `KafkaSource` from the config.
SourceFactory = Callable[[RebalanceListener], Source]
POLL_IDLE_MS = 100  # longest a poll waits with no batch open: bounds how late a stop is noticed
# The consumer's fetch_max_wait_ms is the batch delay, but at least this: at 1 ms a plain consumer on Tansu
# read a live 20k/s stream slower than it was produced (93k-99k of 160k within 20 s of the last, twice); a
# broker that answers as soon as it has data (Apache Kafka) loses nothing by the floor.
MIN_FETCH_WAIT_MS = 5
SINK_FLUSH_TIMEOUT_S = 30.0
HAND_OVER_FLUSH_TIMEOUT_S = 5.0  # in a rebalance: well inside the group's max_poll_interval_ms (10 s)
SHARD_RESTART_WAIT_S = 30.0  # after a failed graph call: how long to look for the shard restart behind it
THROUGHPUT_WINDOW_S = 10.0  # `stats().throughput_tx_s` is measured over this much recent time
LATENCY_SAMPLE = 1_000  # latency percentiles in `stats()` are over this many recent alerts
PROGRESS_TTL_INTERVALS = 12  # an engine's published progress expires after this many checkpoint intervals
CLAIM_MIN_TTL_MS = 60_000
BATCH_START = 256  # the first batch's cap; the cap doubles after each full batch done in under a quarter of:
BATCH_TARGET_S = 1.0  # ... this, and halves after a batch that took longer (polls stay frequent: group membership)
EVICT_SLICES = 16  # evict when the horizon has moved 1/16 of the window: each eviction is a pass over the shards
POLL_CHUNK = 2_000  # with shard actors and several partitions, the most one poll takes: alignment decides between
# polls (500 cost ~15% more CPU per payment in kafka-python's per-poll coordinator check, for finer steps)
IN_GRAPH_WAIT_S = MIN_FETCH_WAIT_MS / 1000  # while the graph works and the consumer holds nothing: wait this
# long on the graph (not on the broker), so the next batch starts the moment it is free; polls stay one a fetch
KEEP_ALIVE_S = 0.5  # while a full batch waits for the graph: how often the consumer polls to stay in its group
SLOW_GRAPH_LOG_S = 5  # a batch in the graph this long is logged (and again at each multiple)


class Engine:
    """Runs the configured source → clock → graph → sinks pipeline until stopped.

    `run(stop_event)` returns after a final checkpoint once `stop_event` is
    set. `transactions` counts source records consumed (valid or not; a replay
    does not count again) and is part of every checkpoint, so it survives
    restarts. `ready` is set once the shards are restored and the query service
    (if any) listens at `query_address`.

    `source_factory(listener)` replaces the configured Kafka consumer with any
    other `Source` (the demo streams the synthetic generator this way).
    """

    def __init__(self, config: Config, *, source_factory: SourceFactory | None = None):
        self.config = config.validate()
        # Stable across restarts (one engine per state directory): a restarted engine owns its alert claims.
        self.engine_id = f"{socket.gethostname()}:{Path(config.engine.state_dir).resolve()}"
        # On a ringwatch cluster the group's engines share one set of shards (on Ray each engine keeps its own).
        self.shared = bool(config.engine.address) and backend_name(config.engine.backend or None,
                                                                   os.environ) == "ringwatch"
        self._query_token = self._resolve_query_token() if config.service.query_port else ""
        self._query_tls = self._resolve_query_tls() if config.service.query_port else None
        self._source_factory = source_factory
        self.ready = threading.Event()
        self.query_address: str | None = None
        self.started_at = time.time()
        self.batches = 0
        self._recent = deque(maxlen=LATENCY_SAMPLE)
        self.history: AlertHistory | None = None  # opened with the sinks; the query service reads it
        self._recent_lock = threading.Lock()
        self._progress: deque[tuple[float, int]] = deque()  # (monotonic time, transactions) after each batch
        self.metrics = EngineMetrics()
        self.transactions = 0
        self.alerts_raised = 0
        self.dead_lettered: Counter[str] = Counter()
        self.recoveries = 0
        self.last_checkpoint: Checkpoint | None = None
        self._covered: dict[Partition, int] = {}  # per partition: the graph holds every record below this offset
        self._origin: dict[Partition, int] = {}  # per partition: where this engine started reading it
        self._owned: set[Partition] = set()
        self._warm_until: dict[Partition, int] = {}  # records below: alerted on by a previous owner already
        self._replay_until: dict[Partition, int] = {}  # records below: seen before a rewind (no new dead letters)
        self.warmed = 0
        self.cut_short = 0  # searches stopped early by an opt-in cut, since this process started
        self._failed = False
        self._pending: list[tuple[SourceBatch, float]] = []  # the open batch's polls, each with its arrival time
        self._pending_rows = 0
        self._in_graph: _InGraph | None = None  # the batch the graph is working on
        # With shard actors the graph works on a thread of its own while the loop polls the next batch
        # (and keeps the consumer in its group); in process it runs on the loop (it holds the GIL anyway).
        self._graph_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._batch_limit = min(BATCH_START, config.engine.batch_max_size)  # grows with a backlog (_fit_batch)
        self._lock = threading.RLock()
        self._clock = EventClock(config.time_rules())
        self._evicted_to: int | None = None
        self._source: Source | None = None
        self._graph: EngineGraph | None = None
        self._delivery: AlertDelivery | None = None
        self._sinks: dict[str, Sink] = {}
        self._store: CheckpointRecords | None = None  # opened once the runtime is up (on a cluster it is the GCS)
        self._claims: AlertClaims | None = None
        self._group_low: int | None = None  # lowest low watermark published by the group's engines
        self._in_flight: _CheckpointJob | None = None  # a checkpoint whose shard checkpoints are being taken
        self._handed = 0  # payments handed to the graph (in each record: a restart resumes the count)

    # ---- lifecycle -------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event | None = None) -> None:
        stop = stop_event or threading.Event()
        config = self.config
        logger.info("engine starting id=%s %s", self.engine_id, describe(config))
        logger.debug("engine config=%s", json.dumps(dump_sections(config), sort_keys=True))
        self.started_at = time.time()
        started_runtime = not rt.is_initialized()
        if started_runtime:
            rt.init(address=config.engine.address or None, backend=config.engine.backend or None,
                    namespace=config.engine.namespace)
        metrics_server = None
        query_service = None
        try:
            self._store = self._open_store()
            self._sinks = self._open_sinks()
            if self.shared:
                self._claims = AlertClaims(config.source.group, self.engine_id,
                                           ttl_s=max(config.graph.window + config.time.allowed_lateness,
                                                     CLAIM_MIN_TTL_MS) / 1000)
            self._delivery = AlertDelivery(self._sinks, self._claims)
            self._graph = self._restore()
            if config.graph.placement != "in-process":
                self._graph_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ringwatch-graph")
            self._source = self._open_source()
            self._watch_external_counters()
            if config.service.metrics_port:
                self.metrics.show(self)
                metrics_server = self.metrics.serve(config.service.metrics_port, config.service.metrics_host)
            if config.service.query_port:
                query_service = QueryService(QueryHandler(self), token=self._query_token,
                                             host=config.service.query_host, port=config.service.query_port,
                                             tls=self._query_tls)
                self.query_address = query_service.start().address
            self.ready.set()
            _freeze_heap()
            self._loop(stop)
            with self._lock:
                self._checkpoint("stop")
        except BaseException:
            self._failed = True  # state may be half-applied: the last good checkpoint is what a restart uses
            raise
        finally:
            if query_service is not None:
                query_service.stop()
            self._close(metrics_server, started_runtime)
        logger.info("engine stopped transactions=%d alerts=%d", self.transactions, self.alerts_raised)

    def _open_sinks(self) -> dict[str, Sink]:
        sinks_config, state_dir = self.config.sinks, Path(self.config.engine.state_dir)
        sinks: dict[str, Sink] = {}
        if sinks_config.webhook_url:
            sinks["webhook"] = WebhookSink(
                sinks_config.webhook_url, sinks_config.webhook_secret, state_dir / "webhook",
                timeout_s=sinks_config.webhook_timeout / 1000, max_attempts=sinks_config.webhook_max_attempts,
                backoff_initial_s=sinks_config.webhook_backoff_initial / 1000,
                backoff_max_s=sinks_config.webhook_backoff_max / 1000)
        if sinks_config.alerts_topic:
            sinks["kafka"] = KafkaSink(self.config.source.kafka_bootstrap, sinks_config.alerts_topic,
                                       state_dir / "kafka-sink", settings=self.config.kafka_settings())
        if sinks_config.alerts_file:
            sinks["file"] = JsonlSink(sinks_config.alerts_file)
        sinks["history"] = self.history = AlertHistory(state_dir / HISTORY_FILE,
                                                       keep=self.config.service.query_alerts_kept)
        return sinks

    def _resolve_query_token(self) -> str:
        """The read-only query token clients must prove: from a file, RINGWATCH_QUERY_TOKEN, or derived from
        RINGWATCH_TOKEN (never the cluster token itself)."""
        try:
            return read_query_token(self.config.service.query_token_file or None)
        except (TokenMissingError, OSError) as exc:
            raise ConfigError(f"service.query_port: the query service needs a query token ({exc}); set "
                              "RINGWATCH_QUERY_TOKEN, service.query_token_file or RINGWATCH_TOKEN") from None

    def _resolve_query_tls(self) -> TlsFiles | None:
        service = self.config.service
        try:
            return TlsFiles.from_options(service.query_tls_cert, service.query_tls_key, service.query_tls_ca,
                                         prefix="service.query_tls_")
        except TlsConfigError as exc:
            raise ConfigError(str(exc)) from None

    def _open_source(self) -> Source:
        if self._source_factory is not None:
            return self._source_factory(self)
        source_config = self.config.source
        return KafkaSource(source_config.kafka_bootstrap, source_config.topics, source_config.group,
                           dlq_topic=source_config.dlq_topic or None,
                           max_message_bytes=source_config.max_message_bytes, listener=self,
                           fetch_max_wait_ms=max(MIN_FETCH_WAIT_MS, self.config.engine.batch_max_delay_ms),
                           settings=self.config.kafka_settings(), mapping=self.config.field_mapping())

    def _open_store(self) -> CheckpointRecords:
        engine_config = self.config.engine
        shards = open_store(self._shard_checkpoint_uri())  # records hold their shard checkpoints there
        if self.shared:
            return GcsCheckpointRecords(self.config.source.group, engine_config.keep_checkpoints,
                                      progress_ttl_s=max(PROGRESS_TTL_INTERVALS * engine_config.checkpoint_interval,
                                                         CLAIM_MIN_TTL_MS) / 1000, shards=shards, holder=self.engine_id)
        return FileCheckpointRecords(engine_config.state_dir, engine_config.keep_checkpoints, shards=shards,
                                   holder=self.engine_id)

    def _shard_checkpoint_uri(self) -> str:
        """Where shards checkpoint: the cluster's store, or (local runtime) a folder under `state_dir`."""
        if self.config.engine.address:
            return default_uri()
        return f"file://{Path(self.config.engine.state_dir).resolve() / 'shards'}"

    def _restore(self) -> EngineGraph:
        """The graph, from the newest aligned checkpoint if there is one; the clock and positions with it."""
        checkpoint = self._store.latest()
        graph_config = self.config.graph
        shared_as = f"ringwatch/{self.config.source.group}" if self.shared else None
        in_process = graph_config.placement == "in-process"
        if checkpoint is None:
            logger.info("no checkpoint: starting from the group's committed offsets")
            return open_graph(graph_config.shards, self.config.search_options(),
                              checkpoint_uri=self._shard_checkpoint_uri(), shared_as=shared_as,
                              in_process=in_process)
        placement = checkpoint.graph.get("placement", "actors")
        if placement != graph_config.placement:
            raise CheckpointRecordError(
                f"checkpoint epoch {checkpoint.epoch} was taken with graph.placement {placement!r}, the engine is "
                f"set to {graph_config.placement!r}; run with the same placement or a fresh state_dir")
        if not in_process and len(checkpoint.shards) != graph_config.shards:
            raise CheckpointRecordError(
                f"checkpoint epoch {checkpoint.epoch} holds {len(checkpoint.shards)} shards but graph.shards is "
                f"{graph_config.shards}; run with the same shard count or a fresh state_dir")
        graph = open_graph(graph_config.shards, self.config.search_options(),
                           checkpoint_uri=self._shard_checkpoint_uri(),
                           restore=checkpoint.shards, shared_as=shared_as,
                           in_process=in_process)
        self._take_positions(checkpoint)
        mine = checkpoint.engines.get(self.engine_id)
        self.transactions = mine.transactions if mine else 0 if self.shared else checkpoint.transactions
        self._handed = int(checkpoint.graph.get("next_seq", 0))
        self.last_checkpoint = checkpoint
        logger.info("restored checkpoint epoch=%d transactions=%d positions=%s", checkpoint.epoch,
                    checkpoint.transactions, _show(checkpoint.positions))
        return graph

    def _take_positions(self, checkpoint: Checkpoint) -> None:
        self._covered = dict(checkpoint.positions)
        lows = [p.low_watermark for p in checkpoint.engines.values() if p.low_watermark is not None]
        self._clock.restore(checkpoint.watermarks, min(lows) if lows else None)

    def _watch_external_counters(self) -> None:
        self.metrics.watch("ringwatch_dead_letters", "Records sent to the dead-letter destination, by reason",
                           ["reason"], lambda: {(reason,): n for reason, n in self.dead_lettered.items()})
        self.metrics.watch("ringwatch_alerts", "Alerts by sink and outcome", ["sink", "outcome"],
                           self._sink_outcomes)
        if isinstance(self._sinks.get("webhook"), WebhookSink):
            self.metrics.watch_outbox("webhook", self._sinks["webhook"])

    def _sink_outcomes(self) -> dict[tuple[str, str], float]:
        delivery = self._delivery
        outcomes = {(name, "handed"): float(n) for name, n in (delivery.handed if delivery else {}).items()}
        for name, sink in self._sinks.items():
            for outcome, n in getattr(sink, "outcomes", {}).items():
                outcomes[(name, outcome)] = float(n)
        return outcomes

    def _close(self, metrics_server, started_runtime: bool) -> None:
        if metrics_server is not None:
            metrics_server.shutdown()
        if self._source is not None:
            self._source.close()
        if self._delivery is not None:
            self._delivery.close()
        if self._claims is not None:
            self._claims.close()
        for sink in self._sinks.values():
            sink.close()
        if self._graph_thread is not None:
            self._graph_thread.shutdown()
        if self._graph is not None:
            self._graph.close()
        if started_runtime:
            rt.shutdown()

    # ---- the loop --------------------------------------------------------------------------------

    def _loop(self, stop: threading.Event) -> None:
        interval_s = self.config.engine.checkpoint_interval / 1000
        next_checkpoint = time.monotonic() + interval_s
        while not stop.is_set():
            self._fill_batch(stop)  # with shard actors: while the graph works on the batch before
            self._await_graph()
            with self._lock:
                self._finish_batch()
                self._finish_checkpoint(block=False)
                if time.monotonic() >= next_checkpoint:
                    self._checkpoint("interval", wait=False)
                    next_checkpoint = time.monotonic() + interval_s
                self._start_batch()

    def _fill_batch(self, stop: threading.Event) -> None:
        """Poll until the batch holds its cap of records, its first is `batch_max_delay_ms` old, or the graph
        is free again after the batch before.

        The cap starts at `BATCH_START` and grows to `batch_max_size` while full
        batches are quick (`_fit_batch`): under a backlog a batch's fixed cost is
        paid per thousands of payments, live ones stay small, and no batch takes
        so long that the consumer misses `max_poll_interval_ms` and leaves its group.

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
        engine_config = self.config.engine
        opened_at = None
        while not stop.is_set():
            with self._lock:
                room = self._batch_limit - self._pending_rows
                in_graph = self._in_graph
                aligned = self._graph_thread is not None and len(self._clock.partitions()) > 1
            busy = in_graph is not None and not in_graph.result.done()
            if room <= 0 or (in_graph is not None and not busy):
                return
            if opened_at is None:
                timeout_ms = POLL_IDLE_MS
            else:
                timeout_ms = int(engine_config.batch_max_delay_ms - (time.monotonic() - opened_at) * 1000)
                if timeout_ms <= 0 and not busy:
                    return
            if busy:
                timeout_ms = 0  # what the consumer holds now; then wait on the graph, below
                _report_slow(in_graph)
            polled = self._source.poll(max_records=min(room, POLL_CHUNK) if aligned else room, timeout_ms=timeout_ms)
            arrived = time.time()
            decoded = polled.payments() if aligned and len(polled) else None
            with self._lock:
                self._clock.note_caught_up(self._source.caught_up())
                if len(polled):
                    self._pending.append((polled, arrived))
                    self._pending_rows += len(polled)
                if aligned:
                    if decoded is not None:
                        self._clock.read(polled.partitions, polled.partition_ids[decoded.rows],
                                         decoded.table.column("ts").to_numpy())
                    lag = self._source.lag()
                    self._source.hold(self._clock.ahead(
                        [p for p in self._clock.partitions() if lag.get(p, POLL_CHUNK + 1) > POLL_CHUNK]))
            if not len(polled):
                if opened_at is None and in_graph is None:
                    return
                if busy:
                    concurrent.futures.wait([in_graph.result], timeout=IN_GRAPH_WAIT_S)
                continue
            opened_at = opened_at or time.monotonic()

    def _await_graph(self) -> None:
        """Wait for the batch in the graph (outside the lock), polling meanwhile to stay in the consumer group.

        Shard actors can take longer than the group's `max_poll_interval_ms`
        (fresh shards compiling, a shard busy with its checkpoint); a member that
        does not poll for that long is dropped and its partitions' next owner
        repeats alerts. `Source.keep_alive` polls without reading; a rebalance it
        runs hands the partitions over from `on_revoke`, which finishes this
        batch first.
        """
        job = self._in_graph
        if job is None:
            return
        while not concurrent.futures.wait([job.result], timeout=KEEP_ALIVE_S).done:
            self._source.keep_alive()
            _report_slow(job)

    def _process_pending(self) -> None:
        """Finish the batch in the graph, then judge, apply and search the open one and finish it too."""
        self._finish_batch()
        if self._pending:
            self._start_batch()
            self._finish_batch()
        else:
            self._advance_time()

    def _start_batch(self) -> None:
        """Judge the open batch, dead-letter what it refuses and hand the rest to the graph (not waiting for it
        with shard actors: `_finish_batch` takes the result).

        The batch stays columns throughout: its polls are decoded in bulk,
        judged by the event-time clock as arrays, and handed to the graph as one
        table; a record is built only for a row that is dead-lettered.
        """
        pending = self._pending
        if not pending:
            return
        self._pending, self._pending_rows = [], 0
        started = time.monotonic()
        batch = SourceBatch.joined([polled for polled, _ in pending])
        received = np.repeat([at for _, at in pending], [len(polled) for polled, _ in pending])
        decoded = batch.payments()
        payments, rows = decoded.table, decoded.rows
        refused: list[tuple[SourceRecord, str]] = [(record, record.error) for record in decoded.rejected]
        ts = payments.column("ts").to_numpy()
        late_or_future = self._clock.refused(ts)
        if late_or_future.any():
            for k in np.flatnonzero(late_or_future).tolist():
                refused.append((batch[int(rows[k])], self._clock.judge(int(ts[k]))))
            keep = ~late_or_future
            payments, rows, ts = payments.filter(pa.array(keep)), rows[keep], ts[keep]
        for record, reason in sorted(refused, key=lambda refusal: refusal[0].position):
            self._dead_letter(record, reason)
        self._accept_times(batch, rows, ts)
        fresh = self._fresh(batch)  # before a rewind marks them seen
        if not len(rows):
            result: concurrent.futures.Future = concurrent.futures.Future()
            result.set_result(GraphBatch())
        elif self._graph_thread is not None:
            result = self._graph_thread.submit(self._graph.process, payments, received[rows])
        else:
            result = concurrent.futures.Future()
            try:
                result.set_result(self._graph.process(payments, received[rows]))
            except Exception as exc:  # raised where the result is taken, as from the graph thread
                result.set_exception(exc)
        self._in_graph = _InGraph(batch, payments, rows, fresh, batch.next_positions(), started, result)

    def _finish_batch(self) -> None:
        """Take the graph's answer for the batch in it: alerts to delivery, positions and time advanced."""
        job, self._in_graph = self._in_graph, None
        if job is None:
            return
        applied = self._apply(job)
        self._count(job.fresh)  # after the batch's alerts are counted: `transactions` never runs ahead of them
        self._fit_batch(len(job.batch), time.monotonic() - job.started)
        if not applied:
            self._rewind(seen=job.positions)
            return
        for partition, offset in job.positions.items():
            self._covered[partition] = max(self._covered.get(partition, 0), offset)
        self._advance_time()

    def _fit_batch(self, size: int, elapsed_s: float) -> None:
        """Double the batch cap after a full batch that was quick (a backlog), halve it after a slow one."""
        if elapsed_s > BATCH_TARGET_S:
            self._batch_limit = max(1, self._batch_limit // 2)
        elif size >= self._batch_limit and elapsed_s < BATCH_TARGET_S / 4:
            self._batch_limit = min(self.config.engine.batch_max_size, self._batch_limit * 2)

    def _accept_times(self, batch: SourceBatch, rows: np.ndarray, ts: np.ndarray) -> None:
        """Move each partition's watermark to its newest accepted payment."""
        if not len(rows):
            return
        partition_ids = batch.partition_ids[rows]
        for index in np.unique(partition_ids).tolist():
            self._clock.accept(batch.partitions[index], int(ts[partition_ids == index].max()))

    def _fresh(self, batch: SourceBatch) -> int:
        """How many of the batch's records were not consumed before (by another owner, or before a rewind)."""
        if not (self._warm_until or self._replay_until):  # only after a rebalance or a rewind
            return len(batch)
        self.warmed += int(np.count_nonzero(batch.below(self._warm_until)))
        seen = batch.below(self._warm_until) | batch.below(self._replay_until)
        return len(batch) - int(np.count_nonzero(seen))

    def _count(self, fresh: int) -> None:
        self.transactions += fresh
        self.batches += 1
        self.metrics.transactions.inc(fresh)
        self.metrics.batches.inc()
        now = time.monotonic()
        self._progress.append((now, self.transactions))
        while len(self._progress) > 2 and self._progress[1][0] < now - THROUGHPUT_WINDOW_S:
            self._progress.popleft()

    def _apply(self, job: "_InGraph") -> bool:
        """The graph's answer for `job`; False if a shard was lost meanwhile (the caller rewinds and replays)."""
        try:
            result = job.result.result()
        except (rt.ActorDiedError, rt.TaskError) as exc:
            if not self._shard_restart_behind(exc):
                raise
            return False
        batch, payments, rows = job.batch, job.payments, job.rows
        self._handed += payments.num_rows
        self.cut_short += result.truncated_searches
        self.metrics.late_payments.inc(result.late_payments)
        for k, reason in result.refused:  # by row, not tx id: a batch may hold one tx id more than once
            self._dead_letter(batch[int(rows[k])], reason)
        alerts = result.alerts
        if self._warm_until:
            warm = batch.below(self._warm_until)[rows]
            warming = set(payments.column("tx_id").filter(pa.array(warm)).to_pylist())
            alerts = [alert for alert in alerts if alert.trigger_tx_id not in warming]
        if alerts:
            self._note_raised(alerts)  # counted first: what the sinks hold never runs ahead of `alerts_raised`
            self._delivery.put(alerts)
        return True

    def _shard_restart_behind(self, error: Exception) -> bool:
        """Whether a failed graph call was a shard being lost and restarted (waits for the restart to show)."""
        deadline = time.monotonic() + SHARD_RESTART_WAIT_S
        while time.monotonic() < deadline:
            restarted = self._graph.restarted()
            if restarted:
                logger.warning("a graph call failed as shards %s restarted: %s", restarted, error)
                return True
            time.sleep(0.2)  # the runtime records the restart shortly after the call fails
        return False

    def _advance_time(self) -> None:
        """Move the low watermark; evict once the horizon has moved a slice of the window.

        On shared shards the horizon is also bounded by the lowest low watermark
        the group's engines published: what another engine's partitions may
        still need stays.
        """
        self._clock.advance()
        horizon = self._clock.eviction_horizon()
        if horizon is None:
            return
        if self.shared:
            if self._group_low is None:
                return
            horizon = min(horizon, self._group_low - self.config.graph.window - self.config.time.allowed_lateness)
        step = max(self.config.graph.window // EVICT_SLICES, 1)
        if self._in_flight is not None:
            return  # the shard checkpoints being taken must keep what a replay from their record needs
        if self._evicted_to is None or horizon - self._evicted_to >= step:
            self._graph.evict(horizon)
            self._evicted_to = horizon

    def _is_warm_up(self, record: SourceRecord) -> bool:
        return record.offset < self._warm_until.get(record.partition, 0)

    def _seen_before(self, record: SourceRecord) -> bool:
        """Consumed before (by another owner, or by this engine before a rewind): not counted or refused again."""
        return self._is_warm_up(record) or record.offset < self._replay_until.get(record.partition, 0)

    def _dead_letter(self, record: SourceRecord, reason: str) -> None:
        if (self._warm_until or self._replay_until) and self._seen_before(record):
            return
        self._source.dead_letter(record, reason)
        self.dead_lettered[reason_category(reason)] += 1

    def _note_raised(self, alerts: list[Alert]) -> None:
        self.alerts_raised += len(alerts)
        self.metrics.alerts_raised.inc(len(alerts))
        with self._recent_lock:
            self._recent.extend(alerts)
        for alert in alerts:
            self.metrics.latency.observe(alert.latency_ms / 1000)
        logger.debug("alerts raised count=%d first=%s", len(alerts), alerts[0].alert_id)

    # ---- checkpoints, shard restarts and rebalances ------------------------------------------------

    def _checkpoint(self, reason: str, *, wait: bool = True) -> Checkpoint | None:
        """Aligned checkpoint between batches; None (and the engine keeps running) when none was written now.

        The aligned part runs here, on the loop: finish the batch, hand every
        alert to the sinks and make it durable, note positions and watermarks.
        The shard checkpoints (the slow part) are then taken by a `_CheckpointJob`;
        with `wait=False` (the periodic checkpoint) on a thread of its own while
        the loop goes on. Each shard checkpoint is taken after every batch below
        the noted positions was applied, so it holds them all; it may hold later
        payments too, which is harmless (a replay raises their rings again with
        the same ids). Eviction waits while a job runs: what replaying from the
        noted positions needs is still in the shards' checkpoints. Back on the
        loop (`_finish_checkpoint`) the record is written only if no shard
        restarted meanwhile, then the offsets are committed. The final
        checkpoint waits for all of it (a rebalance takes none: `_hand_over`).
        A failure leaves the previous record standing: a shard lost meanwhile
        rewinds, anything else stops the engine (raised on the loop, as if it
        had happened there).
        """
        if self._failed:
            return None
        self._finish_batch()  # nothing in the graph while the record is written: a rewind replays from it
        self._finish_checkpoint(block=wait)
        if self._in_flight is not None:
            return None  # the previous one is still being taken
        started = time.monotonic()
        if wait:
            self._process_pending()
        self._delivery.drain()
        if self._rewound_for_restarts():
            return None
        if self._unchanged_since_last_checkpoint():
            return self.last_checkpoint
        if not self._sinks_durable():
            logger.warning("checkpoint skipped reason=%s: a sink did not make its alerts durable in %.0f s",
                           reason, SINK_FLUSH_TIMEOUT_S)
            return None
        if self._claims is not None and not self._claims.settle():
            logger.warning("checkpoint skipped reason=%s: %d alerts claimed by live engines are not sent yet",
                           reason, self._claims.parked)
            return None
        progress = EngineProgress(dict(self._covered), self._clock.watermarks(), self._clock.low_watermark,
                                  self.transactions)
        job = _CheckpointJob(self._store, self._graph, self.engine_id, progress, reason, started, self.recoveries,
                             {"placement": self.config.graph.placement, "next_seq": self._handed})
        self._in_flight = job
        if not wait:
            threading.Thread(target=job.run, name="ringwatch-checkpoint", daemon=True).start()
            return None
        job.run()
        return self._finish_checkpoint(block=True)

    def _finish_checkpoint(self, *, block: bool) -> Checkpoint | None:
        """Write the record of a job whose shard checkpoints are taken, then commit (waits for it if `block`)."""
        job = self._in_flight
        if job is None or not (block or job.done.is_set()):
            return None
        job.done.wait()
        self._in_flight = None
        if self.recoveries != job.recoveries:  # the engine rewound meanwhile: a shard went back in time
            logger.warning("checkpoint reason=%s dropped: shards restarted while it was taken", job.reason)
            return None
        if job.error is not None:
            if isinstance(job.error, (rt.ActorDiedError, rt.TaskError)) and self._shard_restart_behind(job.error):
                self._rewind()  # a shard lost while it checkpointed: replay what it lost
                return None
            raise job.error  # the previous record stands; a restart resumes from it
        if self._rewound_for_restarts():  # a call parked through a restart gives an id of older state
            return None
        try:
            checkpoint = self._store.save(Checkpoint(0, job.group, job.shard_ids, graph=job.graph_state))
        except CheckpointRecordError as exc:  # its shard checkpoints were pruned: the next checkpoint takes new ones
            logger.warning("checkpoint reason=%s dropped: %s", job.reason, exc)
            return None
        self._group_low = job.group_low
        positions = job.progress.positions
        try:
            self._source.commit({p: offset for p, offset in positions.items() if p in self._owned})
        except KafkaConnectorError as exc:  # the checkpoint stands; the next one commits again
            logger.error("checkpoint epoch=%d written but offsets not committed: %s", checkpoint.epoch, exc)
        self.last_checkpoint = checkpoint
        elapsed = time.monotonic() - job.started
        self.metrics.checkpoint_duration.observe(elapsed)
        self.metrics.checkpoints.inc()
        logger.info("checkpoint epoch=%d reason=%s transactions=%d duration_ms=%.1f low_watermark=%s positions=%s",
                    checkpoint.epoch, job.reason, job.progress.transactions, elapsed * 1000,
                    job.progress.low_watermark, _show(positions))
        return checkpoint

    def _rewound_for_restarts(self) -> bool:
        """Shards restarted from their checkpoints (their state went back in time): rewind to replay what they lost."""
        restarted = self._graph.restarted()
        if restarted:
            logger.warning("shards %s restarted from their checkpoints", restarted)
            self._rewind()
        return bool(restarted)

    def _unchanged_since_last_checkpoint(self) -> bool:
        """Nothing new from this engine since its last record (other engines checkpoint their own progress)."""
        last = self.last_checkpoint
        mine = last.engines.get(self.engine_id) if last is not None else None
        return mine is not None and mine.transactions == self.transactions and mine.positions == self._covered

    def _sinks_durable(self, timeout_s: float = SINK_FLUSH_TIMEOUT_S) -> bool:
        """Every alert handed over so far survives a crash: the webhook outbox is written at `deliver`."""
        return all(sink.flush(timeout_s) for sink in self._sinks.values()
                   if not isinstance(sink, WebhookSink))

    def _rewind(self, seen: Mapping[Partition, int] | None = None) -> None:
        """Shards went back to their checkpoints: replay every owned partition from the aligned record.

        The replayed payments are applied again (the shards that kept them skip
        them), their rings are raised again with the same ids (sinks deliver none
        twice), and nothing they hold is counted or dead-lettered a second time.
        `seen`: positions beyond `_covered` consumed already (the batch that failed).
        """
        self._pending, self._pending_rows = [], 0
        self._delivery.drain()
        checkpoint = self._store.latest()
        for partition, offset in [*self._covered.items(), *(seen or {}).items()]:
            self._replay_until[partition] = max(self._replay_until.get(partition, 0), offset)
        if checkpoint is not None:
            self._take_positions(checkpoint)
        targets = {p: (checkpoint.positions.get(p) if checkpoint else None) for p in self._owned}
        targets = {p: self._origin.get(p, 0) if offset is None else offset for p, offset in targets.items()}
        self._covered.update(targets)
        self._source.seek(targets)
        self.recoveries += 1
        logger.warning("replaying from checkpoint epoch %s positions=%s", checkpoint.epoch if checkpoint else None,
                       _show(targets))

    def on_revoke(self, partitions: list[Partition]) -> None:
        """Before partitions go: finish the open batch and commit, so the next owner starts where we stop."""
        with self._lock:
            if self._owned.intersection(partitions):
                self._hand_over(sorted(self._owned.intersection(partitions)))
            self._owned.difference_update(partitions)
            self._clock.revoke(partitions)
        logger.info("partitions revoked %s", partitions)

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
        if self._failed:
            return
        self._process_pending()
        self._delivery.drain()
        if self._rewound_for_restarts():
            return
        if not self._sinks_durable(HAND_OVER_FLUSH_TIMEOUT_S):
            logger.warning("partitions %s handed over uncommitted: a sink did not make its alerts durable in %.0f s",
                           partitions, HAND_OVER_FLUSH_TIMEOUT_S)
            return
        if self._claims is not None and not self._claims.settle():
            logger.warning("partitions %s handed over uncommitted: alerts claimed by live engines are not sent yet",
                           partitions)
            return
        positions = {partition: self._covered[partition] for partition in partitions if partition in self._covered}
        try:
            self._source.commit(positions)
        except KafkaConnectorError as exc:  # the next owner replays from the offsets committed before
            logger.error("partitions %s handed over uncommitted: %s", partitions, exc)
            return
        logger.info("partitions handed over positions=%s", _show(positions))

    def on_assign(self, partitions: list[Partition]) -> None:
        """Resume each partition where the graph stops; with a graph of its own, warm up what another owner did.

        Shared shards (a cluster) already hold what the previous owner applied:
        the partition resumes at the group's committed offset. An engine with a
        graph of its own resumes where that graph stops; if the committed offset
        is beyond (another engine owned the partition meanwhile), the records in
        between are read into the graph as witnesses, but their alerts and dead
        letters are not sent again: the previous owner sent them before it
        committed.
        """
        with self._lock:
            for partition in partitions:
                committed = self._source.committed(partition) or 0
                start = self._covered.get(partition, 0)
                if self.shared:
                    start = max(start, committed)
                    self._covered[partition] = start
                self._source.seek({partition: start})
                self._origin.setdefault(partition, start)
                if committed > start:
                    self._warm_until[partition] = committed
                self._owned.add(partition)
                logger.info("partition assigned %s[%d] from=%d warm_until=%d", *partition, start,
                            max(committed, start))
            self._clock.assign(partitions, self._group_watermarks() if self.shared else None)

    def _group_watermarks(self) -> dict[Partition, int | None]:
        """Each partition's watermark as the group's engines last published it (the newest of them)."""
        merged = Checkpoint(0, self._store.group_progress(), [])
        return merged.watermarks

    # ---- what the query service reads (from its own threads; never under the loop's lock) ----------

    def query_graph(self) -> RingGraph | None:
        return self._graph.query_graph() if self._graph is not None and self.ready.is_set() else None

    def search_options(self) -> SearchOptions:
        return self.config.search_options()

    def newest_ts(self) -> int | None:
        """Event time of the newest payment accepted (the highest partition watermark)."""
        marks = [mark for mark in self._clock.watermarks().values() if mark is not None]
        return max(marks) if marks else None

    def alert_history(self) -> AlertHistory | None:
        return self.history

    def recent_alerts(self) -> list[Alert]:
        """The newest alerts this process raised (up to `LATENCY_SAMPLE`), oldest first."""
        with self._recent_lock:
            return list(self._recent)

    # ---- what /metrics reads at each scrape (metrics.EngineFigures) --------------------------------------

    def graph_edges(self) -> int | None:
        shards = self.query_graph()
        return shards.edge_count() if shards is not None else None

    def searches_cut_short(self) -> int:
        return self.cut_short

    def partition_watermarks(self) -> dict[Partition, int]:
        marks = {partition: mark for partition, mark in self._clock.watermarks().items() if mark is not None}
        if self._clock.low_watermark is not None:
            marks[("*", -1)] = self._clock.low_watermark
        return marks

    def partition_lag(self) -> dict[Partition, int]:
        return self._source.lag() if self._source is not None else {}

    def health(self) -> Health:
        status = "failed" if self._failed else "ok" if self.ready.is_set() else "starting"
        return Health(status, round(time.time() - self.started_at, 3), self.transactions, self.alerts_raised)

    def stats(self) -> EngineStats:
        progress = list(self._progress)
        recent_rate = 0.0
        if len(progress) >= 2 and progress[-1][0] > progress[0][0]:
            recent_rate = (progress[-1][1] - progress[0][1]) / (progress[-1][0] - progress[0][0])
        uptime = time.time() - self.started_at
        latencies = sorted(alert.latency_ms for alert in self.recent_alerts()[-LATENCY_SAMPLE:])
        shards = self.query_graph()
        checkpoint = self.last_checkpoint
        return EngineStats(
            transactions=self.transactions, alerts=self.alerts_raised, batches=self.batches,
            uptime_s=round(uptime, 3), throughput_tx_s=round(recent_rate, 1),
            average_tx_s=round(self.transactions / uptime, 1) if uptime > 0 else 0.0,
            latency_ms={name: percentile(latencies, q) for name, q in
                        (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))} if latencies else {},
            lag={f"{topic}[{partition}]": lag for (topic, partition), lag in sorted(self.partition_lag().items())},
            shards=self._graph.num_shards if self._graph is not None else self.config.graph.shards,
            edges_stored=shards.edge_count() if shards is not None else 0,
            checkpoint_id=checkpoint.epoch if checkpoint else None,
            checkpoint_age_s=round(time.time() - checkpoint.created_at, 3) if checkpoint else None,
            newest_ts=self.newest_ts(),
            dead_letters=dict(self.dead_lettered))


@dataclass
class _InGraph:
    """A micro-batch handed to the graph, with what finishing it needs once the graph answers."""

    batch: SourceBatch
    payments: pa.Table  # the rows the graph was given: batch rows `rows`
    rows: np.ndarray
    fresh: int  # records not consumed before (counted when it finishes)
    positions: dict[Partition, int]  # where its partitions resume after it
    started: float  # monotonic
    result: concurrent.futures.Future
    reported: int = 0  # SLOW_GRAPH_LOG_S periods logged so far


def _report_slow(job: _InGraph) -> None:
    """Log a batch long in the graph, once per `SLOW_GRAPH_LOG_S` (the loop polls meanwhile)."""
    slow = int((time.monotonic() - job.started) // SLOW_GRAPH_LOG_S)
    if slow > job.reported:
        job.reported = slow
        logger.info("a batch of %d payments has been in the graph for %d s; polling to stay in the consumer group",
                    job.payments.num_rows, slow * SLOW_GRAPH_LOG_S)


class _CheckpointJob:
    """The part of an aligned checkpoint that may run beside the loop: publish the progress, checkpoint the shards.

    The loop writes the record afterwards (`Engine._finish_checkpoint`): only the
    loop can tell whether a shard restarted while its checkpoint was taken.
    """

    def __init__(self, store: CheckpointRecords, graph: EngineGraph, engine_id: str, progress: EngineProgress,
                 reason: str, started: float, recoveries: int, graph_state: dict[str, Any]):
        self.store, self.graph, self.engine_id = store, graph, engine_id
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
            self.store.publish(self.engine_id, self.progress)
            self.group = self.store.group_progress()  # everything it says is in the shards now: checkpoint them
            lows = [p.low_watermark for p in self.group.values()]
            self.group_low = None if not lows or None in lows else min(lows)
            self.shard_ids = self.graph.checkpoint()
        except Exception as exc:  # raised on the loop by `Engine._finish_checkpoint`
            self.error = exc
        finally:
            self.done.set()


def _freeze_heap() -> None:
    """Leave what start-up made (numba's and kafka-python's objects, the restored graph) out of garbage collection.

    The loop makes short-lived objects by the thousand per batch (records, alerts),
    so the collector runs often, and each full collection walked every object
    start-up had made: ~0.5 s with the process stopped (gen-2, 4 in 12 s at 20k
    payments/s in process, load 6), a stall that every payment then waiting sees.
    Objects made after this are collected as before.
    """
    gc.collect()
    gc.freeze()


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


def _show(positions: Mapping[Partition, int]) -> str:
    return ",".join(f"{topic}[{partition}]@{offset}" for (topic, partition), offset in sorted(positions.items()))

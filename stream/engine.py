"""The streaming engine: Kafka in, ring alerts out, exactly once per alert id through crashes.

One loop, one batch in flight: poll the source into a micro-batch that closes
on `batch_max_size` payments or `batch_max_delay_ms` after its first one,
store and search it on the `GraphShard` actors, hand its alerts to every sink,
and advance the positions it covers. Keeping a single batch in flight is the
backpressure: nothing is read faster than the shards take it, and a checkpoint
never has to wait for more than the batch already running.

Exactly-once per alert id comes from three rules. (1) A checkpoint is aligned:
it is taken between batches, after every sink has made the alerts of the
covered batches durable (file fsynced, Kafka acknowledged, webhook outbox on
disk), and records shard snapshots, source positions and the detector's
counters as one manifest. (2) Kafka offsets are committed only after that
manifest is durable. (3) After any crash the engine restores the newest
complete checkpoint and replays from its positions; the replay raises the same
alerts with the same ids, and sinks skip the ids they already delivered.

Invalid input (bad JSON, failed validation, oversize) is dead-lettered by the
source; payments older than the low watermark are dead-lettered here with the
detector's reason. Both are counted, neither stops the engine.

With `service.query_port` set, the engine also serves the query service
(`stream/query/`) on the live shard actors, from a thread pool of its own:
queries never take the loop's lock, so they do not pause ingestion.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace

from ringwatch import runtime as rt
from ringwatch.connectors import (
    JsonlSink,
    KafkaConnectorError,
    KafkaSink,
    KafkaSource,
    Sink,
    SourceRecord,
    WebhookSink,
    next_positions,
)
from ringwatch.graph import ActorShards, Alert, RingDetector, SearchOptions, ShardSet, search_in_parallel
from ringwatch.runtime.cli import TokenMissingError, read_token

from .checkpoint import Checkpoint, CheckpointError, CheckpointStore
from .config import Config, ConfigError, describe, dump_sections
from .history import FILE_NAME as HISTORY_FILE
from .history import AlertHistory
from .metrics import EngineMetrics
from .query import EngineStats, Health, QueryHandler, QueryService

logger = logging.getLogger(__name__)

Partition = tuple[str, int]
RebalanceCallback = Callable[[list[Partition]], None]
# Opens the source with the engine's rebalance hooks; by default a `KafkaSource` from the config.
SourceFactory = Callable[[RebalanceCallback, RebalanceCallback], KafkaSource]
POLL_IDLE_MS = 100  # longest a poll waits with no batch open: bounds how late a stop is noticed
SINK_FLUSH_TIMEOUT_S = 30.0
THROUGHPUT_WINDOW_S = 10.0  # `stats().throughput_tx_s` is measured over this much recent time
LATENCY_SAMPLE = 1_000  # latency percentiles in `stats()` are over this many recent alerts


class Engine:
    """Runs the configured source → shards → search → sinks pipeline until stopped.

    `run(stop_event)` returns after a final checkpoint once `stop_event` is
    set. `transactions` counts source records consumed (valid or not) and is
    part of every checkpoint, so it survives restarts. `ready` is set once the
    shards are restored and the query service (if any) listens at `query_address`.

    `source_factory` replaces the configured Kafka consumer with another source
    offering the same calls (the demo streams the synthetic generator this way).
    """

    def __init__(self, config: Config, *, source_factory: SourceFactory | None = None):
        self.config = config.validate()
        self._query_token = self._resolve_query_token() if config.service.query_port else ""
        self._source_factory = source_factory
        self.ready = threading.Event()
        self.query_address: str | None = None
        self.started_at = time.time()
        self.batches = 0
        self.lag: dict[Partition, int] = {}
        self._recent = deque(maxlen=LATENCY_SAMPLE)
        self.history: AlertHistory | None = None  # opened with the sinks; the query service reads it
        self._recent_lock = threading.Lock()
        self._progress: deque[tuple[float, int]] = deque()  # (monotonic time, transactions) after each batch
        self.metrics = EngineMetrics()
        self.transactions = 0
        self.alerts_raised = 0
        self.last_checkpoint: Checkpoint | None = None
        self._covered: dict[Partition, int] = {}  # per partition: the graph holds every record below this offset
        self._owned: set[Partition] = set()
        self._warm_until: dict[Partition, int] = {}  # records below: already alerted on by a previous owner
        self.warmed = 0
        self.cut_short = 0  # searches stopped early by an opt-in cut, since this process started
        self._failed = False
        self._pending: list[SourceRecord] = []
        self._received: list[float] = []
        self._lock = threading.RLock()
        self._sinks: dict[str, Sink] = {}
        self._handed: Counter[str] = Counter()
        self._source: KafkaSource | None = None
        self._detector: RingDetector | None = None
        self._store = CheckpointStore(config.engine.state_dir, config.engine.keep_checkpoints)

    # ---- lifecycle -------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event | None = None) -> None:
        stop = stop_event or threading.Event()
        config = self.config
        logger.info("engine starting %s", describe(config))
        logger.debug("engine config=%s", json.dumps(dump_sections(config), sort_keys=True))
        self.started_at = time.time()
        started_runtime = not rt.is_initialized()
        if started_runtime:
            rt.init(address=config.engine.address or None)
        shards = None
        metrics_server = None
        query_service = None
        try:
            shards = ActorShards(config.graph.shards)
            self._detector = RingDetector(shards, config.search_options(), searcher=functools.partial(
                search_in_parallel, parallelism=config.graph.shards))
            self._sinks = self._open_sinks()
            self._restore(shards)
            self._source = self._open_source()
            self._watch_external_counters()
            if config.service.metrics_port:
                self.metrics.show(self)
                metrics_server = self.metrics.serve(config.service.metrics_port, config.service.metrics_host)
            if config.service.query_port:
                query_service = QueryService(QueryHandler(self), token=self._query_token,
                                             host=config.service.query_host, port=config.service.query_port)
                self.query_address = query_service.start().address
            self.ready.set()
            self._loop(stop)
            with self._lock:
                self._checkpoint("stop")
        except BaseException:
            self._failed = True  # state may be half-applied: the last good checkpoint is what a restart uses
            raise
        finally:
            if query_service is not None:
                query_service.stop()
            self._close(shards, metrics_server, started_runtime)
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
        """The token query clients must send: the cluster token, from a file or RINGWATCH_TOKEN."""
        try:
            return read_token(self.config.service.query_token_file or None)
        except (TokenMissingError, OSError) as exc:
            raise ConfigError(f"service.query_port: the query service needs a token ({exc}); "
                              "set RINGWATCH_TOKEN or service.query_token_file") from None

    def _open_source(self) -> KafkaSource:
        if self._source_factory is not None:
            return self._source_factory(self._on_revoke, self._on_assign)
        source_config = self.config.source
        return KafkaSource(source_config.kafka_bootstrap, source_config.topics, source_config.group,
                           dlq_topic=source_config.dlq_topic or None,
                           max_message_bytes=source_config.max_message_bytes,
                           on_revoke=self._on_revoke, on_assign=self._on_assign,
                           settings=self.config.kafka_settings(), mapping=self.config.field_mapping())

    def _restore(self, shards: ActorShards) -> None:
        checkpoint = self._store.latest()
        if checkpoint is None:
            logger.info("no checkpoint under %s: starting from the group's committed offsets", self._store.root)
            return
        if len(checkpoint.shard_digests) != shards.num_shards:
            raise CheckpointError(
                f"checkpoint {checkpoint.checkpoint_id} holds {len(checkpoint.shard_digests)} shards but "
                f"graph.shards is {shards.num_shards}; run with the same shard count or a fresh state_dir")
        rt.get([handle.restore.remote(self._store.load_shard(checkpoint, index))
                for index, handle in enumerate(shards.handles)])
        self._detector.next_seq = checkpoint.next_seq
        self._detector.watermark = checkpoint.watermark
        self._covered = dict(checkpoint.positions)
        self.transactions = checkpoint.transactions
        self.last_checkpoint = checkpoint
        logger.info("restored checkpoint id=%d transactions=%d positions=%s", checkpoint.checkpoint_id,
                    checkpoint.transactions, _show(checkpoint.positions))

    def _watch_external_counters(self) -> None:
        self.metrics.watch("ringwatch_dead_letters", "Messages sent to the dead-letter topic, by reason",
                           ["reason"], lambda: {(reason,): n for reason, n in self._source.dead_lettered.items()})
        self.metrics.watch("ringwatch_alerts", "Alerts by sink and outcome", ["sink", "outcome"],
                           self._sink_outcomes)

    def _sink_outcomes(self) -> dict[tuple[str, str], float]:
        outcomes = {(name, "handed"): float(n) for name, n in self._handed.items()}
        for name, sink in self._sinks.items():
            for outcome, n in getattr(sink, "outcomes", {}).items():
                outcomes[(name, outcome)] = float(n)
        return outcomes

    def _close(self, shards: ActorShards | None, metrics_server, started_runtime: bool) -> None:
        if metrics_server is not None:
            metrics_server.shutdown()
        if self._source is not None:
            self._source.close()
        for sink in self._sinks.values():
            sink.close()
        if shards is not None:
            shards.close()
        if started_runtime:
            rt.shutdown()

    # ---- the loop --------------------------------------------------------------------------------

    def _loop(self, stop: threading.Event) -> None:
        interval_s = self.config.engine.checkpoint_interval / 1000
        next_checkpoint = time.monotonic() + interval_s
        while not stop.is_set():
            self._fill_batch(stop)
            with self._lock:
                self._process_pending()
                if time.monotonic() >= next_checkpoint:
                    self._checkpoint("interval")
                    next_checkpoint = time.monotonic() + interval_s

    def _fill_batch(self, stop: threading.Event) -> None:
        """Poll until the batch holds `batch_max_size` records or its first is `batch_max_delay_ms` old."""
        engine_config = self.config.engine
        opened_at = None
        while not stop.is_set():
            with self._lock:
                room = engine_config.batch_max_size - len(self._pending)
            if room <= 0:
                return
            if opened_at is None:
                timeout_ms = POLL_IDLE_MS
            else:
                timeout_ms = int(engine_config.batch_max_delay_ms - (time.monotonic() - opened_at) * 1000)
                if timeout_ms <= 0:
                    return
            records = self._source.poll_batch(max_records=room, timeout_ms=timeout_ms)
            if not records:
                if opened_at is None:
                    return
                continue
            arrived = time.time()
            with self._lock:
                self._pending.extend(records)
                self._received.extend([arrived] * len(records))
            opened_at = opened_at or time.monotonic()

    def _process_pending(self) -> None:
        """Run the open batch through the detector and the sinks; advance the positions it covers."""
        records, received = self._pending, self._received
        if not records:
            return
        self._pending, self._received = [], []
        valid = [(r, at) for r, at in zip(records, received) if r.ok]
        result = self._detector.process([r.transaction for r, _ in valid], [at for _, at in valid])
        self.cut_short += result.truncated_searches
        warming = {r.transaction.tx_id for r, _ in valid if self._is_warm_up(r)}
        if result.rejected:
            self._dead_letter_late(valid, [item for item in result.rejected if item.transaction.tx_id not in warming])
        alerts = [alert for alert in result.alerts if alert.trigger_tx_id not in warming]
        if alerts:
            self._deliver(alerts)
        for partition, offset in next_positions(records).items():
            self._covered[partition] = max(self._covered.get(partition, 0), offset)
        consumed = sum(1 for r in records if not self._is_warm_up(r))
        self.warmed += len(records) - consumed
        self.transactions += consumed
        self.batches += 1
        self.metrics.transactions.inc(consumed)
        self.metrics.batches.inc()
        now = time.monotonic()
        self._progress.append((now, self.transactions))
        while len(self._progress) > 2 and self._progress[1][0] < now - THROUGHPUT_WINDOW_S:
            self._progress.popleft()

    def _is_warm_up(self, record: SourceRecord) -> bool:
        topic, partition, offset = record.position
        return offset < self._warm_until.get((topic, partition), 0)

    def _dead_letter_late(self, valid: list[tuple[SourceRecord, float]], rejected) -> None:
        by_tx = {r.transaction.tx_id: r for r, _ in valid}
        for item in rejected:
            record = by_tx[item.transaction.tx_id]
            topic, partition, offset = record.position
            self._source._dead_letter(SimpleNamespace(topic=topic, partition=partition, offset=offset,
                                                      value=record.raw, key=None), item.reason)

    def _deliver(self, alerts: list[Alert]) -> None:
        for name, sink in self._sinks.items():
            sink.deliver(alerts)
            self._handed[name] += len(alerts)
        self.alerts_raised += len(alerts)
        self.metrics.alerts_raised.inc(len(alerts))
        with self._recent_lock:
            self._recent.extend(alerts)
        for alert in alerts:
            self.metrics.latency.observe(alert.latency_ms / 1000)
        logger.debug("alerts raised count=%d first=%s", len(alerts), alerts[0].alert_id)

    # ---- checkpoints and rebalances --------------------------------------------------------------

    def _checkpoint(self, reason: str) -> Checkpoint | None:
        """Aligned checkpoint between batches; returns None (and keeps running) if a sink could not keep up."""
        if self._failed:
            return None
        started = time.monotonic()
        self._process_pending()
        if self._unchanged_since_last_checkpoint():
            return self.last_checkpoint
        if not self._sinks_durable():
            logger.warning("checkpoint skipped reason=%s: a sink did not make its alerts durable in %.0f s",
                           reason, SINK_FLUSH_TIMEOUT_S)
            return None
        shards = self._detector.shards
        snapshots = rt.get([handle.snapshot.remote() for handle in shards.handles], timeout=SINK_FLUSH_TIMEOUT_S)
        checkpoint = self._store.save(self._covered, self._detector.next_seq, self._detector.watermark,
                                      self.transactions, snapshots)
        try:
            self._source.commit({p: offset for p, offset in self._covered.items() if p in self._owned})
        except KafkaConnectorError as exc:  # the checkpoint stands; the next one commits again
            logger.error("checkpoint id=%d written but offsets not committed: %s", checkpoint.checkpoint_id, exc)
        self.last_checkpoint = checkpoint
        elapsed = time.monotonic() - started
        self.metrics.checkpoint_duration.observe(elapsed)
        self.metrics.checkpoints.inc()
        self.lag = self._source.lag()
        logger.info("checkpoint id=%d reason=%s transactions=%d alerts=%d bytes=%d duration_ms=%.1f positions=%s",
                    checkpoint.checkpoint_id, reason, self.transactions, self.alerts_raised,
                    sum(map(len, snapshots)), elapsed * 1000, _show(self._covered))
        return checkpoint

    def _unchanged_since_last_checkpoint(self) -> bool:
        last = self.last_checkpoint
        return last is not None and last.transactions == self.transactions and last.positions == self._covered

    def _sinks_durable(self) -> bool:
        """Every alert handed over so far survives a crash: the webhook outbox is written at `deliver`."""
        return all(sink.flush(SINK_FLUSH_TIMEOUT_S) for sink in self._sinks.values()
                   if not isinstance(sink, WebhookSink))

    def _on_revoke(self, partitions: list[Partition]) -> None:
        """Before partitions go: finish the open batch and checkpoint, so the next owner starts where we stop."""
        with self._lock:
            self._checkpoint("rebalance")
            self._owned.difference_update(partitions)
        logger.info("partitions revoked %s", partitions)

    def _on_assign(self, partitions: list[Partition]) -> None:
        """Resume each partition where this engine's graph stops; warm up what another owner processed.

        If the group's committed offset is beyond what our graph holds (another
        engine owned the partition meanwhile), the records in between are read
        into the graph as witnesses, but their alerts and dead letters are not
        sent again: the previous owner sent them before it committed.
        """
        with self._lock:
            for partition in partitions:
                start = self._covered.get(partition, 0)
                committed = self._source.committed(partition) or 0
                self._source.seek({partition: start})
                if committed > start:
                    self._warm_until[partition] = committed
                self._owned.add(partition)
                logger.info("partition assigned %s[%d] from=%d warm_until=%d", *partition, start,
                            max(committed, start))


    # ---- what the query service reads (from its own threads; never under the loop's lock) ----------

    def query_shards(self) -> ShardSet | None:
        return self._detector.shards if self._detector is not None and self.ready.is_set() else None

    def search_options(self) -> SearchOptions:
        return self.config.search_options()

    def newest_ts(self) -> int | None:
        """Event time of the newest payment in the graph (the detector's watermark plus the window)."""
        detector = self._detector
        if detector is None or detector.next_seq == 0:
            return None
        return detector.watermark + detector.options.window_ms

    def alert_history(self) -> AlertHistory | None:
        return self.history

    def recent_alerts(self) -> list[Alert]:
        """The newest alerts this process raised (up to `LATENCY_SAMPLE`), oldest first."""
        with self._recent_lock:
            return list(self._recent)

    # ---- what /metrics reads at each scrape (metrics.EngineFigures) --------------------------------------

    def graph_edges(self) -> int | None:
        shards = self.query_shards()
        return shards.edge_count() if shards is not None else None

    def searches_cut_short(self) -> int:
        return self.cut_short

    def partition_watermarks(self) -> dict[Partition, int]:
        newest = self.newest_ts()  # one event-time clock for all partitions until they get their own
        return {} if newest is None else {("*", -1): newest}

    def partition_lag(self) -> dict[Partition, int]:
        return dict(self.lag)

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
        shards = self.query_shards()
        checkpoint = self.last_checkpoint
        source = self._source
        return EngineStats(
            transactions=self.transactions, alerts=self.alerts_raised, batches=self.batches,
            uptime_s=round(uptime, 3), throughput_tx_s=round(recent_rate, 1),
            average_tx_s=round(self.transactions / uptime, 1) if uptime > 0 else 0.0,
            latency_ms={name: percentile(latencies, q) for name, q in
                        (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))} if latencies else {},
            lag={f"{topic}[{partition}]": lag for (topic, partition), lag in sorted(self.lag.items())},
            shards=self.config.graph.shards, edges_stored=shards.edge_count() if shards is not None else 0,
            checkpoint_id=checkpoint.checkpoint_id if checkpoint else None,
            checkpoint_age_s=round(time.time() - checkpoint.created_at, 3) if checkpoint else None,
            newest_ts=self.newest_ts(),
            dead_letters=dict(source.dead_lettered) if source is not None else {})


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


def _show(positions: Mapping[Partition, int]) -> str:
    return ",".join(f"{topic}[{partition}]@{offset}" for (topic, partition), offset in sorted(positions.items()))

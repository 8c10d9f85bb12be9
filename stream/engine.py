"""The streaming engine: a coordinator over a source, an event-time clock, the graph and the sinks.

    Source.poll ──► micro-batch ──► EventClock.judge ──► EngineGraph.process ──► AlertDelivery ──► sinks
         ▲             (size or delay)   late/future/invalid        (apply + search)       (own thread)
         │                               └─► Source.dead_letter
         └── seek/commit ◄── aligned checkpoint: shard checkpoints + one record (CheckpointRecords)

Each seam is a small protocol of its own module: `Source`
(connectors/source.py: Kafka, files, the generator), `EventClock`
(event_time.py), `EngineGraph` (graph_port.py), `AlertDelivery` (delivery.py)
and `CheckpointRecords` (checkpoint.py). The engine's own work is in parts of
one job each, and the engine only opens them and sequences them:
`MicroBatches` (batching.py: poll, judge, hand to the graph, take the answer,
rewind when shards go back), `AlignedCheckpoints` (checkpointing.py: when a
record may be written, and the restore from it), `PartitionHandOver`
(handover.py: rebalances), `Eviction` (eviction.py), `PartitionLedger`
(partitions.py: per-partition positions and what was consumed before),
`EngineTally` (tally.py: the counts) and `EngineView` (engine_view.py: what
the query service and /metrics read); engine_setup.py turns the config into
sinks, the Kafka source and the checkpoint records.

A micro-batch closes on `batch_max_size` payments or `batch_max_delay_ms`
after its first one. Batches overlap with delivery: once a batch is searched
its alerts go to the delivery thread and the next batch is applied and
searched while they are handed to the sinks. With shard actors they overlap
with polling too: the graph works on a batch on a thread of its own while the
loop polls the next one, and keeps the consumer in its group if the graph takes
long (`MicroBatches.await_graph`), and partitions are read close to event-time order
(`EventClock.ahead`, `Source.hold`). The ring definition is in event time, so
which batch a payment lands in changes nothing about the rings.

Exactly once per alert id, through crashes:
1. An aligned checkpoint notes the positions between batches; its record is
   written once every alert raised before it has been handed to the sinks and
   the sinks made it durable (file fsynced, Kafka acknowledged, webhook outbox
   on disk) and each shard has checkpointed itself through the runtime (the
   waits run beside the loop, see `AlignedCheckpoints.take`); the record ties
   those checkpoint ids to the source positions and watermarks.
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

import gc
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ringwatch import runtime as rt
from ringwatch.connectors import RebalanceListener, Sink, Source
from ringwatch.graph import Alert
from ringwatch.runtime.backend import backend_name

from .batching import MicroBatches
from .checkpointing import AlignedCheckpoints, restore_graph
from .claims import AlertClaims
from .config import Config, describe, dump_sections
from .delivery import AlertDelivery
from .engine_setup import (
    claim_ttl_s,
    open_kafka_source,
    open_records,
    open_sinks,
    query_tls,
    query_token,
    shard_checkpoint_uri,
    watch_counters,
)
from .engine_view import EngineView
from .event_time import EventClock
from .eviction import Eviction
from .graph_port import EngineGraph
from .handover import PartitionHandOver
from .partitions import Partition, PartitionLedger
from .query import EngineStats, QueryHandler, QueryService
from .tally import EngineTally

logger = logging.getLogger(__name__)

# Opens the source with the engine as its rebalance listener; by default a `KafkaSource` from the config.
SourceFactory = Callable[[RebalanceListener], Source]


class Engine:
    """Runs the configured source → clock → graph → sinks pipeline until stopped.

    `run(stop_event)` returns after a final checkpoint once `stop_event` is
    set. `transactions` counts source records consumed (valid or not; a replay
    does not count again) and is part of every checkpoint, so it survives
    restarts. `ready` is set once the shards are restored and the query service
    (if any) listens at `query_address`; `view` is what the query service and
    /metrics read.

    `source_factory(listener)` replaces the configured Kafka consumer with any
    other `Source` (the demo streams the synthetic generator this way). The
    engine is the source's rebalance listener: it hands a rebalance to its
    `PartitionHandOver` under the loop's lock.
    """

    def __init__(self, config: Config, *, source_factory: SourceFactory | None = None):
        self.config = config.validate()
        # Stable across restarts (one engine per state directory): a restarted engine owns its alert claims.
        self.engine_id = f"{socket.gethostname()}:{Path(config.engine.state_dir).resolve()}"
        # On a ringwatch cluster the group's engines share one set of shards (on Ray each engine keeps its own).
        self.shared = bool(config.engine.address) and backend_name(config.engine.backend or None,
                                                                   os.environ) == "ringwatch"
        self._query_token = query_token(config) if config.service.query_port else ""
        self._query_tls = query_tls(config) if config.service.query_port else None
        self._source_factory = source_factory
        self.ready = threading.Event()
        self.failed = threading.Event()  # state may be half-applied: the last good checkpoint is what a restart uses
        self.query_address: str | None = None
        self.tally = EngineTally()
        self.metrics = self.tally.metrics
        self._lock = threading.RLock()  # the loop's: rebalances run under it too
        self._clock = EventClock(config.time_rules())
        self._ledger = PartitionLedger()
        self.view = EngineView(self.config, self.tally, self._clock, self.ready, self.failed)
        self._source: Source | None = None
        self._graph: EngineGraph | None = None
        self._delivery: AlertDelivery | None = None
        self._sinks: dict[str, Sink] = {}
        self._claims: AlertClaims | None = None
        self._batches: MicroBatches | None = None
        self._checkpoints: AlignedCheckpoints | None = None
        self._hand_over: PartitionHandOver | None = None

    @property
    def transactions(self) -> int:
        return self.tally.transactions

    @property
    def alerts_raised(self) -> int:
        return self.tally.alerts_raised

    @property
    def batches(self) -> int:
        return self.tally.batches

    def stats(self) -> EngineStats:
        return self.view.stats()

    def recent_alerts(self) -> list[Alert]:
        return self.tally.recent_alerts()

    # ---- lifecycle -------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event | None = None) -> None:
        stop = stop_event or threading.Event()
        config = self.config
        logger.info("engine starting id=%s %s", self.engine_id, describe(config))
        logger.debug("engine config=%s", json.dumps(dump_sections(config), sort_keys=True))
        self.view.started_at = time.time()
        started_runtime = not rt.is_initialized()
        if started_runtime:
            rt.init(address=config.engine.address or None, backend=config.engine.backend or None,
                    namespace=config.engine.namespace)
        metrics_server = None
        query_service = None
        try:
            self._open()
            if config.service.metrics_port:
                self.metrics.show(self.view)
                metrics_server = self.metrics.serve(config.service.metrics_port, config.service.metrics_host)
            if config.service.query_port:
                query_service = QueryService(QueryHandler(self.view), token=self._query_token,
                                             host=config.service.query_host, port=config.service.query_port,
                                             tls=self._query_tls)
                self.query_address = query_service.start().address
            self.ready.set()
            _freeze_heap()
            self._loop(stop)
            with self._lock:
                self._checkpoints.take("stop")
        except BaseException:
            self.failed.set()
            raise
        finally:
            if query_service is not None:
                query_service.stop()
            self._close(metrics_server, started_runtime)
        logger.info("engine stopped transactions=%d alerts=%d", self.tally.transactions, self.tally.alerts_raised)

    def _open(self) -> None:
        """Open the parts in dependency order: records, sinks and delivery, the restored graph, the source."""
        config, view = self.config, self.view
        records = open_records(config, shared=self.shared, engine_id=self.engine_id)
        self._sinks = open_sinks(config)
        view.history = self._sinks["history"]
        if self.shared:
            self._claims = AlertClaims(config.source.group, self.engine_id, ttl_s=claim_ttl_s(config))
        self._delivery = delivery = AlertDelivery(self._sinks, self._claims)
        self._graph, restored = restore_graph(
            config, records, checkpoint_uri=shard_checkpoint_uri(config),
            shared_as=f"ringwatch/{config.source.group}" if self.shared else None, engine_id=self.engine_id,
            ledger=self._ledger, clock=self._clock, tally=self.tally)
        view.graph = graph = self._graph
        source = self._source_factory(self) if self._source_factory is not None else open_kafka_source(config, self)
        view.source = self._source = source
        eviction = Eviction(self._clock, graph, config.graph.window, config.time.allowed_lateness, self.shared)
        self._batches = batches = MicroBatches(
            config.engine, lock=self._lock, source=source, graph=graph, clock=self._clock, ledger=self._ledger,
            tally=self.tally, delivery=delivery, eviction=eviction, records=records,
            graph_thread=config.graph.placement != "in-process")
        self._checkpoints = view.checkpoints = AlignedCheckpoints(
            batches=batches, records=records, graph=graph, source=source, ledger=self._ledger, clock=self._clock,
            tally=self.tally, delivery=delivery, claims=self._claims, eviction=eviction,
            engine_id=self.engine_id, placement=config.graph.placement, failed=self.failed, last=restored)
        self._hand_over = PartitionHandOver(
            batches=batches, source=source, ledger=self._ledger, clock=self._clock, delivery=delivery,
            claims=self._claims, records=records, shared=self.shared, failed=self.failed)
        watch_counters(self.metrics, self.tally, self._sinks, delivery)

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
        if self._batches is not None:
            self._batches.close()
        if self._checkpoints is not None:
            self._checkpoints.close()
        if self._graph is not None:
            self._graph.close()
        if started_runtime:
            rt.shutdown()

    # ---- the loop --------------------------------------------------------------------------------

    def _loop(self, stop: threading.Event) -> None:
        """Fill a batch (with shard actors: while the graph works on the one before), take the graph's answer,
        start the next; between batches, move the checkpoint being taken on, and start the next one when the
        interval has passed and none is being taken (one that took longer than the interval is followed at once)."""
        batches, checkpoints = self._batches, self._checkpoints
        interval_s = self.config.engine.checkpoint_interval / 1000
        next_checkpoint = time.monotonic() + interval_s
        while not stop.is_set():
            batches.fill(stop)
            batches.await_graph()
            with self._lock:
                batches.finish()
                checkpoints.finish(block=False)
                if time.monotonic() >= next_checkpoint and checkpoints.in_flight is None:
                    checkpoints.take("interval", wait=False)
                    next_checkpoint = time.monotonic() + interval_s
                batches.start()

    # ---- rebalances (the source's listener) ------------------------------------------------------

    def on_revoke(self, partitions: list[Partition]) -> None:
        with self._lock:
            if self._hand_over is not None:
                self._hand_over.revoke(partitions)
        logger.info("partitions revoked %s", partitions)

    def on_assign(self, partitions: list[Partition]) -> None:
        with self._lock:
            self._hand_over.assign(partitions)


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

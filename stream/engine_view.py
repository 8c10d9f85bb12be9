"""What the query service and /metrics read of a running engine, from their own threads.

The view reads counts, watermarks, the live graph and the last checkpoint; it
never takes the loop's lock, so queries and scrapes do not pause ingestion.
It is the engine's `QueryableEngine` (query/service.py) and `EngineFigures`
(metrics.py). Parts the engine opens in `run` (graph, source, history, the
checkpoints) are attached as they open; before that the view answers as a
starting engine.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ringwatch.connectors import Source
from ringwatch.graph import Alert, RingGraph, SearchOptions

from .checkpoint import Checkpoint
from .checkpointing import AlignedCheckpoints
from .config import Config
from .event_time import EventClock
from .graph_port import EngineGraph
from .history import AlertHistory
from .partitions import Partition
from .query import EngineStats, Health
from .tally import LATENCY_SAMPLE, EngineTally


@dataclass
class EngineView:
    """Read-only figures of one engine; `ready` and `failed` are the engine's own events."""

    config: Config
    tally: EngineTally
    clock: EventClock
    ready: threading.Event
    failed: threading.Event
    started_at: float = field(default_factory=time.time)
    graph: EngineGraph | None = None
    source: Source | None = None
    history: AlertHistory | None = None
    checkpoints: AlignedCheckpoints | None = None

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        """The newest record written or restored."""
        return self.checkpoints.last if self.checkpoints is not None else None

    # ---- the query service (query.QueryableEngine) ----

    def query_graph(self) -> RingGraph | None:
        return self.graph.query_graph() if self.graph is not None and self.ready.is_set() else None

    def search_options(self) -> SearchOptions:
        return self.config.search_options()

    def newest_ts(self) -> int | None:
        """Event time of the newest payment accepted (the highest partition watermark)."""
        marks = [mark for mark in self.clock.watermarks().values() if mark is not None]
        return max(marks) if marks else None

    def alert_history(self) -> AlertHistory | None:
        return self.history

    def recent_alerts(self) -> list[Alert]:
        return self.tally.recent_alerts()

    def health(self) -> Health:
        status = "failed" if self.failed.is_set() else "ok" if self.ready.is_set() else "starting"
        return Health(status, round(time.time() - self.started_at, 3), self.tally.transactions,
                      self.tally.alerts_raised)

    def stats(self) -> EngineStats:
        tally = self.tally
        uptime = time.time() - self.started_at
        latencies = sorted(alert.latency_ms for alert in tally.recent_alerts()[-LATENCY_SAMPLE:])
        shards = self.query_graph()
        checkpoint = self.last_checkpoint
        return EngineStats(
            transactions=tally.transactions, alerts=tally.alerts_raised, batches=tally.batches,
            uptime_s=round(uptime, 3), throughput_tx_s=round(tally.throughput(), 1),
            average_tx_s=round(tally.transactions / uptime, 1) if uptime > 0 else 0.0,
            latency_ms={name: percentile(latencies, q) for name, q in
                        (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))} if latencies else {},
            lag={f"{topic}[{partition}]": lag for (topic, partition), lag in sorted(self.partition_lag().items())},
            shards=self.graph.num_shards if self.graph is not None else self.config.graph.shards,
            edges_stored=shards.edge_count() if shards is not None else 0,
            checkpoint_id=checkpoint.epoch if checkpoint else None,
            checkpoint_age_s=round(time.time() - checkpoint.created_at, 3) if checkpoint else None,
            newest_ts=self.newest_ts(),
            dead_letters=dict(tally.dead_lettered))

    # ---- /metrics at each scrape (metrics.EngineFigures) ----

    def graph_edges(self) -> int | None:
        shards = self.query_graph()
        return shards.edge_count() if shards is not None else None

    def searches_cut_short(self) -> int:
        return self.tally.cut_short

    def partition_watermarks(self) -> dict[Partition, int]:
        marks = {partition: mark for partition, mark in self.clock.watermarks().items() if mark is not None}
        if self.clock.low_watermark is not None:
            marks[("*", -1)] = self.clock.low_watermark
        return marks

    def partition_lag(self) -> dict[Partition, int]:
        return self.source.lag() if self.source is not None else {}


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]

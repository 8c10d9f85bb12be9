"""The engine's Prometheus metrics, on a registry of its own so two engines in one process never mix.

Besides what the engine counts as it goes (payments, batches, alerts, late
payments, latency, checkpoints), each scrape reads live figures through the small
`EngineFigures` protocol — graph size, searches cut short, per-partition
watermark and lag — and the process's own (CPU, memory, open files, GC
collections, Python version) from prometheus_client's standard collectors.
`/metrics` listens on 127.0.0.1 unless `service.metrics_host` says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .config import ConfigError

Partition = tuple[str, int]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _CountersOf(Collector):
    """Exposes counters that live elsewhere (the source's dead letters, each sink's outcomes) at scrape time."""

    def __init__(self, name: str, documentation: str, labels: list[str],
                 read: Callable[[], Mapping[tuple[str, ...], float]]):
        self.name, self.documentation, self.labels, self.read = name, documentation, labels, read

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in sorted(self.read().items()):
            family.add_metric(list(labels), value)
        yield family


class OutboxState(Protocol):
    """A sink with an outbox (`connectors.WebhookSink`): read at each scrape, from the metrics thread."""

    @property
    def pending(self) -> int: ...

    @property
    def endpoint_down(self) -> bool: ...


class _OutboxCollector(Collector):
    def __init__(self, sink: str, outbox: OutboxState):
        self.sink, self.outbox = sink, outbox

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pending = GaugeMetricFamily("ringwatch_sink_pending", "Alerts in a sink's outbox, not yet acknowledged",
                                    labels=["sink"])
        pending.add_metric([self.sink], self.outbox.pending)
        yield pending
        down = GaugeMetricFamily("ringwatch_sink_endpoint_down", "1 while the sink's endpoint is reported down "
                                 "(alerts wait in the outbox)", labels=["sink"])
        down.add_metric([self.sink], 1.0 if self.outbox.endpoint_down else 0.0)
        yield down


class EngineFigures(Protocol):
    """What the engine shows at each scrape; called from the metrics thread, so each must be cheap and safe."""

    def graph_edges(self) -> int | None:
        """Payments stored in the graph now (None before the shards are up)."""
        ...

    def searches_cut_short(self) -> int:
        """Ring searches stopped early by an opt-in cut (hub guard, rings-per-payment cap), since start."""
        ...

    def partition_watermarks(self) -> Mapping[Partition, int]:
        """Event-time watermark (epoch ms) per partition held; the engine's low watermark under ("*", -1)."""
        ...

    def partition_lag(self) -> Mapping[Partition, int]:
        """Records behind the log end per partition held, as of the source's last poll (`Source.lag()`)."""
        ...


class _FiguresCollector(Collector):
    def __init__(self, figures: EngineFigures):
        self.figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        figures = self.figures
        edges = figures.graph_edges()
        if edges is not None:
            yield GaugeMetricFamily("ringwatch_graph_edges", "Payments stored in the graph (per holding shard)",
                                    value=edges)
        yield CounterMetricFamily("ringwatch_searches_cut_short", "Ring searches stopped early by an opt-in cut "
                                  "(hub guard, rings-per-payment cap)", value=figures.searches_cut_short())
        for name, documentation, read in (
                ("ringwatch_watermark_ms", "Event-time watermark, epoch ms; partition -1 is the low watermark",
                 figures.partition_watermarks),
                ("ringwatch_consumer_lag", "Records behind the log end", figures.partition_lag)):
            family = GaugeMetricFamily(name, documentation, labels=["topic", "partition"])
            for (topic, partition), value in sorted(read().items()):
                family.add_metric([topic, str(partition)], value)
            yield family


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.transactions = Counter("ringwatch_transactions_consumed", "Source records consumed (valid or not)",
                                    registry=r)
        self.batches = Counter("ringwatch_batches", "Micro-batches processed", registry=r)
        self.alerts_raised = Counter("ringwatch_alerts_raised", "Alerts raised by the detector", registry=r)
        self.late_payments = Counter("ringwatch_late_payments", "Payments older (ts, tx_id) than the newest the "
                                     "graph held when they were applied: searched on the late path", registry=r)
        self.latency = Histogram("ringwatch_ingest_to_alert_seconds", "From a payment's arrival to its alert",
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.checkpoint_duration = Histogram("ringwatch_checkpoint_duration_seconds",
                                             "Aligned checkpoint: snapshot, write, commit", registry=r)
        self.checkpoints = Counter("ringwatch_checkpoints", "Checkpoints completed", registry=r)

    def watch(self, name: str, documentation: str, labels: list[str],
              read: Callable[[], Mapping[tuple[str, ...], float]]) -> None:
        """Publish counters kept by another object under `name`, read on each scrape."""
        self.registry.register(_CountersOf(name, documentation, labels, read))

    def watch_outbox(self, sink: str, outbox: OutboxState) -> None:
        """Publish `outbox`'s depth and endpoint state as `ringwatch_sink_pending` / `_endpoint_down{sink=...}`."""
        self.registry.register(_OutboxCollector(sink, outbox))

    def show(self, figures: EngineFigures) -> None:
        """Read `figures` at every scrape."""
        self.registry.register(_FiguresCollector(figures))

    def serve(self, port: int, address: str = "127.0.0.1"):
        """Serve /metrics on `port`; returns the server so the engine can shut it down."""
        try:
            server, _thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"service.metrics_port: cannot listen on {address}:{port} ({exc.strerror or exc}); "
                              f"is another process using the port?") from None
        return server

"""The engine's Prometheus metrics, on a registry of its own so two engines in one process never mix."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

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


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.transactions = Counter("ringwatch_transactions_consumed", "Source records consumed (valid or not)",
                                    registry=r)
        self.batches = Counter("ringwatch_batches", "Micro-batches processed", registry=r)
        self.alerts_raised = Counter("ringwatch_alerts_raised", "Alerts raised by the detector", registry=r)
        self.lag = Gauge("ringwatch_consumer_lag", "Messages behind the log end", ["topic", "partition"],
                         registry=r)
        self.latency = Histogram("ringwatch_ingest_to_alert_seconds", "From a payment's arrival to its alert",
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.checkpoint_duration = Histogram("ringwatch_checkpoint_duration_seconds",
                                             "Aligned checkpoint: snapshot, write, commit", registry=r)
        self.checkpoints = Counter("ringwatch_checkpoints", "Checkpoints completed", registry=r)

    def watch(self, name: str, documentation: str, labels: list[str],
              read: Callable[[], Mapping[tuple[str, ...], float]]) -> None:
        """Publish counters kept by another object under `name`, read on each scrape."""
        self.registry.register(_CountersOf(name, documentation, labels, read))

    def set_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        for (topic, partition), lag in lags.items():
            self.lag.labels(topic, str(partition)).set(lag)

    def serve(self, port: int, address: str = "0.0.0.0"):
        """Serve /metrics on `port`; returns the server so the engine can shut it down."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server

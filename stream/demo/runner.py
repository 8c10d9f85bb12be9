"""`ringwatch demo`: the whole engine on a laptop in under a minute, scored against the truth.

The synthetic generator's stream — background payments plus injected
laundering rings — goes through the real `Engine`: a local runtime with worker
processes, `GraphShard` actors, parallel search tasks, micro-batches, aligned
checkpoints and the JSON-lines sink. By default the stream is fed straight to
the engine (`GeneratorSource` is a `Source`), so the demo needs no Kafka, Redis or config;
with `kafka=True` it goes through a Tansu broker started for the occasion, the
way `ringwatch run` consumes in production. The result is scored against the
injected rings: recall (injected rings found) and precision (alerts that are
injected rings; the rest are genuine cycles of the background traffic).
"""

from __future__ import annotations

import json
import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ringwatch.connectors import (
    EmbeddedBroker,
    GeneratorSource,
    InjectedRing,
    RebalanceListener,
    SyntheticConfig,
    produce_transactions,
)
from ringwatch.graph import Alert
from ringwatch.graph.warmup import load_compiled_code

from ..config import Config, EngineConfig, GraphConfig, ServiceConfig, SinksConfig, SourceConfig
from ..engine import Engine
from ..engine_view import percentile
from ..progress import Progress
from .picture import render_rings_html

logger = logging.getLogger(__name__)

STATUS_POLL_S = 0.02  # how often the driver looks at the engine: the streaming time is measured to this


@dataclass
class DemoReport:
    """What the demo found and how it scored against the injected rings."""

    transactions: int
    elapsed_s: float
    alerts: list[Alert]
    injected: list[InjectedRing]
    found: list[InjectedRing]
    alerts_file: Path
    picture: Path
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def recall(self) -> float:
        return len(self.found) / len(self.injected) if self.injected else 1.0

    @property
    def true_alerts(self) -> int:
        truth = {(ring.tx_ids[-1], ring.accounts) for ring in self.injected}
        return sum(1 for alert in self.alerts if (alert.trigger_tx_id, alert.accounts) in truth)

    @property
    def precision(self) -> float:
        return self.true_alerts / len(self.alerts) if self.alerts else 1.0


def run_demo(out_dir: str | Path = ".", *, transactions: int = 20_000, accounts: int = 4_000, rings: int = 20,
             seed: int = 7, shards: int = 2, kafka: bool = False, query_port: int = 0, backend: str = "",
             address: str = "",
             on_progress: Callable[[Engine], None] | None = None,
             on_streamed: Callable[[Engine], None] | None = None, serve: threading.Event | None = None
             ) -> DemoReport:
    """Stream a synthetic payment stream through the engine; write `alerts.jsonl` and `rings.html` in `out_dir`.

    Every argument is checked before any file is touched (`InvalidSyntheticConfigError`,
    `ConfigError`). `on_progress(engine)` is called about twice a second while the
    engine streams, `on_streamed(engine)` once when the whole stream is in. With
    `query_port`, the engine serves queries (query token from RINGWATCH_QUERY_TOKEN); with
    `serve`, it keeps serving after the stream ends until that event is set.
    `DemoReport.elapsed_s` is the streaming time only: from the engine being ready
    to the last payment processed, not start-up and not the time spent serving.
    `backend`/`address` choose the runtime (`engine.backend`, `engine.address`): "ray" runs on Ray.
    """
    source = GeneratorSource(SyntheticConfig(n_transactions=transactions, n_accounts=accounts, n_rings=rings,
                                             seed=seed))
    stream = source.stream
    topic = "synthetic" if not kafka else f"demo-payments-{secrets.token_hex(3)}"
    out = Path(out_dir)
    alerts_file, picture = out / "alerts.jsonl", out / "rings.html"
    config = Config(
        source=SourceConfig(topics=[topic], group=f"{topic}-engine"),
        graph=GraphConfig(shards=shards),
        engine=EngineConfig(backend=backend, address=address),
        sinks=SinksConfig(alerts_file=str(alerts_file)),
        service=ServiceConfig(query_port=query_port),
    ).validate()
    load_compiled_code(config.graph.placement)  # before the runtime's workers start: they then load numba's cache
    out.mkdir(parents=True, exist_ok=True)
    alerts_file.unlink(missing_ok=True)  # the JSONL sink skips ids already in its file: start afresh
    with tempfile.TemporaryDirectory(prefix="ringwatch-demo-") as state_dir:
        config.engine.state_dir = state_dir
        if kafka:
            with EmbeddedBroker(workdir=Path(state_dir)) as broker:
                _create_topic(broker.bootstrap, topic)
                produce_transactions(broker.bootstrap, topic, stream.iter_transactions())
                config.source.kafka_bootstrap = broker.bootstrap
                engine = Engine(config)
                elapsed = _drive(engine, lambda: engine.transactions >= len(stream), on_progress, on_streamed, serve)
        else:
            def open_source(listener: RebalanceListener) -> GeneratorSource:
                source.listener = listener
                return source

            engine = Engine(config, source_factory=open_source)
            elapsed = _drive(engine, lambda: source.exhausted, on_progress, on_streamed, serve)
    alerts = [Alert.from_dict(json.loads(line)) for line in alerts_file.read_text().splitlines() if line.strip()]
    found_keys = {(alert.trigger_tx_id, alert.accounts) for alert in alerts}
    found = [ring for ring in stream.rings if (ring.tx_ids[-1], ring.accounts) in found_keys]
    render_rings_html(alerts, {tx.tx_id: tx for tx in stream.transactions}, picture,
                      title=f"ringwatch demo: {len(alerts)} rings in {len(stream):,} payments")
    latencies = sorted(alert.latency_ms for alert in alerts)
    percentiles = {name: percentile(latencies, q) for name, q in (("p50", 0.5), ("p99", 0.99))} if latencies else {}
    return DemoReport(engine.transactions, elapsed, alerts, stream.rings, found, alerts_file, picture, percentiles)


def _drive(engine: Engine, done: Callable[[], bool], on_progress: Callable[[Engine], None] | None,
           on_streamed: Callable[[Engine], None] | None, serve: threading.Event | None) -> float:
    """Run the engine on a thread until `done()` (then until `serve` is set, if given); re-raise its failure.

    Returns the streaming time in seconds: from the engine being ready until `done()`.
    """
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            engine.run(stop)
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=run, name="ringwatch-demo-engine", daemon=True)
    thread.start()
    streamed_s = 0.0
    try:
        while thread.is_alive() and not engine.ready.wait(STATUS_POLL_S):
            pass
        began = time.monotonic()
        while thread.is_alive() and not done():
            if on_progress is not None:
                on_progress(engine)
            thread.join(STATUS_POLL_S)
        streamed_s = time.monotonic() - began
        if on_streamed is not None and thread.is_alive():
            on_streamed(engine)
        if serve is not None and thread.is_alive():
            serve.wait()
    finally:
        stop.set()
        thread.join()
    if failure:
        raise failure[0]
    return streamed_s


def _create_topic(bootstrap: str, topic: str) -> None:
    """One partition: the demo's rings span accounts, so their payments must stay in one stream order."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()


def progress_reporter(label: str = "demo") -> tuple[Progress, Callable[[Engine], None]]:
    """A live line on stderr (tx/s, alerts, latency) fed from the running engine."""
    progress = Progress(label)

    def report(engine: Engine) -> None:
        recent = sorted(alert.latency_ms for alert in engine.recent_alerts()[-200:])
        latency = f"{recent[len(recent) // 2]:.0f} ms" if recent else "-"
        progress.update(engine.transactions, alerts=engine.alerts_raised, latency_p50=latency)

    return progress, report

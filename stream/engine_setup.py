"""The engine's parts as its config describes them: sinks, the Kafka source, checkpoint records, query credentials.

Kept apart from the engine so the engine only sequences parts: what a config
field means for a part is decided here, once, and a test or the demo can hand
the engine another source (`Engine(source_factory=...)`) without touching the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ringwatch.connectors import JsonlSink, KafkaSink, KafkaSource, RebalanceListener, Sink, WebhookSink
from ringwatch.runtime.checkpoints import default_uri, open_store
from ringwatch.runtime.cli import read_query_token
from ringwatch.runtime.errors import TokenMissingError
from ringwatch.runtime.tls import TlsConfigError, TlsFiles

from .checkpoint import CheckpointRecords, FileCheckpointRecords, GcsCheckpointRecords
from .config import Config, ConfigError
from .delivery import AlertDelivery
from .history import FILE_NAME as HISTORY_FILE
from .history import AlertHistory
from .metrics import EngineMetrics
from .tally import EngineTally

# The consumer's fetch_max_wait_ms is the batch delay, but at least this: at 1 ms a plain consumer on Tansu
# read a live 20k/s stream slower than it was produced (93k-99k of 160k within 20 s of the last, twice); a
# broker that answers as soon as it has data (Apache Kafka) loses nothing by the floor.
MIN_FETCH_WAIT_MS = 5
PROGRESS_TTL_INTERVALS = 12  # an engine's published progress expires after this many checkpoint intervals
CLAIM_MIN_TTL_MS = 60_000


def open_sinks(config: Config) -> dict[str, Sink]:
    """The configured sinks, and always the alert history the query service reads (under "history")."""
    sinks_config, state_dir = config.sinks, Path(config.engine.state_dir)
    sinks: dict[str, Sink] = {}
    if sinks_config.webhook_url:
        sinks["webhook"] = WebhookSink(
            sinks_config.webhook_url, sinks_config.webhook_secret, state_dir / "webhook",
            timeout_s=sinks_config.webhook_timeout / 1000, max_attempts=sinks_config.webhook_max_attempts,
            backoff_initial_s=sinks_config.webhook_backoff_initial / 1000,
            backoff_max_s=sinks_config.webhook_backoff_max / 1000)
    if sinks_config.alerts_topic:
        sinks["kafka"] = KafkaSink(config.source.kafka_bootstrap, sinks_config.alerts_topic,
                                   state_dir / "kafka-sink", settings=config.kafka_settings())
    if sinks_config.alerts_file:
        sinks["file"] = JsonlSink(sinks_config.alerts_file)
    sinks["history"] = AlertHistory(state_dir / HISTORY_FILE, keep=config.service.query_alerts_kept)
    return sinks


def open_kafka_source(config: Config, listener: RebalanceListener) -> KafkaSource:
    source_config = config.source
    return KafkaSource(source_config.kafka_bootstrap, source_config.topics, source_config.group,
                       dlq_topic=source_config.dlq_topic or None,
                       max_message_bytes=source_config.max_message_bytes, listener=listener,
                       fetch_max_wait_ms=max(MIN_FETCH_WAIT_MS, config.engine.batch_max_delay_ms),
                       settings=config.kafka_settings(), mapping=config.field_mapping())


def shard_checkpoint_uri(config: Config) -> str:
    """Where shards checkpoint: the cluster's store, or (local runtime) a folder under `state_dir`."""
    if config.engine.address:
        return default_uri()
    return f"file://{Path(config.engine.state_dir).resolve() / 'shards'}"


def open_records(config: Config, *, shared: bool, engine_id: str) -> CheckpointRecords:
    """Aligned checkpoint records: in the GCS for engines sharing shards, else files under `state_dir`."""
    engine_config = config.engine
    shards = open_store(shard_checkpoint_uri(config))  # records hold their shard checkpoints there
    if shared:
        return GcsCheckpointRecords(config.source.group, engine_config.keep_checkpoints,
                                    progress_ttl_s=max(PROGRESS_TTL_INTERVALS * engine_config.checkpoint_interval,
                                                       CLAIM_MIN_TTL_MS) / 1000, shards=shards, holder=engine_id)
    return FileCheckpointRecords(engine_config.state_dir, engine_config.keep_checkpoints, shards=shards,
                                 holder=engine_id)


def claim_ttl_s(config: Config) -> float:
    """How long an alert claim outlives its engine: as long as a replay could raise the alert again."""
    return max(config.graph.window + config.time.allowed_lateness, CLAIM_MIN_TTL_MS) / 1000


def query_token(config: Config) -> str:
    """The read-only query token clients must prove: from a file, RINGWATCH_QUERY_TOKEN, or derived from
    RINGWATCH_TOKEN (never the cluster token itself)."""
    try:
        return read_query_token(config.service.query_token_file or None)
    except (TokenMissingError, OSError) as exc:
        raise ConfigError(f"service.query_port: the query service needs a query token ({exc}); set "
                          "RINGWATCH_QUERY_TOKEN, service.query_token_file or RINGWATCH_TOKEN") from None


def query_tls(config: Config) -> TlsFiles | None:
    service = config.service
    try:
        return TlsFiles.from_options(service.query_tls_cert, service.query_tls_key, service.query_tls_ca,
                                     prefix="service.query_tls_")
    except TlsConfigError as exc:
        raise ConfigError(str(exc)) from None


def watch_counters(metrics: EngineMetrics, tally: EngineTally, sinks: Mapping[str, Sink],
                   delivery: AlertDelivery) -> None:
    """Publish counters kept outside the metrics (dead letters by reason, alerts by sink and outcome)."""
    metrics.watch("ringwatch_dead_letters", "Records sent to the dead-letter destination, by reason",
                  ["reason"], lambda: {(reason,): n for reason, n in tally.dead_lettered.items()})

    def sink_outcomes() -> dict[tuple[str, str], float]:
        outcomes = {(name, "handed"): float(n) for name, n in delivery.handed.items()}
        for name, sink in sinks.items():
            for outcome, n in getattr(sink, "outcomes", {}).items():
                outcomes[(name, outcome)] = float(n)
        return outcomes

    metrics.watch("ringwatch_alerts", "Alerts by sink and outcome", ["sink", "outcome"], sink_outcomes)
    webhook = sinks.get("webhook")
    if isinstance(webhook, WebhookSink):
        metrics.watch_outbox("webhook", webhook)

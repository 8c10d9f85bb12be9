"""The engine's configuration: one schema, read from TOML < `RINGWATCH_*` environment < CLI flags.

Every setting is declared once, in the dataclasses below, with its type, its
default and its help text; the TOML reader, the environment reader, the
`ringwatch run` flags and docs/configuration.md are all derived from that
declaration, so they cannot drift apart. A value that does not fit — an
unknown key, a wrong type, a bad duration — is a `ConfigError` naming the key
and where it came from, raised before the engine starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ringwatch.connectors.mapping import FieldMapping, InvalidMappingError, load_schema
from ringwatch.connectors.webhook_client import InvalidWebhookConfigError, check_url
from ringwatch.graph import (
    InvalidDurationError,
    InvalidSearchOptionError,
    InvalidTransactionError,
    SearchOptions,
    format_duration,
    parse_amount,
    parse_duration,
)
from ringwatch.graph.model import DEFAULT_MAX_AMOUNT
from ringwatch.runtime.backend import BACKENDS
from ringwatch.runtime.errors import RingwatchError

from . import logs
from .time_rules import TimeRules

if TYPE_CHECKING:
    from ringwatch.connectors.kafka_settings import KafkaSettings

ENV_PREFIX = "RINGWATCH_"
# Documented RINGWATCH_* variables that are not config keys: read by the runtime, every command or the
# tests. `run` accepts them; any other RINGWATCH_* variable is refused, to catch typos. Listed in
# docs/configuration.md; a test checks that every RINGWATCH_* name the docs mention is accepted.
OTHER_ENVIRONMENT = {
    "RINGWATCH_TOKEN": "the cluster token: runtime nodes and drivers (or --token-file); never sent anywhere",
    "RINGWATCH_QUERY_TOKEN": "the read-only query token the query service checks and query clients sign with "
                             "(or service.query_token_file / --token-file); default: derived from RINGWATCH_TOKEN",
    "RINGWATCH_TLS_CERT": "certificate for node gRPC with TLS: drivers such as `run --address` (nodes: --tls-cert)",
    "RINGWATCH_TLS_KEY": "its private key (nodes: --tls-key)",
    "RINGWATCH_TLS_CA": "the CA every certificate of the cluster is signed by (nodes: --tls-ca)",
    "RINGWATCH_CHECKPOINT_URI": "where actor checkpoints are written (file:///shared/dir or redis://...); every "
                                "node must reach it",
    "RINGWATCH_LINEAGE": "0 turns the runtime's lineage recording off (lost objects cannot be rebuilt); for "
                         "benchmarks",
    "RINGWATCH_LOG_FORMAT": "text or json: log format of every ringwatch command (--log-format wins)",
    "RINGWATCH_TEST_REDIS_URL": "tests only: use this Redis instead of starting one",
    "RINGWATCH_TEST_KAFKA_BOOTSTRAP": "tests only: use this Kafka instead of starting Tansu",
}
# Internal hand-over between a runtime node and the worker processes it starts.
FOREIGN_ENV_PREFIXES = ("RINGWATCH_WORKER_",)


class ConfigError(RingwatchError, ValueError):
    """A configuration value that cannot be used; the message names the key and its source."""


def _setting(default: Any, help: str, *, kind: str = "str", flag: str | None = None) -> Any:
    """A config field: `kind` is str, int, duration, list, optional-int, optional-float, fields or secret;
    `flag` overrides the CLI name.

    A `secret` is never taken from the command line (it would show in `ps`): its flag is refused, and it
    comes from its environment variable, the TOML file or the file named by the `<key>_file` setting
    declared beside it.
    """
    metadata = {"help": help, "kind": kind, "flag": flag}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class SourceConfig:
    """Where payments come from: a Kafka consumer group."""

    kafka_bootstrap: str = _setting("localhost:9092", "Kafka bootstrap address, HOST:PORT")
    topics: list = _setting([], "topic to consume (repeat the flag for several)", kind="list", flag="topic")
    group: str = _setting("ringwatch", "Kafka consumer group")
    dlq_topic: str = _setting("", "dead-letter topic for rejected messages (default: <topic>.dlq)")
    max_message_bytes: int = _setting(1_048_576, "messages larger than this go to the dead-letter topic",
                                      kind="int")
    fields: dict = _setting({}, "input mapping OUT=PATH, e.g. src=payer.iban (repeat the flag; see Input "
                            "mapping below)", kind="fields", flag="field")
    schema_file: str = _setting("", "JSON Schema every message must pass (before mapping); failures are "
                                "dead-lettered as invalid:schema")
    max_amount: str = _setting(str(DEFAULT_MAX_AMOUNT), "ceiling on one payment's amount (exact decimal, at "
                               "most the default); a payment above it is dead-lettered as invalid:amount")


@dataclass
class GraphConfig:
    """What counts as a ring, and how the graph is split."""

    shards: int = _setting(2, "number of GraphShard actors", kind="int")
    placement: str = _setting("actors", "actors: the shards are runtime actors (checkpointed by the runtime, "
                              "shared by the engines of a group on a cluster); in-process: the whole graph in the "
                              "engine's process, one compiled search per batch (fastest; one engine, no cluster)")
    max_hops: int = _setting(SearchOptions.max_hops, "longest ring, in payments", kind="int")
    window: int = _setting(SearchOptions.window_ms, "time window of a ring (500ms, 90s, 48h, 7d)", kind="duration")
    order: str = _setting("strict", "strict: payments of a ring in time order; none: only inside the window")
    max_rings_per_tx: int | None = _setting(SearchOptions.max_rings_per_tx,
                                            "cap on rings reported per payment ('none' = no cap)",
                                            kind="optional-int")
    max_degree: int | None = _setting(SearchOptions.max_degree,
                                      "hub guard: accounts with more payments in the window are not expanded "
                                      "('none' = off)", kind="optional-int")
    min_amount: float | None = _setting(SearchOptions.min_amount,
                                        "payments below this amount are not part of any ring ('none' = all)",
                                        kind="optional-float")
    min_ratio: float | None = _setting(SearchOptions.min_ratio,
                                       "flow rule: each hop's amount at least this times the previous hop's "
                                       "('none' = off; give max_ratio too)", kind="optional-float")
    max_ratio: float | None = _setting(SearchOptions.max_ratio,
                                       "flow rule: each hop's amount at most this times the previous hop's "
                                       "('none' = off; give min_ratio too)", kind="optional-float")


@dataclass
class TimeConfig:
    """Event time: per-partition watermarks, the low watermark, and which payments are refused."""

    allowed_lateness: int = _setting(3_600_000, "payments older than the low watermark minus this are "
                                     "dead-lettered as late; edges are kept this much longer than the window",
                                     kind="duration")
    max_clock_skew: int = _setting(300_000, "payments dated more than this ahead of the wall clock are "
                                   "dead-lettered as future (they move no watermark)", kind="duration")
    idle_timeout: int = _setting(30_000, "a partition caught up (nothing to read) this long stops holding the "
                                 "low watermark back", kind="duration")
    max_partition_drift: int = _setting(1_000, "with shard actors, a partition read this far (event time) ahead "
                                        "of the slowest one with a backlog waits until it catches up: payments "
                                        "reach the graph close to time order, which is cheaper to search (rings do "
                                        "not change)", kind="duration")


@dataclass
class EngineConfig:
    """Micro-batching, checkpoints and where state lives."""

    state_dir: str = _setting("./ringwatch-state", "checkpoints and sink outboxes")
    backend: str = _setting("", "runtime the shard actors and search tasks run on: ringwatch (its own) or ray (a "
                            "Ray cluster); empty = RINGWATCH_BACKEND, else ringwatch")
    address: str = _setting("", "cluster to join: redis://HOST:PORT (ringwatch), auto or ray://HOST:10001 (ray); "
                            "empty = start a local runtime")
    namespace: str = _setting("default", "the cluster's GCS namespace (several clusters can share one Redis)")
    batch_max_size: int = _setting(8_192, "the largest micro-batch: under a backlog batches grow from 256 toward "
                                   "it while each takes well under a second (a live stream's close on the delay "
                                   "first)", kind="int")
    batch_max_delay_ms: int = _setting(5, "... or this many milliseconds after its first payment", kind="int")
    checkpoint_interval: int = _setting(5_000, "time between aligned checkpoints", kind="duration")
    keep_checkpoints: int = _setting(2, "complete checkpoints kept on disk", kind="int")


@dataclass
class SinksConfig:
    """Where alerts go: any combination of a webhook, a Kafka topic and a JSON-lines file."""

    webhook_url: str = _setting("", "POST alerts here (Standard Webhooks signatures)")
    webhook_secret: str = _setting("", "whsec_... signing secret", kind="secret")
    webhook_secret_file: str = _setting("", "file holding the webhook signing secret")
    webhook_timeout: int = _setting(10_000, "timeout of one webhook attempt", kind="duration")
    webhook_max_attempts: int = _setting(8, "failed attempts in a row before the endpoint is reported down (alerts "
                                         "are held in order and sent once it answers)", kind="int")
    webhook_backoff_initial: int = _setting(500, "first retry delay (doubles, with jitter)", kind="duration")
    webhook_backoff_max: int = _setting(60_000, "longest retry delay", kind="duration")
    alerts_topic: str = _setting("", "Kafka topic for alerts, keyed by alert id")
    alerts_file: str = _setting("", "append alerts to this JSON-lines file")


@dataclass
class ServiceConfig:
    """Network endpoints of the running engine."""

    query_port: int = _setting(0, "port of the gRPC query service (0 = off); clients sign calls with the query "
                               "token", kind="int")
    query_host: str = _setting("127.0.0.1", "interface the query service listens on (127.0.0.1: this machine "
                               "only)")
    query_token_file: str = _setting("", "file holding the read-only query token clients sign with (default: "
                                     "RINGWATCH_QUERY_TOKEN, else derived from RINGWATCH_TOKEN)")
    query_tls_cert: str = _setting("", "TLS certificate of the query service (with query_tls_key and query_tls_ca: "
                                   "clients must present a certificate from that CA)")
    query_tls_key: str = _setting("", "private key of query_tls_cert")
    query_tls_ca: str = _setting("", "CA that signs the query clients' certificates (and the service's)")
    query_alerts_kept: int = _setting(100_000, "newest alerts the alert history keeps for alert queries (on disk, "
                                      "state_dir/alert-history.sqlite3; survives restarts)", kind="int")
    metrics_port: int = _setting(0, "Prometheus metrics on this port (0 = off)", kind="int")
    metrics_host: str = _setting("127.0.0.1", "interface /metrics listens on (127.0.0.1: this machine only; "
                                 "0.0.0.0: every interface)")
    progress_interval: int = _setting(30_000, "a progress log line (throughput, lag, alerts) this often; 0 = "
                                      "off", kind="duration")


@dataclass
class KafkaConfig:
    """How every Kafka client — the source, its dead-letter producer, the alerts sink — connects: TLS, SASL.

    Any other key of the `[kafka]` table is handed to kafka-python as it is (see "The [kafka] table" below).
    """

    security_protocol: str = _setting("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str = _setting("", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (with SASL_*)")
    sasl_username: str = _setting("", "SASL user name (PLAIN, SCRAM)")
    sasl_password: str = _setting("", "SASL password (PLAIN, SCRAM)", kind="secret")
    sasl_password_file: str = _setting("", "file holding the SASL password")
    sasl_oauth_token_file: str = _setting("", "OAUTHBEARER: file holding the token, read again at every "
                                          "connection (a sidecar may refresh it)")
    ssl_cafile: str = _setting("", "CA certificates (PEM) the brokers' certificates must chain to (default: the "
                               "system's)")
    ssl_certfile: str = _setting("", "client certificate (PEM), for brokers that require one")
    ssl_keyfile: str = _setting("", "private key (PEM) of ssl_certfile")
    ssl_key_password: str = _setting("", "password of ssl_keyfile", kind="secret")
    ssl_key_password_file: str = _setting("", "file holding the password of ssl_keyfile")
    options: dict = field(default_factory=dict)  # the [kafka] keys kafka-python takes as they are


@dataclass
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    time: TimeConfig = field(default_factory=TimeConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)

    def validate(self) -> "Config":
        """Reject combinations no engine can run with; returns self."""
        if not self.source.topics:
            raise ConfigError("source.topics: give at least one topic (--topic NAME)")
        if not (self.sinks.webhook_url or self.sinks.alerts_topic or self.sinks.alerts_file):
            raise ConfigError("sinks: configure at least one of webhook_url, alerts_topic, alerts_file")
        if self.sinks.webhook_url:
            try:
                check_url(self.sinks.webhook_url)
            except InvalidWebhookConfigError as exc:
                raise ConfigError(logs.mask(f"sinks.webhook_url: {str(exc).removeprefix('webhook url: ')}")) from None
        if self.sinks.webhook_url and not self.sinks.webhook_secret:
            raise ConfigError("sinks.webhook_secret: required with webhook_url (set RINGWATCH_WEBHOOK_SECRET or "
                              "sinks.webhook_secret_file)")
        if not self.service.metrics_host:
            raise ConfigError("service.metrics_host: give an interface address (127.0.0.1, 0.0.0.0, ...)")
        self.kafka_settings()
        self.field_mapping()
        for spec in settings():
            value = getattr(getattr(self, spec.section), spec.key)
            if spec.kind in ("int", "duration") and value < 0:
                raise ConfigError(f"{spec.dotted}: must not be negative, got {value}")
        if self.engine.backend and self.engine.backend not in BACKENDS:
            raise ConfigError(f"engine.backend: must be one of {', '.join(BACKENDS)}, got {self.engine.backend!r}")
        if self.graph.shards < 1:
            raise ConfigError("graph.shards: must be at least 1")
        if self.graph.placement not in PLACEMENTS:
            raise ConfigError(f"graph.placement: expected one of {PLACEMENTS}, got {self.graph.placement!r}")
        if self.graph.placement == "in-process" and self.engine.address:
            raise ConfigError("graph.placement: in-process keeps the graph in one engine's process; on a cluster "
                              "(engine.address) the shards must be actors")
        self.search_options()
        if self.engine.batch_max_size < 1 or self.engine.keep_checkpoints < 1:
            raise ConfigError("engine.batch_max_size and engine.keep_checkpoints: must be at least 1")
        if self.service.query_alerts_kept < 1:
            raise ConfigError("service.query_alerts_kept: must be at least 1")
        return self

    def kafka_settings(self) -> KafkaSettings:
        """What every Kafka client of the engine is built with (connectors/kafka_settings.py)."""
        from ringwatch.connectors.kafka_settings import KafkaSecurity, KafkaSettings, KafkaSettingsError  # kafka

        kafka = self.kafka
        try:
            return KafkaSettings(KafkaSecurity(
                kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username, kafka.sasl_password,
                kafka.sasl_oauth_token_file, kafka.ssl_cafile, kafka.ssl_certfile, kafka.ssl_keyfile,
                kafka.ssl_key_password), kafka.options)
        except KafkaSettingsError as exc:
            raise ConfigError(str(exc)) from None

    def field_mapping(self) -> FieldMapping:
        """How input messages map onto the transaction contract (connectors/mapping.py)."""
        try:
            ceiling = parse_amount(self.source.max_amount, max_amount=DEFAULT_MAX_AMOUNT)
        except InvalidTransactionError as exc:
            raise ConfigError(f"source.max_amount: {exc.reason} (it may lower the default ceiling, "
                              f"{DEFAULT_MAX_AMOUNT}, not raise it)") from None
        try:
            schema = load_schema(self.source.schema_file) if self.source.schema_file else None
            return FieldMapping(self.source.fields, schema, max_amount=ceiling)
        except InvalidMappingError as exc:
            raise ConfigError(str(exc)) from None

    def secrets(self) -> list[str]:
        """Every secret value set, so log lines can mask them."""
        return [getattr(getattr(self, spec.section), spec.key) for spec in settings()
                if spec.kind == "secret" and getattr(getattr(self, spec.section), spec.key)]

    def search_options(self) -> SearchOptions:
        try:
            return search_options(**{name: getattr(self.graph, name) for name in SEARCH_OPTION_NAMES})
        except InvalidSearchOptionError as exc:
            raise ConfigError(f"graph.{exc}") from None

    def time_rules(self) -> TimeRules:
        return TimeRules(window_ms=self.graph.window, allowed_lateness_ms=self.time.allowed_lateness,
                         max_clock_skew_ms=self.time.max_clock_skew, idle_timeout_ms=self.time.idle_timeout,
                         max_drift_ms=self.time.max_partition_drift)


PLACEMENTS = ("actors", "in-process")

# What a ring is, by the names users give it (`[graph]` keys, `detect()` keywords, CLI flags).
SEARCH_OPTION_NAMES = ("max_hops", "window", "order", "min_amount", "min_ratio", "max_ratio",
                       "max_rings_per_tx", "max_degree")


def search_options(**options: Any) -> SearchOptions:
    """`SearchOptions` from user-facing names (`window` as any duration spelling): the one place they are built.

    `ringwatch run` (its `[graph]` table), `ringwatch detect` and `detect()` all come here.
    """
    unknown = set(options) - set(SEARCH_OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown detection option(s) {sorted(unknown)}; known: {list(SEARCH_OPTION_NAMES)}")
    if "window" in options:
        options["window_ms"] = parse_duration(options.pop("window"), name="window")
    return SearchOptions(**options)


@dataclass(frozen=True)
class Setting:
    """One config key as every reader sees it."""

    section: str
    key: str
    kind: str
    default: Any
    help: str
    flag: str

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.upper().replace("-", "_")


def settings() -> list[Setting]:
    """Every setting of the schema, in declaration order."""
    found = []
    for section_field in dataclasses.fields(Config):
        for f in dataclasses.fields(section_field.default_factory):
            if "help" not in f.metadata:  # not a setting (the [kafka] pass-through options)
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            flag = f.metadata["flag"] or f.name.replace("_", "-")
            found.append(Setting(section_field.name, f.name, f.metadata["kind"], default, f.metadata["help"], flag))
    return found


def _convert(spec: Setting, value: Any, source: str) -> Any:
    """`value` as the setting's type; strings (env, CLI) and TOML values alike."""
    where = f"{spec.dotted} (from {source})"
    try:
        if spec.kind == "duration":
            return parse_duration(value, name=where)
        if spec.kind == "list":
            if isinstance(value, str):
                return [item.strip() for item in value.split(",") if item.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        if spec.kind == "fields":
            return _fields(value, where)
        if spec.kind in ("optional-int", "optional-float"):
            if value is None or (isinstance(value, str) and value.lower() == "none"):
                return None
            return _integer(value, where) if spec.kind == "optional-int" else _number(value, where)
        if spec.kind == "int":
            return _integer(value, where)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    except InvalidDurationError as exc:
        raise ConfigError(str(exc)) from None


def _fields(value: Any, where: str) -> dict[str, Any]:
    """An input mapping: a TOML table, or OUT=PATH items (a comma-separated string, or a list from flags)."""
    if isinstance(value, dict):
        return dict(value)
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(f"{where}: expected a table of OUT = PATH, got {value!r}")
    out: dict[str, Any] = {}
    for item in (i.strip() for i in items):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"{where}: expected OUT=PATH (like src=payer.iban), got {item!r}")
        out[name.strip()] = path.strip()
    return out


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected a number, got {value!r}")


def _apply(config: Config, spec: Setting, value: Any, source: str) -> None:
    setattr(getattr(config, spec.section), spec.key, _convert(spec, value, source))


def _apply_toml(config: Config, data: Mapping[str, Any], path: Path) -> None:
    by_key = {(s.section, s.key): s for s in settings()}
    sections = {s.section for s in by_key.values()}
    for section, table in data.items():
        if section not in sections:
            raise ConfigError(f"{section}: unknown section in {path}; {_known(section, sections)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: expected a [{section}] table in {path}")
        for key, value in table.items():
            spec = by_key.get((section, key))
            if spec is None and section == "kafka":
                config.kafka.options[key] = value  # kafka-python's own settings, checked by kafka_settings()
                continue
            if spec is None:
                known = _known(key, [k for s, k in by_key if s == section])
                raise ConfigError(f"{section}.{key}: unknown key in {path}; {known}")
            _apply(config, spec, value, str(path))


def _known(name: str, names: Iterable[str]) -> str:
    """'did you mean X?' for a near miss (a typo), else every name: the fix, not a list to search, when there is one."""
    names = sorted(names)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
    return f"did you mean {close[0]}?" if close else f"known: {names}"


def _apply_env(config: Config, environ: Mapping[str, str]) -> None:
    by_env = {s.env: s for s in settings()}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(FOREIGN_ENV_PREFIXES):
            continue
        spec = by_env.get(name)
        if spec is None and name in OTHER_ENVIRONMENT:
            continue
        if spec is None:
            raise ConfigError(f"{name}: unknown environment setting; "
                              f"{_known(name, [*by_env, *OTHER_ENVIRONMENT])} (docs/configuration.md)")
        _apply(config, spec, value, f"environment {name}")


def load(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None, validate: bool = True) -> Config:
    """The config from `path` (TOML), then the environment, then `overrides` (dotted key -> value).

    `validate=False` skips the checks a whole engine needs (topics, sinks...) for
    commands that use one part of the config, e.g. `generate` its `[kafka]` table.
    """
    config = Config()
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
        _apply_toml(config, data, path)
    _apply_env(config, os.environ if environ is None else environ)
    by_dotted = {s.dotted: s for s in settings()}
    for dotted, value in (overrides or {}).items():
        if dotted not in by_dotted:
            raise ConfigError(f"{dotted}: unknown setting")
        _apply(config, by_dotted[dotted], value, f"flag --{by_dotted[dotted].flag}")
    _read_secret_files(config)
    return config.validate() if validate else config


def _read_secret_files(config: Config) -> None:
    """Each secret whose `<key>_file` is set, read from that file (stripped)."""
    for spec in settings():
        if spec.kind != "secret":
            continue
        section = getattr(config, spec.section)
        path = getattr(section, f"{spec.key}_file")
        if not path:
            continue
        if getattr(section, spec.key):
            raise ConfigError(f"{spec.dotted}: given both directly and by {spec.dotted}_file; keep one")
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{spec.dotted}_file: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{spec.dotted}_file: {path} is empty")
        setattr(section, spec.key, value)


class _RefusedSecret(argparse.Action):
    """The flag of a secret setting: refused with a message saying where the secret goes instead."""

    def __init__(self, option_strings: list[str], dest: str, env: str = "", **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.env = env

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string}: refused: a secret on the command line is visible to every user of this "
                     f"machine (ps, /proc) and stays in shell history; set {self.env} or pass "
                     f"{option_string}-file FILE")


def add_arguments(parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None) -> None:
    """One flag per setting (of `sections`, default all); unset flags stay None so they do not override the
    file or environment."""
    for spec in settings():
        if sections is not None and spec.section not in sections:
            continue
        default = spec.default if spec.kind != "duration" else format_duration(spec.default)
        if spec.kind == "secret":
            parser.add_argument(f"--{spec.flag}", dest=spec.dotted, default=None,
                                action=functools.partial(_RefusedSecret, env=spec.env), metavar="REFUSED",
                                help=f"{spec.help}: refused on the command line; set {spec.env} or "
                                     f"--{spec.flag}-file [{spec.dotted}]")
            continue
        parser.add_argument(
            f"--{spec.flag}", dest=spec.dotted, default=None,
            action="append" if spec.kind in ("list", "fields") else "store",
            metavar={"list": "NAME", "fields": "OUT=PATH"}.get(spec.kind, spec.key.upper()),
            help=f"{spec.help} [{spec.dotted}, {spec.env}; default: {default!r}]",
        )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {spec.dotted: getattr(args, spec.dotted) for spec in settings()
            if getattr(args, spec.dotted, None) is not None}


def _shown_default(spec: Setting) -> str:
    if spec.kind == "duration":
        return f'"{format_duration(spec.default)}"'
    if spec.default is None:
        return '"none"'
    if isinstance(spec.default, str):
        return f'"{spec.default}"'
    return repr(spec.default)


def render_docs() -> str:
    """docs/configuration.md, generated from the schema."""
    lines = [
        "# Configuration",
        "",
        "<!-- generated by ringwatch.stream.config.render_docs(); do not edit by hand -->",
        "",
        "`ringwatch run --config ringwatch.toml` reads a TOML file with the sections below. Each key can be",
        "overridden by an environment variable, and that by a command-line flag (flag > environment > file >",
        "default). Unknown keys and bad values stop the engine at start with the key named. Durations are",
        "written `500ms`, `90s`, `15m`, `48h`, `7d` (an integer is milliseconds). List flags repeat",
        "(`--topic a --topic b`); list environment variables are comma-separated.",
        "",
    ]
    all_settings = settings()
    for index, spec in enumerate(all_settings):
        if index == 0 or all_settings[index - 1].section != spec.section:
            section_doc = next(f.default_factory.__doc__ for f in dataclasses.fields(Config) if f.name == spec.section)
            lines += [f"## [{spec.section}]", "", section_doc.strip(), "",
                      "| key | flag | environment | default | meaning |", "| --- | --- | --- | --- | --- |"]
        lines.append(f"| `{spec.key}` | `--{spec.flag}` | `{spec.env}` | `{_shown_default(spec)}` | {spec.help} |")
        if index + 1 == len(all_settings) or all_settings[index + 1].section != spec.section:
            lines.append("")
    lines += [
        "## Secrets",
        "",
        "Settings marked as secrets (`sinks.webhook_secret`, `kafka.sasl_password`, `kafka.ssl_key_password`)",
        "are never taken from the command line, where every user of the machine could read them (`ps`,",
        "`/proc`) and shell history keeps them: their flag is refused. Give each one in its environment",
        "variable, or put it in a file (mode 0600) named by the `<key>_file` setting or `--<flag>-file` flag;",
        "the TOML file works too if its permissions are tight. Every log line masks secret values, passwords",
        "in URLs (`https://user:***@host`), `password=`/`token=` pairs and bearer tokens.",
        "",
        "## The [kafka] table",
        "",
        "Besides the keys above, `[kafka]` takes any setting of kafka-python's `KafkaConsumer` and",
        "`KafkaProducer` under its kafka-python name, handed to the clients as it is: a key only consumers",
        "know (`auto_offset_reset`, `fetch_max_bytes`, `max_partition_fetch_bytes`, `isolation_level`...)",
        "goes to the source's consumer, a key only producers know (`linger_ms`, `compression_type`...) to",
        "the dead-letter and alert producers, a key both know (`client_id`, `request_timeout_ms`,",
        "`ssl_check_hostname`...) to all. `[kafka.consumer]` and `[kafka.producer]` set a key for one kind",
        "only. Producers' client ids get `-dlq` or `-alerts` appended. Unknown keys, values of the wrong",
        "type and the settings ringwatch keeps for itself (`group_id`, `enable_auto_commit`, `acks`, the",
        "security settings above under their kafka-python names) stop the engine at start, naming the key.",
        "",
        "```toml",
        "[kafka]",
        'security_protocol = "SASL_SSL"',
        'sasl_mechanism = "SCRAM-SHA-512"',
        'sasl_username = "ringwatch"            # password: RINGWATCH_SASL_PASSWORD or sasl_password_file',
        'ssl_cafile = "/etc/ringwatch/kafka-ca.pem"',
        'client_id = "ringwatch-eu1"',
        'auto_offset_reset = "earliest"',
        "fetch_max_bytes = 52428800",
        "",
        "[kafka.producer]",
        'compression_type = "zstd"',
        "```",
        "",
        "OAUTHBEARER takes its token from `sasl_oauth_token_file`, read again each time a connection",
        "authenticates: let your identity provider's agent (or a cron job) rewrite that file before the",
        "token expires, and ringwatch picks the new token up without a restart.",
        "",
        "## Input mapping",
        "",
        "Payments whose fields are named differently are mapped in `[source.fields]` (or `--field OUT=PATH`,",
        "repeated; `RINGWATCH_FIELD=OUT=PATH,OUT=PATH`): each key names an output field, each value where it",
        "comes from. The contract fields `tx_id`, `src`, `dst`, `amount`, `ts`, `currency` feed the",
        "transaction; any other key renames an extra field. An unmapped contract field is read under its own",
        "name. A path is a field name or dotted names into nested JSON (`payer.iban`); a list of paths joins",
        "their values with `-` (`src = [\"bank\", \"account\"]`); `@source`, `@partition` and `@offset` are the",
        "record's topic (or file stem), partition and offset (or row), for input without ids. Mapped input",
        "fields are not kept again as extras. The AMLworld CSV reader is one such mapping",
        "(`ringwatch.connectors.files.AMLWORLD`).",
        "",
        "```toml",
        "[source]",
        'schema_file = "/etc/ringwatch/payment.schema.json"   # optional: JSON Schema, checked before mapping',
        "",
        "[source.fields]",
        'tx_id = "id"',
        'src = "payer.iban"',
        'dst = "payee.iban"',
        'amount = "value"',
        'ts = "booked_at"',
        "```",
        "",
        "A message that fails the schema goes to the dead-letter topic as `invalid:schema: <path>: <message>`",
        "(the first error), one that maps to an invalid transaction as `invalid:<field>`; detection goes on.",
        "",
        "## Other environment variables",
        "",
        "`ringwatch run` refuses `RINGWATCH_*` variables it does not know (a typo would otherwise be ignored",
        "silently); besides the settings above it accepts these:",
        "",
        "| variable | meaning |",
        "| --- | --- |",
        *(f"| `{name}` | {meaning} |" for name, meaning in OTHER_ENVIRONMENT.items()),
        "",
    ]
    return "\n".join(lines)


def describe(config: Config) -> str:
    """One line for the start-up log: source, sinks, backend, shards, search options, endpoints; no secrets."""
    source, sinks, service, graph = config.source, config.sinks, config.service, config.graph
    mapping = f" fields={','.join(f'{k}<-{v}' for k, v in source.fields.items())}" if source.fields else ""
    schema = f" schema={source.schema_file}" if source.schema_file else ""
    outputs = [f"webhook {sinks.webhook_url}" if sinks.webhook_url else "",
               f"kafka topic {sinks.alerts_topic}" if sinks.alerts_topic else "",
               f"file {sinks.alerts_file}" if sinks.alerts_file else ""]
    options = config.search_options()
    endpoints = [f"query={service.query_host}:{service.query_port}" if service.query_port else "",
                 f"metrics={service.metrics_host}:{service.metrics_port}" if service.metrics_port else ""]
    line = (f"source=kafka {source.kafka_bootstrap} topics={','.join(source.topics)} group={source.group} "
            f"security={config.kafka_settings().security.describe()}{mapping}{schema} "
            f"sinks={'; '.join(o for o in outputs if o)} "
            f"backend={config.engine.address or 'local'} shards={graph.shards} "
            f"options=max_hops={options.max_hops},window={format_duration(options.window_ms)},"
            f"order={options.order},max_rings_per_tx={options.max_rings_per_tx},"
            f"max_degree={options.max_degree} state_dir={config.engine.state_dir} "
            f"{' '.join(e for e in endpoints if e)}")
    return logs.mask(line.strip())


def dump_sections(config: Config) -> dict[str, dict[str, Any]]:
    """The effective configuration as plain data, secrets and URL passwords masked, for the start-up log."""
    data = dataclasses.asdict(config)
    for spec in settings():
        value = data[spec.section][spec.key]
        if spec.kind == "secret" and value:
            data[spec.section][spec.key] = logs.MASK
        elif isinstance(value, str):
            data[spec.section][spec.key] = logs.mask(value)
    return data

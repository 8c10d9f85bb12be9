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
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringwatch.graph import (
    InvalidDurationError,
    InvalidSearchOptionError,
    SearchOptions,
    format_duration,
    parse_duration,
)

from .event_time import TimeRules

ENV_PREFIX = "RINGWATCH_"
# RINGWATCH_* variables that belong to others (the runtime's cluster token and worker
# hand-over, the test suite's service addresses): not config keys, so not "unknown".
FOREIGN_ENV_PREFIXES = ("RINGWATCH_TEST_", "RINGWATCH_TOKEN", "RINGWATCH_WORKER_")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and its source."""


def _setting(default: Any, help: str, *, kind: str = "str", flag: str | None = None) -> Any:
    """A config field: `kind` is str, int, duration, list, optional-int or optional-float; `flag` overrides the
    CLI name."""
    metadata = {"help": help, "kind": kind, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
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


@dataclass
class GraphConfig:
    """What counts as a ring, and how the graph is split."""

    shards: int = _setting(2, "number of GraphShard actors", kind="int")
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


@dataclass
class EngineConfig:
    """Micro-batching, checkpoints and where state lives."""

    state_dir: str = _setting("./ringwatch-state", "checkpoints and sink outboxes")
    address: str = _setting("", "runtime cluster address (redis://...); empty = a local runtime")
    batch_max_size: int = _setting(256, "a micro-batch closes at this many payments", kind="int")
    batch_max_delay_ms: int = _setting(5, "... or this many milliseconds after its first payment", kind="int")
    checkpoint_interval: int = _setting(5_000, "time between aligned checkpoints", kind="duration")
    keep_checkpoints: int = _setting(2, "complete checkpoints kept on disk", kind="int")


@dataclass
class SinksConfig:
    """Where alerts go: any combination of a webhook, a Kafka topic and a JSON-lines file."""

    webhook_url: str = _setting("", "POST alerts here (Standard Webhooks signatures)")
    webhook_secret: str = _setting("", "whsec_... signing secret (prefer RINGWATCH_WEBHOOK_SECRET)")
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

    query_port: int = _setting(0, "port of the gRPC query service (0 = off); clients must send the token",
                               kind="int")
    query_host: str = _setting("127.0.0.1", "interface the query service listens on (127.0.0.1: this machine "
                               "only)")
    query_token_file: str = _setting("", "file holding the token query clients must send (default: "
                                     "RINGWATCH_TOKEN)")
    query_alerts_kept: int = _setting(100_000, "newest alerts the alert history keeps for alert queries (on disk, "
                                      "state_dir/alert-history.sqlite3; survives restarts)", kind="int")
    metrics_port: int = _setting(0, "Prometheus metrics on this port (0 = off)", kind="int")


@dataclass
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    time: TimeConfig = field(default_factory=TimeConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)

    def validate(self) -> "Config":
        """Reject combinations no engine can run with; returns self."""
        if not self.source.topics:
            raise ConfigError("source.topics: give at least one topic (--topic NAME)")
        if not (self.sinks.webhook_url or self.sinks.alerts_topic or self.sinks.alerts_file):
            raise ConfigError("sinks: configure at least one of webhook_url, alerts_topic, alerts_file")
        if self.sinks.webhook_url and not self.sinks.webhook_secret:
            raise ConfigError("sinks.webhook_secret: required with webhook_url (or set RINGWATCH_WEBHOOK_SECRET)")
        for spec in settings():
            value = getattr(getattr(self, spec.section), spec.key)
            if spec.kind in ("int", "duration") and value < 0:
                raise ConfigError(f"{spec.dotted}: must not be negative, got {value}")
        if self.graph.shards < 1:
            raise ConfigError("graph.shards: must be at least 1")
        self.search_options()
        if self.engine.batch_max_size < 1 or self.engine.keep_checkpoints < 1:
            raise ConfigError("engine.batch_max_size and engine.keep_checkpoints: must be at least 1")
        if self.service.query_alerts_kept < 1:
            raise ConfigError("service.query_alerts_kept: must be at least 1")
        return self

    def search_options(self) -> SearchOptions:
        try:
            return search_options(**{name: getattr(self.graph, name) for name in SEARCH_OPTION_NAMES})
        except InvalidSearchOptionError as exc:
            raise ConfigError(f"graph.{exc}") from None

    def time_rules(self) -> TimeRules:
        return TimeRules(window_ms=self.graph.window, allowed_lateness_ms=self.time.allowed_lateness,
                         max_clock_skew_ms=self.time.max_clock_skew, idle_timeout_ms=self.time.idle_timeout)


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
            raise ConfigError(f"{section}: unknown section in {path}; known: {sorted(sections)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: expected a [{section}] table in {path}")
        for key, value in table.items():
            spec = by_key.get((section, key))
            if spec is None:
                known = sorted(k for s, k in by_key if s == section)
                raise ConfigError(f"{section}.{key}: unknown key in {path}; known in [{section}]: {known}")
            _apply(config, spec, value, str(path))


def _apply_env(config: Config, environ: Mapping[str, str]) -> None:
    by_env = {s.env: s for s in settings()}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(FOREIGN_ENV_PREFIXES):
            continue
        spec = by_env.get(name)
        if spec is None:
            raise ConfigError(f"{name}: unknown environment setting; known: {sorted(by_env)}")
        _apply(config, spec, value, f"environment {name}")


def load(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> Config:
    """The config from `path` (TOML), then the environment, then `overrides` (dotted key -> value)."""
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
    return config.validate()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags stay None so they do not override the file or environment."""
    for spec in settings():
        default = spec.default if spec.kind != "duration" else format_duration(spec.default)
        parser.add_argument(
            f"--{spec.flag}", dest=spec.dotted, default=None, action="append" if spec.kind == "list" else "store",
            metavar=spec.key.upper() if spec.kind != "list" else "NAME",
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
    return "\n".join(lines)


def dump_sections(config: Config) -> dict[str, dict[str, Any]]:
    """The effective configuration as plain data (secrets masked), for the start-up log."""
    data = dataclasses.asdict(config)
    if data["sinks"]["webhook_secret"]:
        data["sinks"]["webhook_secret"] = "***"
    return data

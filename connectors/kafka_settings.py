"""Kafka client settings: security (TLS, SASL) and the `[kafka]` pass-through, built in one place.

Every Kafka client ringwatch opens — the source's consumer, its dead-letter
producer, the alerts sink's producer, `produce_transactions` — talks to one
cluster with one set of credentials, so `KafkaSettings` builds the
kafka-python keyword arguments for all of them: `consumer(base)` and
`producer(base)` take the caller's own arguments (bootstrap, group, acks...)
and add the security settings and the user's options.

The user's options are checked against kafka-python's own list of settings
(`KafkaConsumer.DEFAULT_CONFIG`, `KafkaProducer.DEFAULT_CONFIG`) when the
settings are made, never when a client connects: an unknown key, a key
ringwatch must keep for itself (offsets are committed by the engine, alerts
need `acks=all`), or a value of the wrong type is a `KafkaSettingsError`
naming `kafka.<key>`. A key only one client kind knows goes only to that kind
(`auto_offset_reset` to consumers, `linger_ms` to producers); the sub-tables
`[kafka.consumer]` and `[kafka.producer]` set a key for one kind only.

OAUTHBEARER tokens are read from a file on every (re)connection, so a sidecar
that refreshes the file (an OIDC client, a cloud agent) rotates the token
without a restart.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.net.sasl.oauth import AbstractTokenProvider

from ringwatch.runtime.errors import RingwatchError

logger = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
ROLES = ("consumer", "producer")

# Settings ringwatch decides itself; the message says where the user sets them, or why they cannot.
MANAGED = {
    "bootstrap_servers": "set source.kafka_bootstrap",
    "group_id": "set source.group",
    "enable_auto_commit": "the engine commits offsets itself, after each checkpoint",
    "acks": "alerts and dead letters are produced with acks=all",
    "security_protocol": "set kafka.security_protocol",
    "sasl_mechanism": "set kafka.sasl_mechanism",
    "sasl_plain_username": "set kafka.sasl_username",
    "sasl_plain_password": "set RINGWATCH_SASL_PASSWORD or kafka.sasl_password_file",
    "sasl_oauth_token_provider": "set kafka.sasl_oauth_token_file",
    "ssl_cafile": "set kafka.ssl_cafile",
    "ssl_certfile": "set kafka.ssl_certfile",
    "ssl_keyfile": "set kafka.ssl_keyfile",
    "ssl_password": "set RINGWATCH_SSL_KEY_PASSWORD or kafka.ssl_key_password_file",
    "ssl_context": "ringwatch builds the TLS context from the kafka.ssl_* files",
    "key_deserializer": "ringwatch reads raw bytes", "value_deserializer": "ringwatch reads raw bytes",
    "key_serializer": "ringwatch writes raw bytes", "value_serializer": "ringwatch writes raw bytes",
    "consumer_timeout_ms": "the engine polls with its own timeouts",
    "transactional_id": "ringwatch does not use Kafka transactions",
}


class KafkaSettingsError(RingwatchError, ValueError):
    """A Kafka client setting that cannot be used; the message starts with the setting's name."""


class FileTokenProvider(AbstractTokenProvider):
    """An OAUTHBEARER token read from `path` each time a connection authenticates (so rotation needs no restart)."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)

    def token(self) -> str:
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise KafkaSettingsError(f"kafka.sasl_oauth_token_file: cannot read {self.path}: {exc}") from None
        if not token:
            raise KafkaSettingsError(f"kafka.sasl_oauth_token_file: {self.path} is empty")
        return token


@dataclass(frozen=True)
class KafkaSecurity:
    """How every client authenticates and encrypts: one of `SECURITY_PROTOCOLS`, SASL and TLS details."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    sasl_oauth_token_file: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_key_password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        protocol = self.protocol.upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise KafkaSettingsError(f"kafka.security_protocol: {self.protocol!r} is not one of "
                                     f"{', '.join(SECURITY_PROTOCOLS)}")
        object.__setattr__(self, "protocol", protocol)
        sasl = protocol.startswith("SASL_")
        mechanism = self.sasl_mechanism.upper()
        object.__setattr__(self, "sasl_mechanism", mechanism)
        if sasl and mechanism not in SASL_MECHANISMS:
            raise KafkaSettingsError(f"kafka.sasl_mechanism: {protocol} needs one of {', '.join(SASL_MECHANISMS)}"
                                     f"{'' if not mechanism else f', not {self.sasl_mechanism!r}'}")
        if not sasl and mechanism:
            raise KafkaSettingsError(f"kafka.sasl_mechanism: set to {mechanism} but kafka.security_protocol is "
                                     f"{protocol}; use SASL_PLAINTEXT or SASL_SSL")
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            if not self.sasl_username:
                raise KafkaSettingsError(f"kafka.sasl_username: required with sasl_mechanism {mechanism}")
            if not self.sasl_password:
                raise KafkaSettingsError(f"kafka.sasl_password: required with sasl_mechanism {mechanism}; set "
                                         "RINGWATCH_SASL_PASSWORD or kafka.sasl_password_file")
        if mechanism == "OAUTHBEARER" and not self.sasl_oauth_token_file:
            raise KafkaSettingsError("kafka.sasl_oauth_token_file: required with sasl_mechanism OAUTHBEARER "
                                     "(a file holding the bearer token, re-read on every connection)")
        tls = protocol in ("SSL", "SASL_SSL")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not tls:
                raise KafkaSettingsError(f"kafka.{name}: TLS files need security_protocol SSL or SASL_SSL, "
                                         f"not {protocol}")
            if path and not Path(path).is_file():
                raise KafkaSettingsError(f"kafka.{name}: {path} is not a readable file")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise KafkaSettingsError("kafka.ssl_certfile: required with kafka.ssl_keyfile (the client certificate)")

    def client_arguments(self) -> dict[str, Any]:
        """The kafka-python arguments for this security setup (secrets included: never log them)."""
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl_mechanism:
            out["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism == "OAUTHBEARER":
                out["sasl_oauth_token_provider"] = FileTokenProvider(self.sasl_oauth_token_file)
            else:
                out["sasl_plain_username"] = self.sasl_username
                out["sasl_plain_password"] = self.sasl_password
        if self.ssl_cafile:
            out["ssl_cafile"] = self.ssl_cafile
        if self.ssl_certfile:
            out["ssl_certfile"] = self.ssl_certfile
            out["ssl_keyfile"] = self.ssl_keyfile or None
            out["ssl_password"] = self.ssl_key_password or None
        return out

    def describe(self) -> str:
        """A one-line summary without secrets, for the start-up log."""
        parts = [self.protocol]
        if self.sasl_mechanism:
            who = f" user={self.sasl_username}" if self.sasl_username else ""
            parts.append(f"{self.sasl_mechanism}{who}")
        if self.ssl_cafile:
            parts.append(f"ca={self.ssl_cafile}")
        if self.ssl_certfile:
            parts.append(f"cert={self.ssl_certfile}")
        return " ".join(parts)


def _known(role: str) -> Mapping[str, Any]:
    return KafkaConsumer.DEFAULT_CONFIG if role == "consumer" else KafkaProducer.DEFAULT_CONFIG


def _check_option(name: str, value: Any, roles: tuple[str, ...]) -> Any:
    """`value` for kafka-python setting `name` (dotted as the user wrote it), or a KafkaSettingsError."""
    key = name.rsplit(".", 1)[-1]
    if key in MANAGED:
        raise KafkaSettingsError(f"{name}: not settable in [kafka]: {MANAGED[key]}")
    defaults = [_known(role)[key] for role in roles if key in _known(role)]
    if not defaults:
        known = sorted(set().union(*(_known(role) for role in roles)) - set(MANAGED))
        close = difflib.get_close_matches(key, known, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        kinds = " or ".join({"consumer": "KafkaConsumer", "producer": "KafkaProducer"}[role] for role in roles)
        raise KafkaSettingsError(f"{name}: not a {kinds} setting of kafka-python{hint}")
    default = defaults[0]
    if isinstance(value, list):
        value = tuple(value)  # TOML has arrays, kafka-python wants tuples (api_version)
    if default is None:
        if not isinstance(value, (str, int, float, bool, tuple)):
            raise KafkaSettingsError(f"{name}: expected a string, number or boolean, got {value!r}")
        return value
    if isinstance(default, bool):
        expected: tuple[type, ...] = (bool,)
    elif isinstance(default, int):
        expected = (int,)
    elif isinstance(default, float):
        expected = (int, float)
    elif isinstance(default, str):
        expected = (str,)
    else:
        raise KafkaSettingsError(f"{name}: cannot be set from a config file (kafka-python expects a "
                                 f"{type(default).__name__})")
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        raise KafkaSettingsError(f"{name}: expected {' or '.join(t.__name__ for t in expected)} like the default "
                                 f"{default!r}, got {value!r}")
    return value


def check_options(table: Mapping[str, Any], prefix: str = "kafka") -> dict[str, dict[str, Any]]:
    """The `[kafka]` table as per-role options: {"consumer": {...}, "producer": {...}}; bad keys raise.

    A top-level key goes to each client kind that knows it; `consumer` and
    `producer` sub-tables set keys for one kind and win over the top level.
    """
    out: dict[str, dict[str, Any]] = {role: {} for role in ROLES}
    for key, value in table.items():
        if key in ROLES:
            if not isinstance(value, Mapping):
                raise KafkaSettingsError(f"{prefix}.{key}: expected a table of {key} settings")
            continue
        name = f"{prefix}.{key}"
        checked = _check_option(name, value, ROLES)
        for role in ROLES:
            if key in _known(role):
                out[role][key] = checked
    for role in ROLES:
        for key, value in table.get(role, {}).items():
            out[role][key] = _check_option(f"{prefix}.{role}.{key}", value, (role,))
    return out


@dataclass(frozen=True)
class KafkaSettings:
    """Security and user options for every Kafka client of one engine; validated when made."""

    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_role", check_options(self.options))

    def consumer(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """kafka-python `KafkaConsumer` arguments: `base` < the user's options < security."""
        return self._arguments("consumer", base, "")

    def producer(self, base: Mapping[str, Any], job: str) -> dict[str, Any]:
        """kafka-python `KafkaProducer` arguments; the client id gets `-<job>` (dlq, alerts) appended."""
        return self._arguments("producer", base, f"-{job}")

    def _arguments(self, role: str, base: Mapping[str, Any], suffix: str) -> dict[str, Any]:
        arguments = {**base, **self._by_role[role]}  # type: ignore[attr-defined]
        arguments["client_id"] = arguments.get("client_id", "ringwatch") + suffix
        return {**arguments, **self.security.client_arguments()}


PLAINTEXT = KafkaSettings()

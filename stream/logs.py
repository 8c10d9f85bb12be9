"""Log output of the `ringwatch` command: text or JSON lines, credentials masked in every line.

`configure` installs one handler on the root logger, so records of every
logger — ringwatch's, kafka-python's, grpc's — pass the same `SecretMasker`
before they are written. The masker replaces, in the message, the
traceback and the stack:

- every secret value registered with `register_secret` (the webhook secret,
  SASL and key passwords, tokens read from files or the environment);
- passwords in URLs (`https://user:pw@host` -> `https://user:***@host`);
- `password=...`, `secret: ...`, `token=...` pairs, `Bearer ...` and `whsec_...` values.

Text lines read `2024-05-01 12:00:00,123 INFO ringwatch.stream.engine: ...`;
with `--log-format json` each record is one JSON object per line (keys
`time`, `level`, `logger`, `message`, plus `exc_info` and any `extra=` fields),
written by python-json-logger. Library users who configure logging themselves
can add `MASKER` to their own handlers.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from ringwatch.runtime.errors import RingwatchError

LOG_FORMATS = ("text", "json")
MASK = "***"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words; no real secret is this short

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:@/\s]*:)(?P<password>[^@/\s]+)(?P<at>@)")
_SECRET_PAIR = re.compile(
    r"(?P<head>\b(?:password|passwd|secret|token|api[_-]?key)\b[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',;&}]+)",
    re.IGNORECASE)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)(?P<value>[A-Za-z0-9._~+/=-]+)")
_WHSEC = re.compile(r"(?P<head>\bwhsec_)(?P<value>[A-Za-z0-9+/=]+)")


class InvalidLogFormatError(RingwatchError, ValueError):
    """A log format that is not one of LOG_FORMATS."""


class SecretMasker(logging.Filter):
    """A handler filter that masks credentials in each record's message, traceback and stack."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        self._exception_formatter = logging.Formatter()

    def add(self, secret: str) -> None:
        """Mask `secret` (and its JSON-escaped form) wherever it appears from now on."""
        secret = secret.strip()
        if len(secret) >= MIN_SECRET_LENGTH:
            with self._lock:
                self._secrets.add(secret)

    def mask(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _URL_PASSWORD.sub(rf"\g<head>{MASK}\g<at>", text)
        text = _SECRET_PAIR.sub(lambda m: m["head"] + (m["value"] if m["value"] == MASK else MASK), text)
        text = _BEARER.sub(rf"\g<head>{MASK}", text)
        return _WHSEC.sub(rf"\g<head>{MASK}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.mask(record.getMessage())
        record.args = None
        if record.exc_info:
            # Formatters print exc_text when exc_info is gone: the traceback is masked once, here.
            record.exc_text = self._exception_formatter.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


MASKER = SecretMasker()


def register_secret(secret: str) -> None:
    """Mask `secret` in every log line of this process."""
    MASKER.add(secret)


def mask(text: str) -> str:
    """`text` with credentials masked, as log lines show it (for messages printed outside logging)."""
    return MASKER.mask(text)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                             rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                             datefmt="%Y-%m-%dT%H:%M:%S%z")
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise InvalidLogFormatError(f"log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")


def configure(log_format: str = "text", *, level: int = logging.WARNING, ringwatch_level: int | None = None,
              stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's records through `MASKER` to `stream` (stderr) in `log_format`.

    `level` applies to every logger, `ringwatch_level` (if lower) to
    ringwatch's own; progress lines (`ringwatch.progress`) always show.
    Replaces handlers an earlier call installed.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(MASKER)
    root = logging.getLogger()
    for old in [h for h in root.handlers if MASKER in h.filters]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("ringwatch").setLevel(min(level, ringwatch_level) if ringwatch_level is not None else level)
    logging.getLogger("ringwatch.progress").setLevel(min(level, logging.INFO))
    return handler

"""Alerts to an HTTP endpoint, signed per the Standard Webhooks specification.

Receivers verify deliveries with the `standardwebhooks` or `svix` libraries:
`webhook-id` is the alert id (the same on every retry, so receivers can also
deduplicate), `webhook-timestamp` the unix seconds of the attempt, and
`webhook-signature` is `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
keyed with the base64 secret after its `whsec_` prefix.

Delivery never blocks ingestion: `deliver` writes each alert to an outbox
directory on disk and returns; a background thread posts them, retrying with
exponential backoff and jitter, and removes an alert from the outbox only once
the receiver acknowledged it (2xx) or it went to the dead-letter file. An
engine restart finds the outbox and resends what was not acknowledged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import json
import logging
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

from ringwatch.graph import Alert
from ringwatch.runtime.files import write_atomically

from .settled import DEFAULT_CAPACITY, SettledIds, append_durably

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"


class InvalidWebhookConfigError(ValueError):
    """A webhook URL, secret or retry setting that cannot work; the message names it."""


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix is optional, as in the reference libraries)."""
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidWebhookConfigError(
            "webhook secret: expected 'whsec_' followed by base64, e.g. whsec_" +
            base64.b64encode(b"32 random bytes go here.........").decode()
        ) from None
    if not key:
        raise InvalidWebhookConfigError("webhook secret: empty key after 'whsec_'")
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one delivery attempt."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@dataclass
class _Pending:
    alert: Alert
    body: bytes
    file: Path
    attempts: int = 0
    due: float = 0.0


@dataclass(frozen=True)
class _Outcome:
    """One attempt's result: `retry` says whether trying again can help; `wait_s` is a Retry-After."""

    delivered: bool
    reason: str = ""
    retry: bool = False
    wait_s: float | None = None


class WebhookSink:
    """Delivers alerts to `url`, at most once per alert id across restarts of the engine.

    State under `state_dir`: `outbox/` (one file per unacknowledged alert),
    `settled` (ids delivered or dead-lettered) and, unless `dead_letter_path`
    says otherwise, `dead-letter.jsonl` (alerts that failed `max_attempts`
    times or were refused outright, each with the reason). A receiver that
    acknowledges an alert and then the engine crashes before recording it may
    see that alert once more with the same `webhook-id`.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        state_dir: str | Path,
        *,
        timeout_s: float = 10.0,
        max_attempts: int = 8,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 60.0,
        retry_after_max_s: float = 600.0,
        dead_letter_path: str | Path | None = None,
        remember: int = DEFAULT_CAPACITY,
    ):
        self.url = url
        self._target = _parse_url(url)
        self._key = decode_secret(secret)
        _require_positive(timeout_s=timeout_s, max_attempts=max_attempts,
                          backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s)
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.state_dir = Path(state_dir)
        self._outbox = self.state_dir / "outbox"
        self._outbox.mkdir(parents=True, exist_ok=True)
        self.dead_letter_path = Path(dead_letter_path) if dead_letter_path else self.state_dir / "dead-letter.jsonl"
        self._settled = SettledIds(self.state_dir / "settled", remember)
        self._random = random.Random()
        self._changed = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._sequence = 0
        self._stopping = False
        self.outcomes: dict[str, int] = {"delivered": 0, "retried": 0, "dead_lettered": 0}
        self._load_outbox()
        self._worker = threading.Thread(target=self._run, name=f"webhook-sink {url}", daemon=True)
        self._worker.start()

    def _load_outbox(self) -> None:
        for leftover in self._outbox.glob("*.tmp"):
            leftover.unlink()
        for file in sorted(self._outbox.glob("*.json")):
            try:
                alert = Alert.from_dict(json.loads(file.read_bytes()))
            except (ValueError, KeyError, TypeError) as exc:
                kept = file.with_name(file.name + ".unreadable")
                file.rename(kept)
                logger.error("webhook outbox entry %s is not an alert (%s); kept as %s", file, exc, kept)
                continue
            if alert.alert_id in self._settled:
                file.unlink()
                continue
            self._sequence = max(self._sequence, int(file.name.split("-", 1)[0]))
            self._pending[alert.alert_id] = _Pending(alert, alert.to_json().encode(), file)
        if self._pending:
            logger.info("webhook outbox %s: resending %d unacknowledged alerts", self._outbox, len(self._pending))

    def deliver(self, alerts: Iterable[Alert]) -> None:
        """Put alerts in the durable outbox (skipping ids already settled or queued) and return."""
        for alert in alerts:
            with self._changed:
                if alert.alert_id in self._pending or alert.alert_id in self._settled:
                    continue
                self._sequence += 1
                body = alert.to_json().encode()
                file = self._outbox / f"{self._sequence:012d}-{alert.alert_id}.json"
                write_atomically(file, body)
                self._pending[alert.alert_id] = _Pending(alert, body, file)
                self._changed.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the outbox is empty (everything acknowledged or dead-lettered)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending, timeout)

    @property
    def pending(self) -> int:
        with self._changed:
            return len(self._pending)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the sender; what is still in the outbox is sent after the next start."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._worker.join(timeout)
        self._settled.close()

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._stopping:
                    return
                item = self._next_due()
                if item is None:
                    self._changed.wait(self._wait_s())
                    continue
            try:
                outcome = self._attempt(item)
            except Exception as exc:  # the sender thread must outlive any one bad attempt
                logger.exception("webhook alert %s: unexpected error while posting", item.alert.alert_id)
                outcome = _Outcome(False, f"unexpected error: {type(exc).__name__}: {exc}", retry=True)
            self._settle(item, outcome)

    def _next_due(self) -> _Pending | None:
        if not self._pending:
            return None
        item = min(self._pending.values(), key=lambda p: p.due)
        return item if item.due <= time.monotonic() else None

    def _wait_s(self) -> float | None:
        if not self._pending:
            return None
        return max(0.0, min(p.due for p in self._pending.values()) - time.monotonic())

    def _attempt(self, item: _Pending) -> _Outcome:
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "ringwatch-webhook",
            "webhook-id": item.alert.alert_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, item.alert.alert_id, timestamp, item.body),
        }
        scheme, host, port, path = self._target
        connection_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        connection = connection_class(host, port, timeout=self.timeout_s)
        try:
            connection.request("POST", path, body=item.body, headers=headers)
            response = connection.getresponse()
            response.read()
            return _classify(response.status, response.getheader("retry-after"))
        except TimeoutError:
            return _Outcome(False, f"timeout after {self.timeout_s} s", retry=True)
        except (OSError, http.client.HTTPException) as exc:
            return _Outcome(False, f"connection error: {type(exc).__name__}: {exc}", retry=True)
        finally:
            connection.close()

    def _settle(self, item: _Pending, outcome: _Outcome) -> None:
        item.attempts += 1
        alert_id = item.alert.alert_id
        if outcome.delivered:
            self._finish(item, "delivered")
        elif outcome.retry and item.attempts < self.max_attempts:
            delay = self._backoff_s(item.attempts)
            if outcome.wait_s is not None:
                delay = max(delay, min(outcome.wait_s, self.retry_after_max_s))
            logger.debug("webhook %s attempt %d failed (%s); retrying in %.2f s",
                         alert_id, item.attempts, outcome.reason, delay)
            with self._changed:
                item.due = time.monotonic() + delay
                self.outcomes["retried"] += 1
        else:
            reason = outcome.reason if not outcome.retry else f"{outcome.reason} (gave up after {item.attempts} attempts)"
            append_durably(self.dead_letter_path, json.dumps({
                "alert": item.alert.to_dict(), "reason": reason, "attempts": item.attempts,
                "url": self.url, "failed_at": datetime.now(timezone.utc).isoformat(),
            }))
            logger.error("webhook alert %s dead-lettered to %s: %s", alert_id, self.dead_letter_path, reason)
            self._finish(item, "dead_lettered")

    def _finish(self, item: _Pending, outcome: str) -> None:
        self._settled.add([item.alert.alert_id])
        item.file.unlink(missing_ok=True)
        with self._changed:
            del self._pending[item.alert.alert_id]
            self.outcomes[outcome] += 1
            self._changed.notify_all()

    def _backoff_s(self, attempts: int) -> float:
        """Exponential backoff with equal jitter: half fixed, half random."""
        ceiling = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempts - 1))
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)


def _classify(status: int, retry_after: str | None) -> _Outcome:
    """2xx delivered; 5xx, 429 and 408 worth retrying; anything else (redirects included) refused."""
    if 200 <= status < 300:
        return _Outcome(True)
    if status >= 500 or status in (408, 429):
        return _Outcome(False, f"HTTP {status}", retry=True, wait_s=_retry_after_s(retry_after))
    return _Outcome(False, f"HTTP {status} (not retried{'; redirects are not followed' if 300 <= status < 400 else ''})")


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


def _parse_url(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidWebhookConfigError(f"webhook url: expected http(s)://host[:port]/path, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def _require_positive(**settings: float) -> None:
    for name, value in settings.items():
        if value <= 0:
            raise InvalidWebhookConfigError(f"{name}: must be > 0, got {value}")

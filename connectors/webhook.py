"""Alerts to an HTTP endpoint, signed per Standard Webhooks, in detection order, through outages.

Delivery guarantee: **at least once, in order, per endpoint** — deduplicate on
`webhook-id` (the alert id). `deliver` writes each alert to a durable outbox
on disk (one file per call, a segment of JSON lines named by its sequence
number, written with one fsync) and returns, so ingestion never waits for the
endpoint. One sender thread posts the outbox
strictly in sequence, one request at a time over a kept-alive connection
(`WebhookClient`). A failure the endpoint may recover from — a connection
error, a timeout, 5xx, 408 or 429 — holds the queue: the same alert is tried
again after an exponential backoff with jitter (honouring `Retry-After`), and
no later alert overtakes it. After `max_attempts` failures in a row the
endpoint is reported down (an ERROR line, `outcomes["endpoint_down"]`) and the
sender goes on probing it with the head alert every `backoff_max_s` or less;
the moment it answers, the held alerts follow in order. Nothing is dropped
while the endpoint is down, however long, and an engine restart resumes the
outbox where it stopped.

An alert the endpoint answers and refuses (another 4xx, or a redirect, which
is never followed) cannot succeed by waiting: it goes to the dead-letter file
with the reason and the queue moves on. `ringwatch webhook resend FILE`
(`resend`) posts a dead-letter file again once the receiver is fixed.

Each alert id is settled once (`SettledIds`, fsynced as soon as the endpoint
answers), so the engine's replay after a crash sends nothing twice; a segment
is removed once all its alerts are settled. A receiver may see an alert again
only if it acknowledged it and the engine died before recording that.

Outbox lines are sealed: `<HMAC-SHA256 hex> <alert JSON>`, keyed from the
webhook secret (which never touches the disk under `state_dir`). Whatever the
sender posts it signs with that secret, so a line someone else wrote into the
outbox — an account with write access to a shared state_dir — would reach the
receiver as a genuine alert; a line whose seal does not verify is set aside
(`<segment>.unreadable`, an ERROR line), never sent. Lines written before
sealing existed are set aside the same way: resend them with `ringwatch
webhook resend` after a look.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ringwatch.graph import Alert
from ringwatch.runtime.files import write_atomically

from .settled import DEFAULT_CAPACITY, SettledIds, append_durably
from .webhook_client import Backoff, InvalidWebhookConfigError, Outcome, WebhookClient

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Segment:
    """One outbox file: the alerts of one `deliver` call; removed once all of them are settled."""

    file: Path
    unsettled: int


@dataclass
class _Entry:
    alert_id: str
    body: bytes
    segment: _Segment


class WebhookSink:
    """Delivers alerts to `url` in the order `deliver` receives them, once per alert id across restarts.

    State under `state_dir`: `outbox/` (segments holding unacknowledged alerts),
    `settled` (ids delivered or dead-lettered) and, unless `dead_letter_path`
    says otherwise, `dead-letter.jsonl` (alerts the endpoint refused, each with
    the reason). `outcomes` counts delivered, retried (failed attempts),
    dead_lettered and endpoint_down (times the endpoint was reported down).
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
        if max_attempts <= 0:
            raise InvalidWebhookConfigError(f"max_attempts: must be > 0, got {max_attempts}")
        self._backoff = Backoff(backoff_initial_s, backoff_max_s, retry_after_max_s)
        self._client = WebhookClient(url, secret, timeout_s=timeout_s)
        self.url = url
        self.max_attempts = max_attempts
        self.state_dir = Path(state_dir)
        self._outbox = self.state_dir / "outbox"
        self._outbox.mkdir(parents=True, exist_ok=True)
        self.dead_letter_path = Path(dead_letter_path) if dead_letter_path else self.state_dir / "dead-letter.jsonl"
        self._settled = SettledIds(self.state_dir / "settled", remember)
        self._seal_key = hashlib.sha256(b"ringwatch webhook outbox\x00" + secret.encode()).digest()
        self._changed = threading.Condition()
        self._queue: deque[_Entry] = deque()
        self._queued: set[str] = set()
        self._sequence = 0
        self._failures = 0  # failed attempts in a row at the head of the queue
        self._hold_until = 0.0
        self._down_since: float | None = None
        self._stopping = False
        self.outcomes: dict[str, int] = {"delivered": 0, "retried": 0, "dead_lettered": 0, "endpoint_down": 0}
        self._load_outbox()
        self._worker = threading.Thread(target=self._run, name=f"webhook-sink {url}", daemon=True)
        self._worker.start()

    def _load_outbox(self) -> None:
        for leftover in self._outbox.glob(".*.tmp"):
            leftover.unlink()
        files = [f for f in self._outbox.iterdir() if f.suffix in (".json", ".jsonl") and f.name[:12].isdigit()]
        for file in sorted(files, key=lambda f: int(f.name[:12])):  # names start with the sequence number
            self._sequence = max(self._sequence, int(file.name[:12]))
            segment = _Segment(file, 0)
            unreadable = []
            for line in file.read_bytes().splitlines():
                try:
                    body = self._unsealed(line)
                    alert_id = json.loads(body)["alert_id"]
                    if not isinstance(alert_id, str):
                        raise TypeError(f"alert_id is {type(alert_id).__name__}")
                except (ValueError, KeyError, TypeError) as exc:
                    unreadable.append((line, exc))
                    continue
                if alert_id in self._settled or alert_id in self._queued:
                    continue
                segment.unsettled += 1
                self._queue.append(_Entry(alert_id, body, segment))
                self._queued.add(alert_id)
            if unreadable:
                kept = file.with_name(file.name + ".unreadable")
                append_durably(kept, b"\n".join(line for line, _ in unreadable).decode(errors="replace"))
                logger.error("webhook outbox %s: %d lines are not alerts (%s); kept in %s", file, len(unreadable),
                             unreadable[0][1], kept)
            if not segment.unsettled:
                file.unlink()
        if self._queue:
            logger.info("webhook outbox %s: resending %d unacknowledged alerts in order", self._outbox,
                        len(self._queue))

    def _sealed(self, body: bytes) -> bytes:
        return hmac.new(self._seal_key, body, hashlib.sha256).hexdigest().encode() + b" " + body

    def _unsealed(self, line: bytes) -> bytes:
        """The alert JSON of an outbox line this sink sealed; ValueError for any other line."""
        seal, _, body = line.partition(b" ")
        if not hmac.compare_digest(seal, hmac.new(self._seal_key, body, hashlib.sha256).hexdigest().encode()):
            raise ValueError("not sealed with this sink's secret (written by someone else, or by a version "
                             "before outbox sealing)")
        return body

    def deliver(self, alerts: Iterable[Alert]) -> None:
        """Append alerts to the durable outbox, in order (skipping ids already settled or queued), and return.

        One file and one fsync per call: the engine hands over a batch's alerts at once.
        """
        with self._changed:
            fresh: dict[str, bytes] = {}
            for alert in alerts:
                if alert.alert_id not in self._queued and alert.alert_id not in self._settled:
                    fresh.setdefault(alert.alert_id, alert.to_json().encode())
            if not fresh:
                return
            self._sequence += 1
            segment = _Segment(self._outbox / f"{self._sequence:012d}.jsonl", len(fresh))
            write_atomically(segment.file, b"".join(self._sealed(body) + b"\n" for body in fresh.values()))
            for alert_id, body in fresh.items():
                self._queue.append(_Entry(alert_id, body, segment))
                self._queued.add(alert_id)
            self._changed.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the outbox is empty (everything acknowledged or dead-lettered)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queue, timeout)

    @property
    def pending(self) -> int:
        """Alerts in the outbox, not yet acknowledged."""
        with self._changed:
            return len(self._queue)

    @property
    def endpoint_down(self) -> bool:
        """Whether the endpoint failed `max_attempts` times in a row and has not answered since."""
        with self._changed:
            return self._down_since is not None

    def close(self, timeout: float = 10.0) -> None:
        """Stop the sender; what is still in the outbox is sent after the next start."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._worker.join(timeout)
        if self._worker.is_alive():  # an attempt is still in flight: leave the connection and record to it
            logger.warning("webhook sender for %s still busy after %.0f s; what it has not settled is resent "
                           "after the next start", self.url, timeout)
            return
        self._client.close()
        self._settled.close()

    # ---- the sender thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopping and (not self._queue or time.monotonic() < self._hold_until):
                    self._changed.wait(max(0.0, self._hold_until - time.monotonic()) if self._queue else None)
                if self._stopping:
                    return
                head = self._queue[0]
            try:
                outcome = self._client.post(head.alert_id, head.body)
            except Exception as exc:  # the sender thread must outlive any one bad attempt
                logger.exception("webhook alert %s: unexpected error while posting", head.alert_id)
                outcome = Outcome(False, f"unexpected error: {type(exc).__name__}: {exc}", retry=True)
            if outcome.delivered or not outcome.retry:
                self._settle(head, outcome)
            else:
                self._hold(head, outcome)

    def _settle(self, head: _Entry, outcome: Outcome) -> None:
        """The endpoint answered: the head is delivered or refused, and the next alert's turn comes."""
        if not outcome.delivered:
            append_durably(self.dead_letter_path, json.dumps({
                "alert": json.loads(head.body), "reason": outcome.reason, "attempts": self._failures + 1,
                "url": self.url, "failed_at": datetime.now(timezone.utc).isoformat()}))
            logger.error("webhook alert %s refused by the endpoint (%s); written to %s", head.alert_id,
                         outcome.reason, self.dead_letter_path)
        self._settled.add([head.alert_id])  # durable before the next alert goes: a restart resends neither
        head.segment.unsettled -= 1
        if not head.segment.unsettled:
            head.segment.file.unlink(missing_ok=True)
        with self._changed:
            if self._down_since is not None:
                logger.warning("webhook endpoint %s answers again after %.0f s down; sending the %d alerts held "
                               "behind it in order", self.url, time.monotonic() - self._down_since,
                               len(self._queue) - 1)
                self._down_since = None
            self._queue.popleft()
            self._queued.discard(head.alert_id)
            self._failures = 0
            self.outcomes["delivered" if outcome.delivered else "dead_lettered"] += 1
            self._changed.notify_all()

    def _hold(self, head: _Entry, outcome: Outcome) -> None:
        """A failure the endpoint may recover from: the head waits (and so does everything behind it)."""
        with self._changed:
            self._failures += 1
            self.outcomes["retried"] += 1
            delay = self._backoff.delay_s(self._failures, outcome)
            self._hold_until = time.monotonic() + delay
            if self._failures == self.max_attempts:
                self._down_since = time.monotonic()
                self.outcomes["endpoint_down"] += 1
                logger.error("webhook endpoint %s down: %d attempts failed in a row (last: %s); holding %d alerts "
                             "in order and probing every %.0f s at most", self.url, self._failures, outcome.reason,
                             len(self._queue), self._backoff.max_s)
            else:
                logger.log(logging.WARNING if self._failures == 1 else logging.DEBUG,
                           "webhook alert %s attempt %d failed (%s); retrying in %.2f s, %d alerts held behind it",
                           head.alert_id, self._failures, outcome.reason, delay, len(self._queue) - 1)


# ---- re-sending a dead-letter file -------------------------------------------------------------------


@dataclass
class ResendReport:
    """What `resend` did: ids delivered, entries refused, and entries not sent because the endpoint kept failing."""

    delivered: list[str] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    unsent: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str = ""  # why sending stopped early (the endpoint kept failing), else empty

    @property
    def remaining(self) -> list[dict[str, Any]]:
        """Everything not delivered, as dead-letter entries, in the order of the input (refusals come first)."""
        return self.refused + self.unsent


def read_alert_lines(path: str | Path) -> Iterator[dict[str, Any]]:
    """Alerts from a dead-letter file (`{"alert": {...}, "reason": ...}` lines) or an alerts JSON-lines file.

    An id seen twice is yielded once (its first line); a line that holds no alert is an error naming it.
    """
    seen: set[str] = set()
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                alert = entry["alert"] if isinstance(entry, dict) and "alert" in entry else entry
                Alert.from_dict(alert)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path} line {number}: not an alert or a dead-letter entry ({exc})") from None
            if alert["alert_id"] not in seen:
                seen.add(alert["alert_id"])
                yield alert


def resend(alerts: Iterable[dict[str, Any]], client: WebhookClient, *, max_attempts: int = 8,
           backoff: Backoff | None = None) -> ResendReport:
    """Post `alerts` in order, each with its alert id as `webhook-id`; the same rules as the sink.

    A retryable failure is retried with backoff up to `max_attempts` times;
    if the endpoint still fails, sending stops there (later alerts must not
    overtake) and this alert and every later one are `remaining`. A refused
    alert is `remaining` with its reason, and the next one is sent.
    """
    backoff = backoff or Backoff()
    report = ResendReport()
    pending = list(alerts)
    for index, alert in enumerate(pending):
        body = json.dumps(alert, separators=(",", ":")).encode()
        for attempt in range(1, max_attempts + 1):
            outcome = client.post(alert["alert_id"], body)
            if outcome.delivered or not outcome.retry or attempt == max_attempts:
                break
            time.sleep(backoff.delay_s(attempt, outcome))
        if outcome.delivered:
            report.delivered.append(alert["alert_id"])
        elif not outcome.retry:
            report.refused.append(_dead_letter_entry(alert, outcome.reason, client.url))
        else:
            report.stopped_by = f"{outcome.reason}, {max_attempts} attempts"
            report.unsent += [_dead_letter_entry(later, f"not sent: the endpoint kept failing ({report.stopped_by})",
                                                 client.url) for later in pending[index:]]
            break
    return report


def _dead_letter_entry(alert: dict[str, Any], reason: str, url: str) -> dict[str, Any]:
    return {"alert": alert, "reason": reason, "url": url, "failed_at": datetime.now(timezone.utc).isoformat()}

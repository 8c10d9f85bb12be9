"""WebhookSink against a real HTTP receiver that verifies every signature with `standardwebhooks`."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from ringwatch.connectors import InvalidWebhookConfigError, WebhookSink
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.graph import Alert, alert_id

SECRET = "whsec_" + base64.b64encode(b"ringwatch-test-secret-0123456789").decode()
DEADLINE_S = 30.0

# A responder gets (webhook-id, attempt number for that id starting at 1) and returns (status, headers).
Responder = Callable[[str, int], tuple[int, dict[str, str]]]


def accept(_id: str, _attempt: int) -> tuple[int, dict[str, str]]:
    return 200, {}


class Receiver:
    """An HTTP server in a thread that checks each request's Standard Webhooks signature."""

    def __init__(self, port: int, respond: Responder = accept):
        self.port = port
        self.respond = respond
        self.attempts: Counter[str] = Counter()
        self.accepted: list[dict] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/alerts"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    payload = Webhook(SECRET).verify(body, dict(self.headers))
                except Exception:
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                message_id = self.headers["webhook-id"]
                with receiver.lock:
                    receiver.attempts[message_id] += 1
                    attempt = receiver.attempts[message_id]
                status, headers = receiver.respond(message_id, attempt)
                if 200 <= status < 300:
                    with receiver.lock:
                        receiver.accepted.append({"id": message_id, "payload": payload, "at": time.monotonic()})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted_ids(self) -> list[str]:
        with self.lock:
            return [entry["id"] for entry in self.accepted]


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.stop()


def make_alerts(n: int, tag: str = "x") -> list[Alert]:
    alerts = []
    for i in range(n):
        accounts = (f"{tag}a{i}", f"{tag}b{i}", f"{tag}c{i}")
        trigger = f"{tag}tx{i}"
        alerts.append(Alert(alert_id(trigger, accounts), trigger, accounts, (f"{tag}p{i}", f"{tag}q{i}", trigger),
                            3, 2_900.0, 1_000, 2_000, 2_001, 1.5))
    return alerts


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def fast_sink(url: str, state_dir, **settings) -> WebhookSink:
    options = {"timeout_s": 2.0, "max_attempts": 1000, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    return WebhookSink(url, SECRET, state_dir, **{**options, **settings})


def test_every_alert_arrives_signed_once_with_its_alert_id(tmp_path, receivers):
    receiver = Receiver(free_port()).start()
    receivers.append(receiver)
    alerts = make_alerts(25)
    sink = fast_sink(receiver.url, tmp_path / "state")
    try:
        sink.deliver(alerts)
        assert sink.flush(DEADLINE_S)
    finally:
        sink.close()

    assert receiver.bad_signatures == 0
    assert sorted(receiver.accepted_ids()) == sorted(a.alert_id for a in alerts)
    assert [Alert.from_dict(e["payload"]) for e in receiver.accepted] == alerts
    assert sink.outcomes["delivered"] == 25
    assert list((tmp_path / "state" / "outbox").iterdir()) == []


def test_receiver_down_then_up_gets_everything_once(tmp_path, receivers):
    receiver = Receiver(free_port())
    receivers.append(receiver)
    alerts = make_alerts(10)
    sink = fast_sink(receiver.url, tmp_path / "state")
    try:
        sink.deliver(alerts)
        wait_until(lambda: sink.outcomes["retried"] >= 30, "failed attempts while the receiver is down")
        assert sink.pending == 10
        receiver.start()
        assert sink.flush(DEADLINE_S)
    finally:
        sink.close()

    assert receiver.bad_signatures == 0
    assert sorted(receiver.accepted_ids()) == sorted(a.alert_id for a in alerts)


def test_restart_resends_the_outbox_and_a_replay_delivers_nothing_twice(tmp_path, receivers):
    receiver = Receiver(free_port())
    receivers.append(receiver)
    alerts = make_alerts(8)
    state = tmp_path / "state"
    first = fast_sink(receiver.url, state)
    first.deliver(alerts)
    wait_until(lambda: first.outcomes["retried"] >= 8, "failed attempts while the receiver is down")
    first.close()
    assert len(list((state / "outbox").glob("*.json"))) == 8

    receiver.start()
    second = fast_sink(receiver.url, state)
    try:
        assert second.flush(DEADLINE_S)
        second.deliver(alerts)  # the engine replays from its checkpoint: same alert ids again
        sentinel = make_alerts(1, tag="sentinel")
        second.deliver(sentinel)
        assert second.flush(DEADLINE_S)
    finally:
        second.close()

    third = fast_sink(receiver.url, state)
    try:
        third.deliver(alerts + sentinel)
        assert third.pending == 0
    finally:
        third.close()

    assert receiver.bad_signatures == 0
    assert Counter(receiver.accepted_ids()) == Counter({a.alert_id: 1 for a in alerts + sentinel})


def test_receiver_failing_forever_sends_alerts_to_the_dead_letter_file(tmp_path, receivers):
    receiver = Receiver(free_port(), respond=lambda _id, _n: (500, {})).start()
    receivers.append(receiver)
    alerts = make_alerts(4)
    sink = fast_sink(receiver.url, tmp_path / "state", max_attempts=3)
    try:
        sink.deliver(alerts)
        assert sink.flush(DEADLINE_S)
    finally:
        sink.close()

    dead = [json.loads(line) for line in (tmp_path / "state" / "dead-letter.jsonl").read_text().splitlines()]
    assert sorted(d["alert"]["alert_id"] for d in dead) == sorted(a.alert_id for a in alerts)
    assert {d["reason"] for d in dead} == {"HTTP 500 (gave up after 3 attempts)"}
    assert receiver.attempts == Counter({a.alert_id: 3 for a in alerts})
    assert receiver.bad_signatures == 0
    assert sink.outcomes == {"delivered": 0, "retried": 8, "dead_lettered": 4}


def test_retry_after_is_honoured_on_429(tmp_path, receivers):
    first_refusal: dict[str, float] = {}

    def throttle_once(message_id: str, attempt: int) -> tuple[int, dict[str, str]]:
        if attempt == 1:
            first_refusal[message_id] = time.monotonic()
            return 429, {"Retry-After": "1"}
        return 200, {}

    receiver = Receiver(free_port(), respond=throttle_once).start()
    receivers.append(receiver)
    [alert] = make_alerts(1)
    sink = fast_sink(receiver.url, tmp_path / "state")
    try:
        sink.deliver([alert])
        assert sink.flush(DEADLINE_S)
    finally:
        sink.close()

    assert receiver.attempts[alert.alert_id] == 2
    assert receiver.accepted[0]["at"] - first_refusal[alert.alert_id] >= 1.0


def test_redirects_are_not_followed_and_the_alert_is_dead_lettered(tmp_path, receivers):
    receiver = Receiver(free_port(), respond=lambda _id, _n: (302, {"Location": "http://127.0.0.1:1/elsewhere"}))
    receivers.append(receiver.start())
    [alert] = make_alerts(1)
    sink = fast_sink(receiver.url, tmp_path / "state")
    try:
        sink.deliver([alert])
        assert sink.flush(DEADLINE_S)
    finally:
        sink.close()

    [dead] = [json.loads(line) for line in (tmp_path / "state" / "dead-letter.jsonl").read_text().splitlines()]
    assert dead["alert"]["alert_id"] == alert.alert_id and "HTTP 302" in dead["reason"]
    assert receiver.attempts[alert.alert_id] == 1


def test_a_receiver_that_hangs_is_timed_out_and_retried(tmp_path, receivers):
    release = threading.Event()

    def hang_first(_id: str, attempt: int) -> tuple[int, dict[str, str]]:
        if attempt == 1:
            release.wait(DEADLINE_S)
        return 200, {}

    receiver = Receiver(free_port(), respond=hang_first)
    receivers.append(receiver.start())
    [alert] = make_alerts(1)
    sink = fast_sink(receiver.url, tmp_path / "state", timeout_s=0.3)
    try:
        sink.deliver([alert])
        wait_until(lambda: sink.outcomes["retried"] >= 1, "the first attempt to time out")
        release.set()
        assert sink.flush(DEADLINE_S)
    finally:
        release.set()
        sink.close()

    assert alert.alert_id in receiver.accepted_ids()


@pytest.mark.parametrize("url, secret, field", [
    ("ftp://example.org/x", SECRET, "webhook url"),
    ("http://127.0.0.1:9/x", "whsec_***", "webhook secret"),
])
def test_bad_settings_are_refused_naming_the_setting(tmp_path, url, secret, field):
    with pytest.raises(InvalidWebhookConfigError, match=field):
        WebhookSink(url, secret, tmp_path)


def test_an_unreadable_outbox_entry_is_set_aside_and_the_rest_delivered(tmp_path, receivers):
    receiver = Receiver(free_port()).start()
    receivers.append(receiver)
    outbox = tmp_path / "state" / "outbox"
    outbox.mkdir(parents=True)
    [good] = make_alerts(1)
    (outbox / f"000000000001-{good.alert_id}.json").write_text(good.to_json())
    (outbox / "000000000002-garbage.json").write_text('{"alert_id": "garb')

    sink = fast_sink(receiver.url, tmp_path / "state")
    try:
        assert sink.flush(DEADLINE_S)
        sink.deliver(make_alerts(1, tag="next"))
        assert sink.flush(DEADLINE_S)
    finally:
        sink.close()

    assert receiver.accepted_ids() == [good.alert_id, make_alerts(1, tag="next")[0].alert_id]
    assert (outbox / "000000000002-garbage.json.unreadable").exists()


CHILD = """
import sys, time
from ringwatch.connectors import WebhookSink
from ringwatch.graph import Alert, alert_id
url, secret, state, n, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
sink = WebhookSink(url, secret, state, timeout_s=2.0, max_attempts=1000, backoff_initial_s=0.01, backoff_max_s=0.05)
alerts = []
for i in range(n):
    accounts = (f"xa{i}", f"xb{i}", f"xc{i}")
    alerts.append(Alert(alert_id(f"xtx{i}", accounts), f"xtx{i}", accounts, (f"xp{i}", f"xq{i}", f"xtx{i}"),
                        3, 2_900.0, 1_000, 2_000, 2_001, 1.5))
if mode == "queue-then-hang":
    sink.deliver(alerts)
    print("queued", flush=True)
    while True:
        time.sleep(60)
resent = sink.flush(30)  # nothing delivered yet in this process: only the outbox can hold the alerts
sink.deliver(alerts)  # the engine's replay raises the same alert ids again
print("resent" if resent else "outbox not drained", sink.pending, flush=True)
sink.close()
"""


def test_sigkilled_engine_resends_its_outbox_after_restart(tmp_path, receivers):
    receiver = Receiver(free_port())
    receivers.append(receiver)
    state = str(tmp_path / "state")
    first = subprocess.Popen([sys.executable, "-c", CHILD, receiver.url, SECRET, state, "20", "queue-then-hang"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "queued"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        first.stdout.close()

    receiver.start()
    second = subprocess.run([sys.executable, "-c", CHILD, receiver.url, SECRET, state, "20", "resume"],
                            capture_output=True, text=True, timeout=120)

    assert second.stdout.split() == ["resent", "0"], second.stderr
    assert receiver.bad_signatures == 0
    assert Counter(receiver.accepted_ids()) == Counter({a.alert_id: 1 for a in make_alerts(20)})

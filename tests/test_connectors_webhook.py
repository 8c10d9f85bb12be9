"""WebhookSink and `ringwatch webhook resend` against a real HTTP/1.1 receiver that verifies every
signature with `standardwebhooks`: order, keep-alive, outages, refusals, restarts."""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from ringwatch.connectors import InvalidWebhookConfigError, WebhookSink
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.graph import Alert, alert_id
from tls_certs import CertificateAuthority
from webhook_receiver import Receiver, inverted_pairs

SECRET = "whsec_" + base64.b64encode(b"ringwatch-test-secret-0123456789").decode()
DEADLINE_S = 30.0


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.stop()


def receiver_on(receivers: list[Receiver], respond=None) -> Receiver:
    receiver = Receiver(free_port(), SECRET, **({"respond": respond} if respond else {}))
    receivers.append(receiver)
    return receiver


def make_alerts(n: int, tag: str = "x") -> list[Alert]:
    alerts = []
    for i in range(n):
        accounts = (f"{tag}a{i}", f"{tag}b{i}", f"{tag}c{i}")
        trigger = f"{tag}tx{i}"
        alerts.append(Alert(alert_id=alert_id(trigger, accounts), trigger_tx_id=trigger, accounts=accounts,
                            tx_ids=(f"{tag}p{i}", f"{tag}q{i}", trigger), hops=3, total_amount=2_900,
                            first_ts=1_000, last_ts=2_000, detected_at=2_001, latency_ms=1.5))
    return alerts


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def ids(alerts: list[Alert]) -> list[str]:
    return [a.alert_id for a in alerts]


def fast_sink(url: str, state_dir, **settings) -> WebhookSink:
    options = {"timeout_s": 2.0, "max_attempts": 1000, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    return WebhookSink(url, SECRET, state_dir, **{**options, **settings})


def send(url: str, state_dir, alerts: list[Alert], **settings) -> WebhookSink:
    """Deliver `alerts` in one batch and wait until the outbox is empty; returns the closed sink."""
    sink = fast_sink(url, state_dir, **settings)
    try:
        sink.deliver(alerts)
        assert sink.flush(DEADLINE_S)
    finally:
        sink.close()
    return sink


def dead_letters(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_alert_arrives_signed_once_in_order_over_one_kept_alive_connection(tmp_path, receivers):
    receiver = receiver_on(receivers).start()
    alerts = make_alerts(25)
    sink = fast_sink(receiver.url, tmp_path / "state")
    try:
        for alert in alerts:  # one at a time, as the engine raises them batch after batch
            sink.deliver([alert])
        assert sink.flush(DEADLINE_S)
    finally:
        sink.close()

    assert receiver.bad_signatures == 0
    assert receiver.accepted_ids() == ids(alerts)
    assert [Alert.from_dict(e["payload"]) for e in receiver.accepted] == alerts
    assert receiver.connections == 1  # keep-alive: no connection per alert
    assert sink.outcomes["delivered"] == 25
    assert list((tmp_path / "state" / "outbox").iterdir()) == []


def test_a_flaky_endpoint_still_receives_alerts_in_detection_order(tmp_path, receivers):
    """Before: each alert retried on its own clock, so later alerts overtook failed ones (124 inverted pairs)."""
    flaky = random.Random(12)
    receiver = receiver_on(receivers, lambda _id, _n: (503, {}) if flaky.random() < 0.4 else (200, {})).start()
    alerts = make_alerts(80)
    sink = fast_sink(receiver.url, tmp_path / "state")
    try:
        for start in range(0, len(alerts), 7):
            sink.deliver(alerts[start:start + 7])
        assert sink.flush(DEADLINE_S)
    finally:
        sink.close()

    assert sink.outcomes["retried"] > 10  # the endpoint did fail, often
    assert inverted_pairs(receiver.accepted_ids(), ids(alerts)) == 0
    assert receiver.accepted_ids() == ids(alerts)


def test_endpoint_down_then_up_holds_the_queue_and_delivers_everything_once_in_order(tmp_path, receivers):
    receiver = receiver_on(receivers)
    alerts = make_alerts(30)
    sink = fast_sink(receiver.url, tmp_path / "state", max_attempts=5)
    try:
        sink.deliver(alerts[:10])
        wait_until(lambda: sink.endpoint_down, "the endpoint to be reported down")
        sink.deliver(alerts[10:20])  # raised while it is down: they queue behind the first ten
        wait_until(lambda: sink.outcomes["retried"] >= 20, "probes while the endpoint is down")
        assert sink.pending == 20 and not (tmp_path / "state" / "dead-letter.jsonl").exists()
        receiver.start()
        sink.deliver(alerts[20:])
        assert sink.flush(DEADLINE_S)
        assert not sink.endpoint_down
    finally:
        sink.close()

    assert receiver.bad_signatures == 0
    assert receiver.accepted_ids() == ids(alerts)  # every one, once, in detection order
    assert sink.outcomes["endpoint_down"] == 1 and sink.outcomes["dead_lettered"] == 0


def test_an_endpoint_answering_500_for_a_while_gets_every_alert_once_it_recovers(tmp_path, receivers):
    """Before: after max_attempts the alerts went to the dead-letter file and were never sent again."""
    recovered = threading.Event()
    receiver = receiver_on(receivers, lambda _id, _n: (200, {}) if recovered.is_set() else (500, {})).start()
    alerts = make_alerts(6)
    sink = fast_sink(receiver.url, tmp_path / "state", max_attempts=3)
    try:
        sink.deliver(alerts)
        wait_until(lambda: sink.endpoint_down and sink.outcomes["retried"] >= 10, "the endpoint reported down")
        recovered.set()
        assert sink.flush(DEADLINE_S)
    finally:
        sink.close()

    assert receiver.accepted_ids() == ids(alerts)
    assert receiver.attempts[alerts[0].alert_id] >= 10 and receiver.attempts[alerts[1].alert_id] == 1
    assert dead_letters(tmp_path / "state" / "dead-letter.jsonl") == []


def test_an_endpoint_cut_while_connected_is_reconnected_and_misses_nothing(tmp_path, receivers):
    receiver = receiver_on(receivers).start()
    alerts = make_alerts(20)
    sink = fast_sink(receiver.url, tmp_path / "state")
    try:
        sink.deliver(alerts[:10])
        assert sink.flush(DEADLINE_S)
        receiver.stop()  # the kept-alive connection is cut under the sender
        sink.deliver(alerts[10:])
        wait_until(lambda: sink.outcomes["retried"] >= 3, "failed attempts while the endpoint is gone")
        receiver.start()
        assert sink.flush(DEADLINE_S)
    finally:
        sink.close()

    assert receiver.accepted_ids() == ids(alerts)
    assert len(receiver.used_connections()) == 2


def test_a_refused_alert_is_dead_lettered_and_the_queue_moves_on(tmp_path, receivers):
    alerts = make_alerts(5)
    poison = alerts[2].alert_id
    receiver = receiver_on(receivers, lambda message_id, _n: (422, {}) if message_id == poison else (200, {})).start()
    sink = send(receiver.url, tmp_path / "state", alerts)

    assert receiver.accepted_ids() == [a for a in ids(alerts) if a != poison]
    [dead] = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert dead["alert"]["alert_id"] == poison and dead["reason"] == "HTTP 422 (not retried)"
    assert receiver.attempts[poison] == 1
    assert sink.outcomes == {"delivered": 4, "retried": 0, "dead_lettered": 1, "endpoint_down": 0}


def test_restart_resends_the_outbox_in_order_and_a_replay_delivers_nothing_twice(tmp_path, receivers):
    receiver = receiver_on(receivers)
    alerts = make_alerts(8)
    state = tmp_path / "state"
    first = fast_sink(receiver.url, state)
    first.deliver(alerts)
    wait_until(lambda: first.outcomes["retried"] >= 8, "failed attempts while the receiver is down")
    first.close()
    assert sum(len(f.read_text().splitlines()) for f in (state / "outbox").iterdir()) == 8

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
    assert receiver.accepted_ids() == ids(alerts + sentinel)


def test_retry_after_is_honoured_on_429(tmp_path, receivers):
    first_refusal: dict[str, float] = {}

    def throttle_once(message_id: str, attempt: int) -> tuple[int, dict[str, str]]:
        if attempt == 1:
            first_refusal[message_id] = time.monotonic()
            return 429, {"Retry-After": "1"}
        return 200, {}

    receiver = receiver_on(receivers, throttle_once).start()
    [alert] = make_alerts(1)
    send(receiver.url, tmp_path / "state", [alert])

    assert receiver.attempts[alert.alert_id] == 2
    assert receiver.accepted[0]["at"] - first_refusal[alert.alert_id] >= 1.0


def test_redirects_are_not_followed_and_the_alert_is_dead_lettered(tmp_path, receivers):
    receiver = receiver_on(receivers, lambda _id, _n: (302, {"Location": "http://127.0.0.1:1/elsewhere"})).start()
    [alert] = make_alerts(1)
    send(receiver.url, tmp_path / "state", [alert])

    [dead] = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert dead["alert"]["alert_id"] == alert.alert_id and "HTTP 302" in dead["reason"]
    assert receiver.attempts[alert.alert_id] == 1


def test_a_receiver_that_hangs_is_timed_out_and_retried(tmp_path, receivers):
    release = threading.Event()

    def hang_first(_id: str, attempt: int) -> tuple[int, dict[str, str]]:
        if attempt == 1:
            release.wait(DEADLINE_S)
        return 200, {}

    receiver = receiver_on(receivers, hang_first).start()
    alerts = make_alerts(3)
    sink = fast_sink(receiver.url, tmp_path / "state", timeout_s=0.3)
    try:
        sink.deliver(alerts)
        wait_until(lambda: sink.outcomes["retried"] >= 1, "the first attempt to time out")
        release.set()
        assert sink.flush(DEADLINE_S)
    finally:
        release.set()
        sink.close()

    # The hung first attempt may still be answered 200 after the sender gave up on it: at least once, in order.
    assert list(dict.fromkeys(receiver.accepted_ids())) == ids(alerts)


@pytest.mark.parametrize("url, secret, field", [
    ("ftp://example.org/x", SECRET, "webhook url"),
    ("http://[::1/x", SECRET, "webhook url"),
    ("http://127.0.0.1:99999/x", SECRET, "webhook url"),
    ("http://127.0.0.1:9/x", "whsec_***", "webhook secret"),
])
def test_bad_settings_are_refused_naming_the_setting(tmp_path, url, secret, field):
    with pytest.raises(InvalidWebhookConfigError, match=field):
        WebhookSink(url, secret, tmp_path)


def test_outbox_lines_not_sealed_by_this_sink_are_set_aside_never_sent(tmp_path, receivers):
    """Someone who can write state_dir plants alerts in the outbox: the sender would sign them with the real
    secret, so only lines sealed with that secret are sent; the rest are set aside with an ERROR line."""
    receiver = receiver_on(receivers)  # not started yet: the genuine alert stays in the outbox
    state, outbox = tmp_path / "state", tmp_path / "state" / "outbox"
    [genuine] = make_alerts(1)
    sink = fast_sink(receiver.url, state)
    sink.deliver([genuine])
    sink.close()
    [forged] = make_alerts(1, tag="forged")
    other_secret = "whsec_" + base64.b64encode(b"someone-else-s-secret-0123456789").decode()
    other = WebhookSink(f"http://127.0.0.1:{free_port()}/x", other_secret, tmp_path / "other", max_attempts=1,
                        backoff_initial_s=0.01, backoff_max_s=0.05)
    other.deliver(make_alerts(1, tag="other"))
    other.close()
    (outbox / "000000000007.jsonl").write_text(forged.to_json() + "\n")  # plain alert JSON
    (outbox / "000000000008.jsonl").write_bytes(next((tmp_path / "other" / "outbox").iterdir()).read_bytes())
    (outbox / "000000000009.jsonl").write_text('{"alert_id": "garb\n')

    receiver.start()
    sink = fast_sink(receiver.url, state)
    try:
        assert sink.flush(DEADLINE_S)
        sink.deliver(make_alerts(1, tag="next"))
        assert sink.flush(DEADLINE_S)
    finally:
        sink.close()

    assert receiver.accepted_ids() == [genuine.alert_id, make_alerts(1, tag="next")[0].alert_id]
    for name in ("000000000007.jsonl", "000000000008.jsonl", "000000000009.jsonl"):
        assert (outbox / f"{name}.unreadable").exists(), name


CHILD = """
import sys, time
from ringwatch.connectors import WebhookSink
from ringwatch.graph import Alert, alert_id
url, secret, state, n, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
sink = WebhookSink(url, secret, state, timeout_s=2.0, max_attempts=1000, backoff_initial_s=0.01, backoff_max_s=0.05)
alerts = []
for i in range(n):
    accounts = (f"xa{i}", f"xb{i}", f"xc{i}")
    alerts.append(Alert(alert_id=alert_id(f"xtx{i}", accounts), trigger_tx_id=f"xtx{i}", accounts=accounts,
                        tx_ids=(f"xp{i}", f"xq{i}", f"xtx{i}"), hops=3, total_amount=2_900, first_ts=1_000,
                        last_ts=2_000, detected_at=2_001, latency_ms=1.5))
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


def test_sigkilled_engine_resends_its_outbox_in_order_after_restart(tmp_path, receivers):
    receiver = receiver_on(receivers)
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
    assert receiver.accepted_ids() == ids(make_alerts(20))


# ---- ringwatch webhook resend ------------------------------------------------------------------------


def resend_cli(*args: str, secret: str | None = SECRET) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RINGWATCH_WEBHOOK_SECRET"}
    if secret is not None:
        env["RINGWATCH_WEBHOOK_SECRET"] = secret
    return subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "webhook", "resend", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def refused_then_fixed(receivers: list[Receiver], tmp_path, alerts: list[Alert]) -> tuple[Receiver, object]:
    """A receiver that refused every alert (400) until it was fixed: a dead-letter file holding them all."""
    fixed = threading.Event()
    receiver = receiver_on(receivers, lambda _id, _n: (200, {}) if fixed.is_set() else (400, {})).start()
    send(receiver.url, tmp_path / "state", alerts)
    fixed.set()
    return receiver, tmp_path / "state" / "dead-letter.jsonl"


def test_resend_posts_a_dead_letter_file_in_order_with_the_alert_ids(tmp_path, receivers):
    alerts = make_alerts(7)
    receiver, dead_letter_file = refused_then_fixed(receivers, tmp_path, alerts)
    assert [d["alert"]["alert_id"] for d in dead_letters(dead_letter_file)] == ids(alerts)
    assert receiver.accepted_ids() == []

    result = resend_cli(str(dead_letter_file), "--url", receiver.url)

    assert result.returncode == 0, result.stderr
    assert "7 of 7 alerts delivered" in result.stdout
    assert receiver.accepted_ids() == ids(alerts)  # webhook-id is still each alert's id
    assert [Alert.from_dict(e["payload"]) for e in receiver.accepted] == alerts
    assert receiver.bad_signatures == 0


def test_resend_against_a_dead_endpoint_keeps_what_was_not_delivered(tmp_path, receivers):
    alerts = make_alerts(4)
    receiver, dead_letter_file = refused_then_fixed(receivers, tmp_path, alerts)
    receiver.stop()
    remaining = tmp_path / "left.jsonl"

    result = resend_cli(str(dead_letter_file), "--url", receiver.url, "--max-attempts", "2",
                        "--backoff-initial", "10ms", "--remaining", str(remaining))

    assert result.returncode == 1
    assert "0 of 4 alerts delivered" in result.stdout and str(remaining) in result.stdout
    assert [d["alert"]["alert_id"] for d in dead_letters(remaining)] == ids(alerts)
    receiver.start()
    again = resend_cli(str(remaining), "--url", receiver.url)
    assert again.returncode == 0, again.stderr
    assert receiver.accepted_ids() == ids(alerts)


def test_resend_takes_the_secret_from_a_file_and_refuses_to_run_without_one(tmp_path, receivers):
    alerts = make_alerts(2)
    receiver, dead_letter_file = refused_then_fixed(receivers, tmp_path, alerts)
    missing = resend_cli(str(dead_letter_file), "--url", receiver.url, secret=None)
    assert missing.returncode == 2 and "RINGWATCH_WEBHOOK_SECRET" in missing.stderr
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    result = resend_cli(str(dead_letter_file), "--url", receiver.url, "--secret-file", str(secret_file), secret=None)
    assert result.returncode == 0, result.stderr
    assert receiver.accepted_ids() == ids(alerts)


def test_resend_names_a_line_that_is_not_an_alert(tmp_path):
    bad = tmp_path / "dead.jsonl"
    bad.write_text(json.dumps({"alert": make_alerts(1)[0].to_dict(), "reason": "x"}) + "\n{oops\n")
    result = resend_cli(str(bad), "--url", f"http://127.0.0.1:{free_port()}/x")
    assert result.returncode == 2 and f"{bad} line 2" in result.stderr


class _ForwardProxy(BaseHTTPRequestHandler):
    """A plain-HTTP forward proxy: takes `POST http://host:port/path`, forwards it, counts what it forwarded."""

    forwarded: list[str] = []

    def do_POST(self) -> None:
        target = urlsplit(self.path)
        body = self.rfile.read(int(self.headers["content-length"]))
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        try:
            upstream.request("POST", target.path, body=body,
                             headers={k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"})
            answer = upstream.getresponse()
            answer.read()
        finally:
            upstream.close()
        _ForwardProxy.forwarded.append(self.headers["webhook-id"])
        self.send_response(answer.status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_the_proxy_named_by_the_environment_is_used_unless_no_proxy_exempts_the_host(tmp_path, receivers,
                                                                                      monkeypatch):
    receiver = receiver_on(receivers).start()
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _ForwardProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    _ForwardProxy.forwarded = []
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        proxied, direct = make_alerts(3, tag="proxied"), make_alerts(2, tag="direct")
        send(receiver.url, tmp_path / "via-proxy", proxied)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        send(receiver.url, tmp_path / "direct", direct)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert _ForwardProxy.forwarded == ids(proxied)
    assert receiver.accepted_ids() == ids(proxied + direct) and receiver.bad_signatures == 0


def test_https_endpoints_are_verified_against_the_system_cas_or_ssl_cert_file(tmp_path, receivers, monkeypatch):
    ca = CertificateAuthority.create(tmp_path / "pki", "webhook-ca")
    receiver = Receiver(free_port(), SECRET, tls=ca.issue("receiver"))
    receivers.append(receiver.start())
    alerts = make_alerts(5)
    stranger = CertificateAuthority.create(tmp_path / "other", "someone-else")
    monkeypatch.setenv("SSL_CERT_FILE", str(stranger.path))  # a CA that did not sign the receiver's certificate
    sink = fast_sink(receiver.url, tmp_path / "state", max_attempts=3)
    try:
        sink.deliver(alerts[:1])
        wait_until(lambda: sink.endpoint_down, "the unverifiable endpoint to be reported down")
    finally:
        sink.close()
    assert receiver.accepted_ids() == []

    monkeypatch.setenv("SSL_CERT_FILE", str(ca.path))
    send(receiver.url, tmp_path / "state", alerts)  # the held alert first, then the rest, over one connection
    assert receiver.accepted_ids() == ids(alerts) and receiver.bad_signatures == 0
    assert len(receiver.used_connections()) == 1

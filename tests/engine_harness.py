"""What the engine tests share: a signature-checking webhook receiver, `ringwatch run` as a real
subprocess or an `Engine` on a thread of the test over a source it is given, topic set-up, and waiting for a
condition with a deadline."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook

from ringwatch.connectors import InjectedRing
from ringwatch.connectors.kafka_settings import PLAINTEXT, KafkaSettings
from ringwatch.runtime.auth import ClusterKeys
from ringwatch.runtime.gcs import RedisGcs
from ringwatch.stream.checkpoint import Checkpoint, FileCheckpointRecords, GcsCheckpointRecords

SECRET = "whsec_" + base64.b64encode(b"ringwatch-engine-test-secret-012").decode()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


class Receiver:
    """A webhook endpoint on a fixed port that verifies every Standard Webhooks signature.

    `status` is what it answers to valid deliveries (200 accepts; 500 refuses).
    It can be stopped and started again on the same port to play a receiver that is down.
    """

    def __init__(self, port: int, status: int = 200):
        self.port = port
        self.status = status
        self.accepted: Counter[str] = Counter()
        self.payloads: dict[str, dict] = {}
        self.attempts: Counter[str] = Counter()
        self.bad_signatures = 0
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

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
                    self._answer(400)
                    return
                message_id = self.headers["webhook-id"]
                with receiver.lock:
                    receiver.attempts[message_id] += 1
                    if receiver.status < 300:
                        receiver.accepted[message_id] += 1
                        receiver.payloads[message_id] = payload
                self._answer(receiver.status)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def alerts(self) -> list[dict]:
        with self.lock:
            return list(self.payloads.values())

    def assert_each_once(self, expected: set[str]) -> None:
        """Exactly the alert ids `expected` arrived, each accepted once, every signature valid."""
        accepted = set(self.accepted)
        assert accepted == expected, (f"{len(accepted - expected)} alerts not expected, "
                                      f"{len(expected - accepted)} missing")
        assert all(count == 1 for count in self.accepted.values()), self.accepted.most_common(3)
        assert self.bad_signatures == 0

    def delivered_rings(self, rings: list[InjectedRing]) -> int:
        """How many of `rings` arrived as an alert closed by the ring's last payment."""
        wanted = {(ring.tx_ids[-1], tuple(ring.accounts)) for ring in rings}
        found = {(a["trigger_tx_id"], tuple(a["accounts"])) for a in self.alerts()}
        return len(wanted & found)


class EngineThread:
    """An `Engine` running `source` on a thread of the test (the source's listener becomes the engine)."""

    def __init__(self, config, source):
        from ringwatch.stream import Engine

        def open_source(listener):
            source.listener = listener
            return source

        self.engine = Engine(config, source_factory=open_source)
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            self.engine.run(self._stop)
        except BaseException as exc:  # the test reads `failures`
            self.failures.append(exc)

    def start(self) -> "EngineThread":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 120.0) -> list[BaseException]:
        """Stop it (after its final checkpoint); what it raised, if anything."""
        self._stop.set()
        self._thread.join(timeout_s)
        return self.failures


class EngineProcess:
    """`python -m ringwatch.stream.cli run ...` in a subprocess, its log in `log_path`."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> "EngineProcess":
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "ringwatch.stream.cli", "-v", "run", *self.args],
                                        stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait for the final checkpoint and exit."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout_s)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL the engine and everything it started (its session)."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self._log.close()

    def ensure_stopped(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        elif self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # stray workers of a dead engine
            except ProcessLookupError:
                pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def group_checkpoint(redis_url: str, namespace: str, group: str, token: str) -> Checkpoint | None:
    """The newest aligned checkpoint of consumer group `group` on a cluster (records live in the GCS)."""
    gcs = RedisGcs(redis_url, namespace, keys=ClusterKeys.from_token(token))
    try:
        return GcsCheckpointRecords(group, kv=gcs).latest()
    finally:
        gcs.close()


def checkpointed_transactions(state_dir: Path) -> int:
    """Source records covered by the newest complete checkpoint (0 before the first)."""
    checkpoint = FileCheckpointRecords(state_dir).latest()
    return checkpoint.transactions if checkpoint else 0


def jsonl_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["alert_id"] for line in path.read_text().splitlines() if line.strip()]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The engine's /metrics as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def read_topic(bootstrap: str, topic: str, count: int, timeout_s: float = 60.0,
               settings: KafkaSettings = PLAINTEXT) -> list:
    """At least `count` messages of `topic` (all partitions) from the beginning; `settings` for TLS/SASL."""
    consumer = KafkaConsumer(**settings.consumer({"bootstrap_servers": bootstrap, "enable_auto_commit": False}))
    try:
        wait_until(lambda: consumer.partitions_for_topic(topic), timeout_s, f"topic {topic} to exist")
        consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
        consumer.seek_to_beginning()
        messages: list = []
        wait_until(lambda: messages.extend(m for batch in consumer.poll(500).values() for m in batch)
                   or len(messages) >= count, timeout_s, f"{count} messages on {topic}")
        return messages
    finally:
        consumer.close()

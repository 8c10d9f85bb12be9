"""Running ringwatch as an operator meets it: the command line, its logs, its metrics, its secrets.

Every test here drives the real `ringwatch` command in a subprocess; the
engine runs read a real topic on the session's Kafka-protocol broker, or on
Tansu behind the tests' TLS/SASL front door (tests/kafka_front.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from kafka import KafkaProducer

from engine_harness import create_topic, jsonl_ids, read_topic, scrape, wait_until
from kafka_front import KafkaFront, SaslUsers, make_certificates, server_tls
from ringwatch.connectors import EmbeddedBroker
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.connectors.kafka_settings import KafkaSecurity, KafkaSettings

DEADLINE_S = 120.0
BASE_TS = 1_714_564_800_000  # 2024-05-01T12:00:00Z
WEBHOOK_SECRET = "whsec_b3BlcmF0aW9ucy10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5"
URL_PASSWORD = "hunter2-in-the-url"
CLI = [sys.executable, "-m", "ringwatch.stream.cli"]


def ringwatch(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**_clean_environ(), **(env or {})})


def _clean_environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("RINGWATCH_") or k.startswith("RINGWATCH_TEST_")}


def test_version_names_the_installed_package():
    result = ringwatch("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ringwatch {version('ringwatch')}"


def test_a_secret_on_the_command_line_is_refused_without_echoing_it(tmp_path):
    result = ringwatch("run", "--topic", "t", "--alerts-file", str(tmp_path / "a"), "--webhook-url",
                       "http://127.0.0.1:1/", "--webhook-secret", WEBHOOK_SECRET)
    assert result.returncode == 2
    assert "--webhook-secret: refused" in result.stderr and "RINGWATCH_WEBHOOK_SECRET" in result.stderr
    assert "--webhook-secret-file" in result.stderr and WEBHOOK_SECRET not in result.stderr
    result = ringwatch("run", "--topic", "t", "--alerts-file", str(tmp_path / "a"), "--sasl-password", "pw")
    assert result.returncode == 2 and "RINGWATCH_SASL_PASSWORD" in result.stderr


@pytest.mark.parametrize("url, problem", [("http://[::1/x", "Invalid IPv6 URL"),
                                          (f"http://ops:{URL_PASSWORD}@127.0.0.1:99999/x", "Port out of range")])
def test_a_broken_webhook_url_is_one_clear_line_naming_the_setting(tmp_path, url, problem):
    result = ringwatch("run", "--topic", "t", "--alerts-file", str(tmp_path / "a"), "--webhook-url", url,
                       env={"RINGWATCH_WEBHOOK_SECRET": WEBHOOK_SECRET})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and URL_PASSWORD not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("ringwatch run: bad configuration: sinks.webhook_url: ") and problem in line


def payment(tx_id: str, src: str, dst: str, amount: str, offset_s: int) -> dict:
    """A payment in the layout of the user's topic (not ringwatch's field names)."""
    return {"id": tx_id, "from": {"acct": src}, "to": {"acct": dst}, "value": amount, "at": BASE_TS + offset_s * 1000}


def user_topic_messages() -> tuple[list[bytes], bytes]:
    """A ring P->Q->R->P, a ring through hub H (cut by max_degree 3), one schema failure."""
    payments = [payment(f"h{i}", "H", f"X{i}", "5.00", i) for i in range(5)]
    payments += [payment("a1", "A", "H", "100.00", 10), payment("a2", "H", "B", "99.00", 11),
                 payment("a3", "B", "A", "98.00", 12)]
    payments += [payment("p1", "P", "Q", "700.10", 20), payment("p2", "Q", "R", "690.20", 21),
                 payment("p3", "R", "P", "680.30", 22)]
    bad = json.dumps({"id": "bad1", "from": {"acct": "P"}, "to": {"acct": "Q"}, "value": 12.5,
                      "at": BASE_TS}).encode()
    values = [json.dumps(p).encode() for p in payments]
    values.insert(3, bad)
    return values, bad


def listening_address(port: int) -> str:
    """The local address a TCP socket listens on for `port`, from /proc/net/tcp (IPv4)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            return ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
    raise AssertionError(f"nothing listens on port {port}")


def test_a_production_run_logs_json_masks_secrets_maps_fields_and_shows_its_figures(kafka_bootstrap, unique_name,
                                                                                     tmp_path):
    topic = unique_name
    create_topic(kafka_bootstrap, topic, 1)
    values, bad = user_topic_messages()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for value in values:
        producer.send(topic, value=value)
    producer.flush(30)
    producer.close()

    schema = tmp_path / "payment.schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["id", "value", "at"],
                                  "properties": {"value": {"type": "string"}}}))
    webhook_port = free_port()  # nothing listens: the webhook sink fails and logs the URL it posts to
    config = tmp_path / "ringwatch.toml"
    config.write_text(f"""
[source]
kafka_bootstrap = "{kafka_bootstrap}"
topics = ["{topic}"]
group = "{topic}-engine"
schema_file = "{schema}"

[source.fields]
tx_id = "id"
src = "from.acct"
dst = "to.acct"
amount = "value"
ts = "at"

[sinks]
alerts_file = "{tmp_path / 'alerts.jsonl'}"
webhook_url = "http://ops:{URL_PASSWORD}@127.0.0.1:{webhook_port}/hook"
webhook_max_attempts = 1
webhook_backoff_initial = "50ms"
webhook_backoff_max = "200ms"

[kafka]
client_id = "ringwatch-ops-test"
""")
    metrics_port = free_port()
    log_path = tmp_path / "engine.log"
    with open(log_path, "wb") as log:
        engine = subprocess.Popen(
            [*CLI, "run", "--log-format", "json", "--config", str(config), "--state-dir", str(tmp_path / "state"),
             "--metrics-port", str(metrics_port), "--progress-interval", "500ms", "--checkpoint-interval", "1h",
             "--max-degree", "3"],
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            env={**_clean_environ(), "RINGWATCH_WEBHOOK_SECRET": WEBHOOK_SECRET,
                 "RINGWATCH_CHECKPOINT_URI": (tmp_path / "actor-checkpoints").as_uri(), "RINGWATCH_LINEAGE": "1"})
    try:
        wait_until(lambda: len(jsonl_ids(tmp_path / "alerts.jsonl")) >= 1 or engine.poll() is not None,
                   DEADLINE_S, "the P-Q-R ring's alert")
        assert engine.poll() is None, log_path.read_text()

        def figures() -> dict:
            return scrape(metrics_port)

        def lag_reported() -> bool:
            return any(name == "ringwatch_consumer_lag" for name, _ in figures())

        # lag is measured at each poll, not at checkpoints: no interval checkpoint is due for an hour (the
        # only one is taken when the group first assigns partitions, before anything was fetched)
        wait_until(lag_reported, DEADLINE_S, "consumer lag in /metrics")
        wait_until(lambda: "progress transactions=12" in log_path.read_text(), DEADLINE_S, "a progress line")
        wait_until(lambda: "down" in log_path.read_text(), DEADLINE_S, "the webhook sink to report its endpoint")
        metrics = figures()
        assert listening_address(metrics_port) == "127.0.0.1"
    finally:
        if engine.poll() is None:
            engine.send_signal(signal.SIGTERM)
        code = engine.wait(60)
    assert code == 0, log_path.read_text()

    alerts = {a["trigger_tx_id"]: a for a in map(json.loads, (tmp_path / "alerts.jsonl").read_text().splitlines())}
    # tx ids and accounts read through the mapping; the ring through hub H (7 payments > max_degree 3) is cut
    # (a hub's payments are not scanned), and the cut is counted below
    assert sorted(alerts) == ["p3"]
    assert sorted(alerts["p3"]["accounts"]) == ["P", "Q", "R"] and not alerts["p3"]["truncated"]

    def value(name: str, **labels: str) -> float:
        return metrics[(name, tuple(sorted(labels.items())))]

    assert value("ringwatch_searches_cut_short_total") >= 1
    assert value("ringwatch_graph_edges") > 0
    assert value("ringwatch_consumer_lag", topic=topic, partition="0") == 0
    # the webhook's endpoint never answered: reported down, its alert waiting in the outbox
    assert value("ringwatch_sink_endpoint_down", sink="webhook") == 1
    assert value("ringwatch_sink_pending", sink="webhook") == len(alerts)
    assert value("ringwatch_watermark_ms", topic="*", partition="-1") >= BASE_TS
    assert value("process_resident_memory_bytes") > 0 and value("process_cpu_seconds_total") > 0
    assert value("python_gc_objects_collected_total", generation="0") >= 0

    [letter] = read_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    assert letter.value == bad
    assert dict(letter.headers)["reason"].decode() == "invalid:schema: value: Decimal('12.5') is not of type 'string'"

    text = log_path.read_text()
    records = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    [start] = [r for r in records if r["message"].startswith("engine starting ")]
    assert start["level"] == "INFO"
    for part in (f"source=kafka {kafka_bootstrap}", f"topics={topic}", "security=PLAINTEXT", "src<-from.acct",
                 f"sinks=webhook http://ops:***@127.0.0.1:{webhook_port}/hook", "backend=local", "shards=2",
                 "max_degree=3", f"metrics=127.0.0.1:{metrics_port}"):
        assert part in start["message"]
    assert any(r["logger"] == "ringwatch.progress" for r in records)
    assert URL_PASSWORD not in text and WEBHOOK_SECRET.removeprefix("whsec_") not in text
    assert "unknown environment setting" not in text


def test_the_engine_reads_and_writes_kafka_over_sasl_ssl(tmp_path, unique_name):
    """Source, dead-letter topic and alerts topic, all through a SASL_SSL listener (Tansu behind the front door)."""
    certs = make_certificates(tmp_path / "certs")
    front_port = free_port()
    (tmp_path / "tansu").mkdir()
    broker = EmbeddedBroker(workdir=tmp_path / "tansu", advertise=f"127.0.0.1:{front_port}").start()
    front = KafkaFront(broker.bootstrap, front_port, tls=server_tls(certs),
                       users=SaslUsers({"ringwatch": "engine-password"})).start()
    settings = KafkaSettings(KafkaSecurity("SASL_SSL", "SCRAM-SHA-256", "ringwatch", "engine-password",
                                           ssl_cafile=str(certs.ca)))
    topic = unique_name
    try:
        producer = KafkaProducer(**settings.producer({"bootstrap_servers": front.bootstrap, "acks": "all"}, "test"))
        messages = [{"tx_id": f"s{i}", "src": a, "dst": b, "amount": "10.00", "ts": BASE_TS + i}
                    for i, (a, b) in enumerate([("A", "B"), ("B", "C"), ("C", "A")])]
        for message in messages[:2]:
            producer.send(topic, value=json.dumps(message).encode())
        producer.send(topic, value=b'{"tx_id": "broken", ')
        producer.send(topic, value=json.dumps(messages[2]).encode())
        producer.flush(30)
        producer.close()

        password_file = tmp_path / "sasl-password"
        password_file.write_text("engine-password\n")
        log_path = tmp_path / "engine.log"
        with open(log_path, "wb") as log:
            engine = subprocess.Popen(
                [*CLI, "run", "--kafka-bootstrap", front.bootstrap, "--topic", topic, "--group", f"{topic}-engine",
                 "--state-dir", str(tmp_path / "state"), "--alerts-topic", f"{topic}.alerts",
                 "--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-256",
                 "--sasl-username", "ringwatch", "--sasl-password-file", str(password_file),
                 "--ssl-cafile", str(certs.ca), "--checkpoint-interval", "500ms"],
                stdout=subprocess.DEVNULL, stderr=log, env=_clean_environ(), start_new_session=True)
        try:
            alerts = read_topic(front.bootstrap, f"{topic}.alerts", 1, DEADLINE_S, settings)
            letters = read_topic(front.bootstrap, f"{topic}.dlq", 1, DEADLINE_S, settings)
        finally:
            engine.send_signal(signal.SIGTERM)
            code = engine.wait(60)
        assert code == 0, log_path.read_text()
        assert sorted(json.loads(alerts[0].value)["accounts"]) == ["A", "B", "C"]
        assert letters[0].value == b'{"tx_id": "broken", '
        assert dict(letters[0].headers)["reason"].startswith(b"malformed")
        assert not front.refusals
        assert "engine-password" not in log_path.read_text()
    finally:
        front.stop()
        broker.stop()



@pytest.mark.parametrize("flag", ["--metrics-port", "--query-port"])
def test_a_port_in_use_is_one_clear_line_naming_the_setting(kafka_bootstrap, unique_name, tmp_path, flag):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = ringwatch("run", "--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name,
                           "--alerts-file", str(tmp_path / "alerts.jsonl"), "--state-dir", str(tmp_path / "state"),
                           flag, str(port), env={"RINGWATCH_QUERY_TOKEN": "a-query-token"}, timeout=DEADLINE_S)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("ringwatch run:")]
    setting = {"--metrics-port": "service.metrics_port", "--query-port": "service.query_port"}[flag]
    assert line.startswith(f"ringwatch run: bad configuration: {setting}: cannot listen on 127.0.0.1:{port}")


def test_metrics_listen_where_metrics_host_says(kafka_bootstrap, unique_name, tmp_path):
    """127.0.0.1 by default (checked in the production run above); --metrics-host opens it to other machines."""
    port = free_port()
    engine = subprocess.Popen([*CLI, "run", "--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name,
                               "--alerts-file", str(tmp_path / "alerts.jsonl"), "--state-dir", str(tmp_path / "state"),
                               "--metrics-port", str(port), "--metrics-host", "0.0.0.0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_clean_environ(),
                              start_new_session=True)
    try:
        wait_until(lambda: engine.poll() is not None or any(n == "ringwatch_batches_total" for n, _ in _scraped(port)),
                   DEADLINE_S, "/metrics to answer")
        assert engine.poll() is None
        assert listening_address(port) == "0.0.0.0"
    finally:
        os.killpg(engine.pid, signal.SIGTERM)
        engine.wait(60)


def _scraped(port: int) -> dict:
    try:
        return scrape(port)
    except OSError:
        return {}

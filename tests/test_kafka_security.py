"""Kafka over TLS and SASL as a user meets it: a secured listener, the client settings, a real topic read.

What runs against what: the Kafka clients are kafka-python's own TLS and SASL
code, configured only through `KafkaSettings`; the listener is the tests'
`KafkaFront` (TLS and SASL terminated per Kafka's wire protocol) in front of a
real Tansu broker, because Tansu 0.6.0 cannot serve TLS or complete a SASL
login itself (see tests/kafka_front.py). `test_tansu_offers_scram_and_refuses_a_stranger`
talks SASL to Tansu's own `--authentication` listener as far as it goes.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine_harness import create_topic, wait_until
from kafka_front import KafkaFront, SaslUsers, make_certificates, server_tls
from ringwatch.connectors import EmbeddedBroker, KafkaConnectorError, KafkaSink, KafkaSource, produce_transactions
from ringwatch.connectors.embedded_broker import free_port, tansu_binary
from ringwatch.connectors.kafka_settings import KafkaSecurity, KafkaSettings, KafkaSettingsError
from ringwatch.graph import Transaction

DEADLINE_S = 60
PASSWORD = "correct horse battery staple"


class SecuredKafka:
    """Tansu behind a `KafkaFront`: start with `secured_kafka(tls=..., users=...)`."""

    def __init__(self, workdir: Path, tls, users: SaslUsers | None):
        front_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(workdir=workdir, advertise=f"127.0.0.1:{front_port}").start()
        self.front = KafkaFront(self.broker.bootstrap, front_port, tls=tls, users=users).start()

    @property
    def bootstrap(self) -> str:
        return self.front.bootstrap

    def stop(self) -> None:
        self.front.stop()
        self.broker.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def secured_kafka(tmp_path) -> Iterator:
    started: list[SecuredKafka] = []

    def start(*, tls=None, users: SaslUsers | None = None) -> SecuredKafka:
        started.append(SecuredKafka(tmp_path / f"tansu-{len(started)}", tls, users))
        return started[-1]

    yield start
    for kafka in started:
        kafka.stop()


def payments(n: int = 20) -> list[Transaction]:
    return [Transaction(f"tx-{i}", f"A{i % 5}", f"A{(i + 1) % 5}", 10 + i, 1_700_000_000_000 + i) for i in range(n)]


def read_all(source: KafkaSource, count: int) -> list:
    records: list = []
    deadline = time.monotonic() + DEADLINE_S
    while len(records) < count:
        assert time.monotonic() < deadline, f"read {len(records)} of {count}"
        records += source.poll(max_records=500, timeout_ms=200)
    return records


def round_trip(bootstrap: str, topic: str, settings: KafkaSettings) -> list[str]:
    """Produce payments and consume them back as a consumer group member, both with `settings`."""
    sent = payments()
    produce_transactions(bootstrap, topic, sent, timeout_s=DEADLINE_S, settings=settings)
    source = KafkaSource(bootstrap, topic, f"{topic}-group", settings=settings, bootstrap_timeout_ms=10_000)
    try:
        return sorted(record.transaction.tx_id for record in read_all(source, len(sent)))
    finally:
        source.close()


def test_tls_consumer_reads_a_real_topic_and_checks_the_broker_certificate(secured_kafka, certs, unique_name):
    kafka = secured_kafka(tls=server_tls(certs))
    settings = KafkaSettings(KafkaSecurity("SSL", ssl_cafile=str(certs.ca)))
    assert round_trip(kafka.bootstrap, unique_name, settings) == sorted(tx.tx_id for tx in payments())

    untrusted = KafkaSettings(KafkaSecurity("SSL", ssl_cafile=str(certs.other_ca)))
    with pytest.raises(KafkaConnectorError, match=f"cannot reach Kafka at {kafka.bootstrap}.*(?i:certificate)"):
        KafkaSource(kafka.bootstrap, unique_name, "g2", settings=untrusted, bootstrap_timeout_ms=3_000)
    with pytest.raises(KafkaConnectorError, match=f"cannot reach Kafka at {kafka.bootstrap}"):
        KafkaSource(kafka.bootstrap, unique_name, "g3", bootstrap_timeout_ms=3_000)  # PLAINTEXT to a TLS port


def test_mutual_tls_needs_the_client_certificate(secured_kafka, certs, unique_name):
    kafka = secured_kafka(tls=server_tls(certs, require_client_cert=True))
    settings = KafkaSettings(KafkaSecurity("SSL", ssl_cafile=str(certs.ca), ssl_certfile=str(certs.client_cert),
                                           ssl_keyfile=str(certs.client_key)))
    assert round_trip(kafka.bootstrap, unique_name, settings) == sorted(tx.tx_id for tx in payments())
    with pytest.raises(KafkaConnectorError, match=f"cannot reach Kafka at {kafka.bootstrap}"):
        KafkaSource(kafka.bootstrap, unique_name, "g2", bootstrap_timeout_ms=3_000,
                    settings=KafkaSettings(KafkaSecurity("SSL", ssl_cafile=str(certs.ca))))


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"])
def test_sasl_consumer_and_producer_log_in_with_each_mechanism(secured_kafka, tmp_path, unique_name, mechanism):
    token = secrets.token_urlsafe(24)
    kafka = secured_kafka(users=SaslUsers({"ringwatch": PASSWORD}, bearer_token=token))
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    if mechanism == "OAUTHBEARER":
        security = KafkaSecurity("SASL_PLAINTEXT", mechanism, sasl_oauth_token_file=str(token_file))
    else:
        security = KafkaSecurity("SASL_PLAINTEXT", mechanism, "ringwatch", PASSWORD)

    assert round_trip(kafka.bootstrap, unique_name, KafkaSettings(security)) == sorted(tx.tx_id for tx in payments())
    assert {login[0] for login in kafka.front.logins} == {mechanism}
    assert not kafka.front.refusals


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_a_wrong_password_is_a_clear_error_not_a_hang(secured_kafka, unique_name, mechanism):
    kafka = secured_kafka(users=SaslUsers({"ringwatch": PASSWORD}))
    wrong = KafkaSettings(KafkaSecurity("SASL_PLAINTEXT", mechanism, "ringwatch", "not the password"))
    started = time.monotonic()
    with pytest.raises(KafkaConnectorError, match=f"cannot reach Kafka at {kafka.bootstrap}.*(?i:authentication)"):
        KafkaSource(kafka.bootstrap, unique_name, "g", settings=wrong, bootstrap_timeout_ms=5_000)
    assert time.monotonic() - started < DEADLINE_S
    assert kafka.front.refusals and not kafka.front.logins


def test_sasl_ssl_logs_in_the_consumer_the_dead_letter_producer_and_the_alerts_sink(secured_kafka, certs, tmp_path,
                                                                                    unique_name):
    kafka = secured_kafka(tls=server_tls(certs), users=SaslUsers({"ringwatch": PASSWORD}))
    settings = KafkaSettings(KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "ringwatch", PASSWORD,
                                           ssl_cafile=str(certs.ca)))
    assert round_trip(kafka.bootstrap, unique_name, settings) == sorted(tx.tx_id for tx in payments())
    sink = KafkaSink(kafka.bootstrap, f"{unique_name}.alerts", tmp_path / "state", settings=settings)
    sink.close()
    # producer of the payments, consumer and its dead-letter producer, the alerts producer: all logged in
    assert {user for _, user in kafka.front.logins} == {"ringwatch"} and len(kafka.front.logins) >= 4
    assert not kafka.front.refusals


def test_tansu_offers_scram_and_refuses_a_stranger(tmp_path):
    """Tansu's own SASL: the handshake picks SCRAM-SHA-512, the login of an unknown user is refused."""
    port = free_port()
    log = open(tmp_path / "tansu.log", "wb")
    broker = subprocess.Popen([tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                               "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
                               "--storage-engine", "memory://tansu/", "--authentication"],
                              stdout=log, stderr=subprocess.STDOUT, env={"RUST_LOG": "tansu_auth=debug"})
    try:
        stranger = KafkaSettings(KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-512", "nobody", "guess"))
        with pytest.raises(KafkaConnectorError, match=f"cannot reach Kafka at 127.0.0.1:{port}"):
            KafkaSource(f"127.0.0.1:{port}", "payments", "g", settings=stranger, bootstrap_timeout_ms=3_000)
    finally:
        broker.terminate()
        broker.wait(10)
        log.close()
    tansu_log = (tmp_path / "tansu.log").read_text(errors="replace")
    assert 'mechanism: "SCRAM-SHA-512"' in tansu_log


def test_generate_produces_over_sasl_ssl_with_the_password_from_a_file(secured_kafka, certs, tmp_path, unique_name):
    """`ringwatch generate` takes the same [kafka] settings as `run`: a secured topic needs no other tool."""
    kafka = secured_kafka(tls=server_tls(certs), users=SaslUsers({"ringwatch": PASSWORD}))
    password_file = tmp_path / "sasl-password"
    password_file.write_text(PASSWORD + "\n")
    config = tmp_path / "ringwatch.toml"
    config.write_text(f'[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-256"\n'
                      f'ssl_cafile = "{certs.ca}"\nclient_id = "generator"\n')
    generate = [sys.executable, "-m", "ringwatch.stream.cli", "generate", "--transactions", "300", "--accounts", "100",
                "--rings", "2", "--seed", "5", "--kafka-bootstrap", kafka.bootstrap, "--topic", unique_name,
                "--truth", str(tmp_path / "truth.json"), "--config", str(config)]

    refused = subprocess.run(generate, capture_output=True, text=True, timeout=DEADLINE_S)
    assert refused.returncode == 2 and "kafka.sasl_username" in refused.stderr, refused.stderr

    done = subprocess.run([*generate, "--sasl-username", "ringwatch", "--sasl-password-file", str(password_file)],
                          capture_output=True, text=True, timeout=DEADLINE_S * 2)
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    assert kafka.front.logins and {login for login in kafka.front.logins} == {("SCRAM-SHA-256", "ringwatch")}
    source = KafkaSource(kafka.bootstrap, unique_name, f"{unique_name}-group", bootstrap_timeout_ms=10_000,
                         settings=KafkaSettings(KafkaSecurity("SASL_SSL", "SCRAM-SHA-256", "ringwatch", PASSWORD,
                                                              ssl_cafile=str(certs.ca))))
    try:
        assert len({record.transaction.tx_id for record in read_all(source, 300)}) == 300
    finally:
        source.close()

    wrong = subprocess.run([*generate, "--sasl-username", "ringwatch"], capture_output=True, text=True,
                           timeout=DEADLINE_S * 2, env={**os.environ, "RINGWATCH_SASL_PASSWORD": "not it"})
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr and "not it" not in wrong.stderr, wrong.stderr
    last = wrong.stderr.strip().splitlines()[-1]
    assert last.startswith("ringwatch generate: ") and kafka.bootstrap in last and "authentication" in last.lower(), \
        wrong.stderr

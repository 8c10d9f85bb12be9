"""The engine's webhook delivery against a receiver that is down for a while, fails for a while, or refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from engine_harness import (
    SECRET,
    EngineProcess,
    checkpointed_transactions,
    create_topic,
    jsonl_ids,
    scrape,
    wait_until,
)
from ringwatch.connectors import SyntheticConfig, generate, produce_transactions
from ringwatch.connectors.embedded_broker import free_port
from webhook_receiver import Receiver, inverted_pairs

DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def stream():
    return generate(SyntheticConfig(n_transactions=3_000, n_accounts=1_000, n_rings=5, seed=5))


@pytest.fixture
def switch() -> threading.Event:
    """Cleared: the receiver fails (see each test); set: it accepts."""
    return threading.Event()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(free_port(), SECRET)
    yield receiver
    receiver.stop()


def start_engine(bootstrap: str, topic: str, tmp_path, receiver: Receiver, *extra: str) -> EngineProcess:
    return EngineProcess(["--kafka-bootstrap", bootstrap, "--topic", topic, "--group", f"{topic}-engine",
                          "--state-dir", str(tmp_path / "state"), "--alerts-file", str(tmp_path / "alerts.jsonl"),
                          "--webhook-url", receiver.url, "--checkpoint-interval", "1s", *extra],
                         tmp_path / "engine.log", env={"RINGWATCH_WEBHOOK_SECRET": SECRET}).start()


def run_backlog(kafka_bootstrap, topic, tmp_path, stream, receiver, engines, *extra: str
                ) -> tuple[EngineProcess, list[str]]:
    """Every payment through the engine; the alerts it raised, in detection order (its JSON-lines file)."""
    create_topic(kafka_bootstrap, topic, 1)
    produce_transactions(kafka_bootstrap, topic, stream.transactions)
    engine = start_engine(kafka_bootstrap, topic, tmp_path, receiver, "--webhook-backoff-initial", "50ms",
                          "--webhook-backoff-max", "300ms", "--webhook-max-attempts", "3", *extra)
    engines.append(engine)
    wait_until(lambda: checkpointed_transactions(tmp_path / "state") == len(stream) or not engine.alive(),
               DEADLINE_S, "every payment processed")
    raised = jsonl_ids(tmp_path / "alerts.jsonl")
    assert raised and engine.alive(), engine.log()
    return engine, raised


def test_alerts_raised_while_the_receiver_is_down_arrive_once_in_order_when_it_is_up(
        kafka_bootstrap, unique_name, tmp_path, stream, receiver, engines):
    metrics_port = free_port()
    engine, raised = run_backlog(kafka_bootstrap, unique_name, tmp_path, stream, receiver, engines,
                                 "--metrics-port", str(metrics_port))
    assert receiver.accepted_ids() == []
    wait_until(lambda: "down" in engine.log(), 30, "the endpoint reported down in the log")
    outbox = lambda: (scrape(metrics_port)[("ringwatch_sink_pending", (("sink", "webhook"),))],  # noqa: E731
                      scrape(metrics_port)[("ringwatch_sink_endpoint_down", (("sink", "webhook"),))])
    assert outbox() == (len(raised), 1)  # an operator sees the endpoint down and the alerts waiting

    receiver.start()
    wait_until(lambda: len(receiver.accepted_ids()) == len(raised), DEADLINE_S, "every alert after the receiver came back")
    wait_until(lambda: outbox() == (0, 0), 30, "the outbox emptied and the endpoint up again in /metrics")
    assert engine.terminate() == 0, engine.log()
    assert receiver.accepted_ids() == raised  # each once, in detection order
    assert inverted_pairs(receiver.accepted_ids(), raised) == 0
    delivered = {(e["payload"]["trigger_tx_id"], tuple(e["payload"]["accounts"])) for e in receiver.accepted}
    assert all((ring.tx_ids[-1], ring.accounts) in delivered for ring in stream.rings)
    assert receiver.bad_signatures == 0
    assert not (tmp_path / "state" / "webhook" / "dead-letter.jsonl").exists()


def test_a_receiver_answering_500_past_max_attempts_still_gets_every_alert_once_it_recovers(
        kafka_bootstrap, unique_name, tmp_path, stream, receiver, switch, engines):
    receiver.respond = lambda _id, _n: (200, {}) if switch.is_set() else (500, {})
    receiver.start()
    engine, raised = run_backlog(kafka_bootstrap, unique_name, tmp_path, stream, receiver, engines)
    wait_until(lambda: max(receiver.attempts.values(), default=0) > 3, 30, "more attempts than max_attempts")

    switch.set()
    wait_until(lambda: len(receiver.accepted_ids()) == len(raised), DEADLINE_S, "every alert once it answers 200")
    assert engine.terminate() == 0, engine.log()
    assert receiver.accepted_ids() == raised
    assert not (tmp_path / "state" / "webhook" / "dead-letter.jsonl").exists()


def test_alerts_the_receiver_refuses_are_dead_lettered_and_resent_by_the_cli(
        kafka_bootstrap, unique_name, tmp_path, stream, receiver, switch, engines):
    receiver.respond = lambda _id, _n: (200, {}) if switch.is_set() else (403, {})
    receiver.start()
    engine, raised = run_backlog(kafka_bootstrap, unique_name, tmp_path, stream, receiver, engines)
    dead_letter_file = tmp_path / "state" / "webhook" / "dead-letter.jsonl"

    def dead_lettered() -> list[str]:
        if not dead_letter_file.exists():
            return []
        return [json.loads(line)["alert"]["alert_id"] for line in dead_letter_file.read_text().splitlines()]

    wait_until(lambda: len(dead_lettered()) == len(raised), DEADLINE_S, "every alert in the dead-letter file")
    assert engine.terminate() == 0, engine.log()
    assert dead_lettered() == raised and receiver.accepted_ids() == []
    assert all(receiver.attempts[alert_id] == 1 for alert_id in raised), receiver.attempts

    switch.set()  # the receiver is fixed
    resent = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "webhook", "resend",
                             str(dead_letter_file), "--url", receiver.url], capture_output=True, text=True,
                            timeout=DEADLINE_S, env={**os.environ, "RINGWATCH_WEBHOOK_SECRET": SECRET})
    assert resent.returncode == 0, resent.stderr
    assert receiver.accepted_ids() == raised
    assert receiver.bad_signatures == 0

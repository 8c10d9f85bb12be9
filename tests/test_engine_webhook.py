"""The engine's webhook delivery against a receiver that is down for a while, or refuses forever."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from engine_harness import (
    SECRET,
    EngineProcess,
    Receiver,
    checkpointed_transactions,
    create_topic,
    jsonl_ids,
    wait_until,
)
from ringwatch.connectors import SyntheticConfig, generate, produce_transactions
from ringwatch.connectors.embedded_broker import free_port

DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def stream():
    return generate(SyntheticConfig(n_transactions=3_000, n_accounts=1_000, n_rings=5, seed=5))


@pytest.fixture
def engines() -> Iterator[list[EngineProcess]]:
    started: list[EngineProcess] = []
    yield started
    for engine in started:
        engine.ensure_stopped()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(free_port())
    yield receiver
    receiver.stop()


def start_engine(bootstrap: str, topic: str, tmp_path, receiver: Receiver, *extra: str) -> EngineProcess:
    return EngineProcess(["--kafka-bootstrap", bootstrap, "--topic", topic, "--group", f"{topic}-engine",
                          "--state-dir", str(tmp_path / "state"), "--alerts-file", str(tmp_path / "alerts.jsonl"),
                          "--webhook-url", receiver.url, "--checkpoint-interval", "1s", *extra],
                         tmp_path / "engine.log", env={"RINGWATCH_WEBHOOK_SECRET": SECRET}).start()


def test_alerts_raised_while_the_receiver_is_down_arrive_once_it_is_up(kafka_bootstrap, unique_name, tmp_path,
                                                                       stream, receiver, engines):
    create_topic(kafka_bootstrap, unique_name, 1)
    produce_transactions(kafka_bootstrap, unique_name, stream.transactions)
    engine = start_engine(kafka_bootstrap, unique_name, tmp_path, receiver, "--webhook-backoff-initial", "100ms",
                          "--webhook-backoff-max", "1s", "--webhook-max-attempts", "1000")
    engines.append(engine)
    wait_until(lambda: checkpointed_transactions(tmp_path / "state") == len(stream) or not engine.alive(),
               DEADLINE_S, "every payment processed while the receiver is down")
    raised = set(jsonl_ids(tmp_path / "alerts.jsonl"))
    assert raised and not receiver.accepted
    wait_until(lambda: "connection" in engine.log().lower() or "refused" in engine.log().lower(), 30,
               "a failed delivery attempt in the log")

    receiver.start()
    wait_until(lambda: set(receiver.accepted) == raised, DEADLINE_S, "every alert after the receiver came back")
    assert engine.terminate() == 0, engine.log()
    assert receiver.delivered_rings(stream.rings) == len(stream.rings)
    assert all(count == 1 for count in receiver.accepted.values())
    assert receiver.bad_signatures == 0


def test_alerts_refused_forever_end_in_the_dead_letter_file(kafka_bootstrap, unique_name, tmp_path, stream,
                                                            receiver, engines):
    receiver.status = 500
    receiver.start()
    create_topic(kafka_bootstrap, unique_name, 1)
    produce_transactions(kafka_bootstrap, unique_name, stream.transactions)
    engine = start_engine(kafka_bootstrap, unique_name, tmp_path, receiver, "--webhook-backoff-initial", "50ms",
                          "--webhook-backoff-max", "200ms", "--webhook-max-attempts", "3")
    engines.append(engine)
    dead_letter_file = tmp_path / "state" / "webhook" / "dead-letter.jsonl"

    def dead_lettered() -> set[str]:
        if not dead_letter_file.exists():
            return set()
        return {json.loads(line)["alert"]["alert_id"] for line in dead_letter_file.read_text().splitlines()}

    wait_until(lambda: checkpointed_transactions(tmp_path / "state") == len(stream) or not engine.alive(),
               DEADLINE_S, "every payment processed")
    raised = set(jsonl_ids(tmp_path / "alerts.jsonl"))
    assert raised
    wait_until(lambda: dead_lettered() == raised, DEADLINE_S, "every alert in the dead-letter file")
    assert engine.terminate() == 0, engine.log()
    assert not receiver.accepted
    assert all(receiver.attempts[alert_id] == 3 for alert_id in raised), receiver.attempts

"""Poison input mixed into the stream: every bad message in the dead-letter topic with its reason, partition,
offset and original key and bytes, the rest processed — including a payment dated in 2150 (`future`: it must not make later payments late) and one
whose `ts` is 1e308 (`invalid:ts`: it must not reach, let alone crash, a shard)."""

from __future__ import annotations

import json

from kafka import KafkaProducer

from engine_harness import (
    EngineProcess,
    EngineThread,
    checkpointed_transactions,
    create_topic,
    jsonl_ids,
    read_topic,
    scrape,
    wait_until,
)
from ringwatch.connectors import FileSource, SyntheticConfig, generate
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.graph import Transaction
from ringwatch.stream import Config, FileCheckpointRecords
from ringwatch.stream.config import EngineConfig, GraphConfig, SinksConfig, SourceConfig

DEADLINE_S = 120.0
MAX_MESSAGE_BYTES = 10_000
DAY_MS = 86_400_000
YEAR_2150_MS = 5_680_281_600_000  # ahead of any wall clock, inside the record model's 1970-2200


def poison_messages(first_ts: int, reused: Transaction) -> dict[str, bytes]:
    """Bad messages by the reason category the dead-letter header must carry.

    `conflict` reuses `reused`'s tx_id with another amount; it is the last one
    inserted, right after `reused` (see the test), so it is not late.
    """
    return {
        "malformed": b'{"tx_id": "p1", "src": "a", ',
        "invalid:dst": json.dumps({"tx_id": "p2", "src": "a", "amount": 5, "ts": first_ts}).encode(),
        "invalid:amount": json.dumps({"tx_id": "p3", "src": "a", "dst": "b", "amount": -5, "ts": first_ts}).encode(),
        "oversize": json.dumps({"tx_id": "p4", "src": "a", "dst": "b", "amount": 1, "ts": first_ts,
                                "pad": "x" * (2 * MAX_MESSAGE_BYTES)}).encode(),
        "late": json.dumps({"tx_id": "p5", "src": "a", "dst": "b", "amount": 1, "ts": first_ts - 30 * DAY_MS}).encode(),
        "future": json.dumps({"tx_id": "p6", "src": "a", "dst": "b", "amount": 1, "ts": YEAR_2150_MS}).encode(),
        "invalid:ts": json.dumps({"tx_id": "p7", "src": "a", "dst": "b", "amount": 1, "ts": 1e308}).encode(),
        "conflict": json.dumps({**reused.to_dict(), "amount": str(reused.amount + 1)}).encode(),
    }


def test_poison_goes_to_the_dead_letter_topic_with_reasons(kafka_bootstrap, unique_name, tmp_path, engines):
    stream = generate(SyntheticConfig(n_transactions=3_000, n_accounts=1_000, n_rings=5, seed=3))
    transactions = stream.transactions
    step = len(transactions) // (len(poison_messages(0, transactions[0])) + 1)
    # the last poison message goes in at len(transactions) - step: right after this payment
    poison = poison_messages(transactions[0].ts, transactions[len(transactions) - step - 1])
    create_topic(kafka_bootstrap, unique_name, 1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=4 * MAX_MESSAGE_BYTES)
    values = [json.dumps(tx.to_dict()).encode() for tx in transactions]
    for index, bad in enumerate(reversed(list(poison.values()))):
        values.insert(len(values) - (index + 1) * step, bad)
    keys = [f"key-{offset}".encode() for offset in range(len(values))]
    for key, value in zip(keys, values):
        producer.send(unique_name, key=key, value=value)
    producer.flush(30)
    producer.close()

    state_dir, alerts_file = tmp_path / "state", tmp_path / "alerts.jsonl"
    metrics_port = free_port()
    engine = EngineProcess(["--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name,
                            "--group", f"{unique_name}-engine", "--state-dir", str(state_dir),
                            "--alerts-file", str(alerts_file), "--checkpoint-interval", "1s",
                            "--max-message-bytes", str(MAX_MESSAGE_BYTES),
                            # batches well below the stream's length: the low watermark moves between batches, so
                            # the late payment is judged against the watermark of the ones before it
                            "--batch-max-size", "256",
                            "--metrics-port", str(metrics_port)], tmp_path / "engine.log").start()
    engines.append(engine)
    wait_until(lambda: checkpointed_transactions(state_dir) == len(values) or not engine.alive(), DEADLINE_S,
               "a checkpoint covering every message")
    metrics = scrape(metrics_port)
    assert engine.terminate() == 0, engine.log()
    assert {labels[0][1]: value for (name, labels), value in metrics.items()
            if name == "ringwatch_dead_letters_total"} == {"malformed": 1, "invalid": 3, "oversize": 1, "late": 1, "future": 1,
                                                                 "conflict": 1}

    letters = read_topic(kafka_bootstrap, f"{unique_name}.dlq", len(poison))
    assert len(letters) == len(poison)
    by_reason = {}
    for message in letters:
        headers = {name: value.decode() for name, value in message.headers}
        assert headers["topic"] == unique_name and headers["partition"] == "0"
        assert values[int(headers["offset"])] == message.value, "the dead letter is not the original bytes"
        assert keys[int(headers["offset"])] == message.key, "the dead letter does not carry the original key"
        by_reason[next(r for r in poison if headers["reason"].startswith(r))] = message.value
    assert by_reason == poison

    final = FileCheckpointRecords(state_dir).latest()
    # every valid payment, and the conflict (the graph refused it), were handed to the graph
    assert final.graph["next_seq"] == len(transactions) + 1, "a valid payment was not processed"
    triggers = {json.loads(line)["trigger_tx_id"] for line in alerts_file.read_text().splitlines()}
    assert {ring.tx_ids[-1] for ring in stream.rings} <= triggers
    assert len(jsonl_ids(alerts_file)) == len(set(jsonl_ids(alerts_file)))


def test_a_tx_id_repeated_within_one_batch_dead_letters_the_conflicting_record_itself(tmp_path):
    """Three records of one tx id in one micro-batch: the first stored, the second a conflict (other amount), the
    third a duplicate of the first. The conflict's own record — its offset and bytes — is the one dead letter."""
    stream = generate(SyntheticConfig(n_transactions=200, n_accounts=100, n_rings=2, seed=4))
    lines = [json.dumps(tx.to_dict()) for tx in stream.transactions]
    repeated = stream.transactions[100]
    conflict = json.dumps({**repeated.to_dict(), "amount": str(repeated.amount + 1)})
    lines[101:101] = [conflict, lines[100]]  # offsets 100 (stored), 101 (conflict), 102 (duplicate)
    path = tmp_path / "payments.jsonl"
    path.write_text("\n".join(lines) + "\n")
    source = FileSource(path)
    config = Config(source=SourceConfig(topics=["file"]), graph=GraphConfig(placement="in-process"),
                    engine=EngineConfig(state_dir=str(tmp_path / "state"), batch_max_size=len(lines)),
                    sinks=SinksConfig(alerts_file=str(tmp_path / "alerts.jsonl"))).validate()

    running = EngineThread(config, source).start()
    engine = running.engine
    try:
        wait_until(lambda: engine.transactions == len(lines) or running.failures, DEADLINE_S, "every record consumed")
    finally:
        running.stop(DEADLINE_S)
    assert not running.failures, running.failures
    assert engine.batches == 1, "the three records were meant to share one batch"
    assert [(letter.offset, letter.raw, letter.reason.split(":")[0]) for letter in source.dead_letters] == \
        [(101, conflict.encode(), "conflict")]

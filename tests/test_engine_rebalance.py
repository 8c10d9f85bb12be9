"""A second `ringwatch run` joins the consumer group mid-stream: partitions move, nothing lost or doubled.

- Local runtimes: each engine holds the graph of the partitions it consumes,
  so the rings are produced partition-local (all payments of an injected ring
  to one partition); background payments are spread over both partitions.
- A cluster, with the shards' checkpoint store hanging (a SIGSTOPped
  redis-server) when the second engine joins: the first engine's revoke runs
  inside kafka-python's rebalance listener, where the group waits for it, so it
  commits without taking shard checkpoints; the group settles with both engines
  in it, and once the store is back every ring arrives once.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest
from kafka import KafkaProducer

from engine_harness import SECRET, EngineProcess, create_topic, jsonl_ids, wait_until
from ringwatch.connectors import SyntheticConfig, generate, produce_transactions
from ringwatch.graph import Transaction
from ringwatch.stream import FileCheckpointRecords, detect
from runtime_cluster import TOKEN, Cluster
from services import RedisServer

N_TRANSACTIONS = 10_000
N_RINGS = 12
DEADLINE_S = 180.0


def produce(bootstrap: str, topic: str, transactions: list[Transaction], partition_of: dict[str, int]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    for tx in transactions:
        producer.send(topic, value=json.dumps(tx.to_dict()).encode(), partition=partition_of[tx.tx_id])
    producer.flush(60)
    producer.close()


def covered(state_dir) -> dict:
    checkpoint = FileCheckpointRecords(state_dir).latest()
    return checkpoint.positions if checkpoint else {}


def test_second_engine_joining_takes_partitions_without_losing_or_doubling(kafka_bootstrap, unique_name, tmp_path,
                                                                           receiver, engines):
    stream = generate(SyntheticConfig(n_transactions=N_TRANSACTIONS, n_accounts=3_000, n_rings=N_RINGS, seed=21))
    transactions = stream.transactions
    partition_of = {tx.tx_id: index % 2 for index, tx in enumerate(transactions)}
    for number, ring in enumerate(stream.rings):
        partition_of.update({tx_id: number % 2 for tx_id in ring.tx_ids})
    produced = Counter(partition_of.values())
    half = N_TRANSACTIONS // 2
    create_topic(kafka_bootstrap, unique_name, 2)
    produce(kafka_bootstrap, unique_name, transactions[:half], partition_of)

    def start(name: str) -> EngineProcess:
        engine = EngineProcess(["--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name,
                                "--group", f"{unique_name}-engines", "--state-dir", str(tmp_path / name),
                                "--webhook-url", receiver.url, "--alerts-file", str(tmp_path / f"{name}.jsonl"),
                                "--checkpoint-interval", "1s"],
                               tmp_path / f"{name}.log", env={"RINGWATCH_WEBHOOK_SECRET": SECRET}).start()
        engines.append(engine)
        return engine

    first = start("first")
    wait_until(lambda: sum(covered(tmp_path / "first").values()) == half or not first.alive(), DEADLINE_S,
               "the first engine to checkpoint the first half")
    second = start("second")
    wait_until(lambda: "partition assigned" in second.log() or not second.alive(), DEADLINE_S,
               "the second engine to be given a partition")
    produce(kafka_bootstrap, unique_name, transactions[half:], partition_of)

    def all_consumed() -> bool:
        first_pos, second_pos = covered(tmp_path / "first"), covered(tmp_path / "second")
        return all(max(first_pos.get((unique_name, p), 0), second_pos.get((unique_name, p), 0)) == produced[p]
                   for p in produced)

    wait_until(lambda: all_consumed() or not (first.alive() and second.alive()), DEADLINE_S,
               "both partitions consumed to the end")
    wait_until(lambda: receiver.delivered_rings(stream.rings) == N_RINGS, DEADLINE_S, "every injected ring")
    assert first.terminate() == 0, first.log()
    assert second.terminate() == 0, second.log()

    assert "revoked [('" in first.log(), "the first engine never gave a partition up"
    first_ids, second_ids = jsonl_ids(tmp_path / "first.jsonl"), jsonl_ids(tmp_path / "second.jsonl")
    assert second_ids, "the second engine raised no alert"
    assert not set(first_ids) & set(second_ids), "both engines raised the same alert"
    receiver.assert_each_once(set(first_ids) | set(second_ids))
    consumed = (FileCheckpointRecords(tmp_path / "first").latest().transactions
                + FileCheckpointRecords(tmp_path / "second").latest().transactions)
    assert consumed == N_TRANSACTIONS, "a payment was consumed by neither engine or by both"


@pytest.fixture
def cluster(redis_url, unique_name) -> Iterator[Cluster]:
    cluster = Cluster(redis_url, unique_name)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def checkpoint_store(tmp_path) -> Iterator[RedisServer]:
    store = RedisServer(tmp_path / "checkpoint-store").start()
    try:
        yield store
    finally:
        store.resume()
        store.stop()


def test_a_rebalance_commits_without_waiting_for_a_hanging_checkpoint_store(
        kafka_bootstrap, redis_url, unique_name, tmp_path, receiver, cluster, checkpoint_store, engines):
    stream = generate(SyntheticConfig(n_transactions=4_000, n_accounts=1_000, n_rings=10, days=6, seed=41))
    payments = stream.transactions
    half = len(payments) // 2
    expected = {alert.alert_id for alert in detect(payments, use_runtime=False)}
    first_half = {alert.alert_id for alert in detect(payments[:half], use_runtime=False)}
    cluster.start_node("node-1", workers=1)
    create_topic(kafka_bootstrap, unique_name, 4)
    produce_transactions(kafka_bootstrap, unique_name, payments[:half])

    def start(name: str) -> EngineProcess:
        engine = EngineProcess(["--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name,
                                "--group", f"{unique_name}-engines", "--state-dir", str(tmp_path / name),
                                "--webhook-url", receiver.url, "--checkpoint-interval", "1h",
                                "--address", redis_url],
                               tmp_path / f"{name}.log",
                               env={"RINGWATCH_TOKEN": TOKEN, "RINGWATCH_WEBHOOK_SECRET": SECRET,
                                    "RINGWATCH_NAMESPACE": unique_name,
                                    "RINGWATCH_CHECKPOINT_URI": checkpoint_store.url}).start()
        engines.append(engine)
        return engine

    first = start("first")
    wait_until(lambda: set(receiver.accepted) >= first_half or not first.alive(), DEADLINE_S,
               "the first engine to deliver the first half's rings")
    assert first.alive(), first.log()

    checkpoint_store.pause()  # a shard checkpoint now hangs; the revoke must not wait for one
    mark = len(first.log())
    second = start("second")
    wait_until(lambda: ("partition assigned" in first.log()[mark:] and "partition assigned" in second.log())
               or not (first.alive() and second.alive()), DEADLINE_S,
               "the group to settle with both engines while the checkpoint store hangs")
    assert first.alive() and second.alive(), first.log()[mark:] + second.log()
    after = first.log()[mark:]
    assert "partitions handed over" in after, after
    assert "lost membership" not in after and "poll timeout" not in after, after

    checkpoint_store.resume()
    produce_transactions(kafka_bootstrap, unique_name, payments[half:])
    wait_until(lambda: set(receiver.accepted) >= expected or not (first.alive() and second.alive()), DEADLINE_S,
               "every ring")
    assert first.terminate() == 0, first.log()
    assert second.terminate() == 0, second.log()
    receiver.assert_each_once(expected)

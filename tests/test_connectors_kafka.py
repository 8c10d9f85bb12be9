"""KafkaSource and KafkaSink against the real Tansu broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from ringwatch.connectors import (
    KafkaConnectorError,
    KafkaSink,
    KafkaSource,
    SourceBatch,
    SyntheticConfig,
    generate,
    next_positions,
)
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.graph import Alert, alert_id, payment_table

DEADLINE_S = 60.0


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, values: list[bytes | None], partition_of: Callable[[int], int]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4_194_304)
    try:
        for i, value in enumerate(values):
            producer.send(topic, value=value, key=str(i).encode(), partition=partition_of(i))
        producer.flush(timeout=30)
    finally:
        producer.close()


def read_topic(bootstrap: str, topic: str, until: Callable[[list], bool]) -> list:
    """Every message of `topic` (all its partitions) from the beginning, read until `until(messages)` holds."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_bytes=8_388_608)
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    consumer.seek_to_beginning()
    messages: list = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not until(messages):
            assert time.monotonic() < deadline, f"timed out reading {topic}: {len(messages)} messages so far"
            for batch in consumer.poll(timeout_ms=200).values():
                messages.extend(batch)
    finally:
        consumer.close()
    return messages


def poll_until(source: KafkaSource, count: int) -> list:
    records: list = []
    deadline = time.monotonic() + DEADLINE_S
    while len(records) < count:
        assert time.monotonic() < deadline, f"timed out: {len(records)} of {count} records"
        records.extend(source.poll(max_records=100, timeout_ms=200))
    return records


@dataclass
class Listener:
    """A `RebalanceListener` made of two callables."""

    on_revoke: Callable[[list], None] = lambda partitions: None
    on_assign: Callable[[list], None] = lambda partitions: None


@pytest.fixture
def transactions():
    return generate(SyntheticConfig(n_transactions=300, n_accounts=200, days=2, n_rings=3, seed=5)).transactions


def encoded(tx) -> bytes:
    return json.dumps(tx.to_dict()).encode()


def test_valid_messages_are_consumed_and_refused_ones_land_in_the_dlq_with_reasons(kafka_bootstrap, unique_name,
                                                                                   transactions):
    topic = unique_name
    create_topic(kafka_bootstrap, topic, 2)
    poison = {
        b'{"tx_id": "p1", "src": "a", "dst"': "malformed",
        b'[1, 2]': "malformed:expected a JSON object",
        json.dumps({"tx_id": "p2", "src": "a", "amount": 5, "ts": 1}).encode(): "invalid:dst: missing",
        json.dumps({"tx_id": "p3", "src": "a", "dst": "b", "amount": -5, "ts": 1}).encode(): "invalid:amount",
        json.dumps({"tx_id": "p4", "src": "a", "dst": "b", "amount": 5, "ts": 1,
                    "memo": "x" * 100_000}).encode(): "oversize",
    }
    values = [encoded(tx) for tx in transactions]
    for index, value in zip((10, 50, 90, 120, 250), poison):
        values.insert(index, value)
    produce(kafka_bootstrap, topic, values, partition_of=lambda i: i % 2)

    source = KafkaSource(kafka_bootstrap, topic, f"{topic}-group", max_message_bytes=50_000)
    try:
        records = poll_until(source, len(values))
        bad = [r for r in records if not r.ok]
        refused = next(r for r in records if r.ok)
        for record in bad:
            source.dead_letter(record, record.error)
        source.dead_letter(refused, "late: refused by the engine")
        source.flush_dead_letters()
    finally:
        source.close()

    assert len(records) == len(values)
    assert sorted(r.transaction.tx_id for r in records if r.ok) == sorted(tx.tx_id for tx in transactions)
    assert {r.transaction for r in records if r.ok} == set(transactions)
    assert sorted(r.raw for r in bad) == sorted(poison)
    assert all(r.key == str(values.index(r.raw)).encode() for r in bad), "a record keeps its message key"

    dlq = read_topic(kafka_bootstrap, f"{topic}.dlq", until=lambda m: len(m) >= len(poison) + 1)
    assert len(dlq) == len(poison) + 1
    by_value = {m.value: (m.key, dict(m.headers)) for m in dlq}
    assert set(by_value) == set(poison) | {refused.raw}
    for value, (key, headers) in by_value.items():
        original = next(r for r in bad + [refused] if r.raw == value)
        assert headers["reason"].decode().startswith(poison.get(value, "late"))
        assert headers["topic"].decode() == topic
        assert (int(headers["partition"]), int(headers["offset"])) == original.position[1:]
        assert key == original.key


def test_a_polls_payment_columns_judge_every_message_as_its_record_does(kafka_bootstrap, unique_name, transactions):
    """The engine reads a poll as columns (decoded in bulk, Arrow first): each message must be accepted or refused
    exactly as its record is, the values Arrow would misread included (a blank one skipped, two objects in one
    read as two rows, bytes that are not UTF-8 taken as they are)."""
    topic = unique_name
    create_topic(kafka_bootstrap, topic, 2)
    valid = transactions[0]
    pitfalls = [
        None, b"", b"   ", b'{"tx_id": "p1", ',
        encoded(transactions[1]) + encoded(transactions[2]),  # two objects: not one message's JSON
        b'{"tx_id": "p\xff", "src": "a", "dst": "b", "amount": 1, "ts": 5}',
        json.dumps({**valid.to_dict(), "tx_id": "pretty"}, indent=1).encode(),  # line breaks: valid, per-row
        json.dumps({**valid.to_dict(), "tx_id": "iso", "ts": "2024-01-01T00:00:00Z"}).encode(),
        json.dumps({**valid.to_dict(), "tx_id": "twice", "src": "a", "src ": "b"}).encode().replace(b'"src "', b'"src"'),
        json.dumps({**valid.to_dict(), "tx_id": 7}).encode(), json.dumps({**valid.to_dict(), "tx_id": "five places",
                                                                          "amount": 1.00001}).encode(),
        json.dumps({**valid.to_dict(), "tx_id": "big", "memo": "x" * 60_000}).encode(),
    ]
    values = [encoded(tx) for tx in transactions]
    for index, value in zip(range(7, 300, 23), pitfalls):
        values.insert(index, value)
    produce(kafka_bootstrap, topic, values, partition_of=lambda i: i % 2)

    source = KafkaSource(kafka_bootstrap, topic, f"{topic}-group", max_message_bytes=50_000)
    try:
        deadline, batches = time.monotonic() + DEADLINE_S, []
        while sum(len(batch) for batch in batches) < len(values):
            assert time.monotonic() < deadline, "timed out polling"
            batches.append(source.poll(max_records=1_000, timeout_ms=200))
    finally:
        source.close()

    batch = SourceBatch.joined(batches)
    records = list(batch)
    payments = batch.payments()
    assert sorted(payments.rows.tolist()) == [row for row, record in enumerate(records) if record.ok]
    assert sorted((r.position, r.error) for r in payments.rejected) == \
        sorted((r.position, r.error) for r in records if not r.ok)
    assert len(payments.rejected) == 8, [r.error for r in payments.rejected]
    expected = payment_table([records[row].transaction for row in payments.rows.tolist()])
    assert payments.table.equals(expected)


def test_committed_offsets_resume_in_a_new_consumer_of_the_group(kafka_bootstrap, unique_name, transactions):
    topic, group = unique_name, f"{unique_name}-group"
    create_topic(kafka_bootstrap, topic, 2)
    produce(kafka_bootstrap, topic, [encoded(tx) for tx in transactions], partition_of=lambda i: i % 2)

    first = KafkaSource(kafka_bootstrap, [topic], group)
    try:
        records = poll_until(first, 1)
        assert sum(first.lag().values()) > 0
        records += poll_until(first, len(transactions) - len(records))
        assert first.lag() == {(topic, 0): 0, (topic, 1): 0}
        checkpointed = [r for r in records if r.position[2] < 40]
        positions = next_positions(checkpointed)
        assert positions == {(topic, 0): 40, (topic, 1): 40}
        first.commit(positions)
        assert first.committed((topic, 0)) == 40
    finally:
        first.close()

    second = KafkaSource(kafka_bootstrap, [topic], group)
    try:
        resumed = poll_until(second, len(transactions) - 80)
    finally:
        second.close()

    assert sorted(r.position for r in resumed) == sorted(r.position for r in records if r.position[2] >= 40)


def test_a_partition_is_caught_up_only_once_everything_in_it_was_delivered(kafka_bootstrap, unique_name,
                                                                           transactions):
    """On a backlog kafka-python drains partitions one after another; one not fetched yet is not caught up."""
    topic = unique_name
    create_topic(kafka_bootstrap, topic, 4)
    produce(kafka_bootstrap, topic, [encoded(tx) for tx in transactions], partition_of=lambda i: i % 3)
    produced = {(topic, p): sum(1 for i in range(len(transactions)) if i % 3 == p) for p in range(3)}
    produced[(topic, 3)] = 0
    source = KafkaSource(kafka_bootstrap, topic, f"{topic}-group")
    delivered = dict.fromkeys(produced, 0)
    deadline = time.monotonic() + DEADLINE_S
    try:
        while True:
            for record in source.poll(max_records=7, timeout_ms=100):
                delivered[record.partition] += 1
            caught_up = source.caught_up()
            assert all(delivered[p] == produced[p] for p in caught_up), (caught_up, delivered, produced)
            if caught_up == set(produced):
                break
            assert time.monotonic() < deadline, f"never caught up: {caught_up}, {delivered}"
    finally:
        source.close()
    assert delivered == produced


def test_a_held_partition_never_stalls_and_loses_nothing(kafka_bootstrap, unique_name, transactions):
    """`hold` keeps what is read from a partition for later; once nothing else is new, it comes back anyway."""
    topic = unique_name
    create_topic(kafka_bootstrap, topic, 2)
    produce(kafka_bootstrap, topic, [encoded(tx) for tx in transactions], partition_of=lambda i: i % 2)
    source = KafkaSource(kafka_bootstrap, topic, f"{topic}-group")
    try:
        source.hold([(topic, 0)])  # held throughout
        records = poll_until(source, len(transactions))
        records += source.poll(max_records=100, timeout_ms=200)  # nothing more: none was returned twice
        assert source.caught_up() == {(topic, 0), (topic, 1)}
    finally:
        source.close()
    for p in (0, 1):
        assert [r.offset for r in records if r.partition == (topic, p)] == list(range(len(transactions) // 2))


def test_keep_alive_keeps_what_it_reads_for_the_next_poll(kafka_bootstrap, unique_name, transactions):
    topic = unique_name
    create_topic(kafka_bootstrap, topic, 1)
    produce(kafka_bootstrap, topic, [encoded(tx) for tx in transactions[:50]], partition_of=lambda i: 0)
    source = KafkaSource(kafka_bootstrap, topic, f"{topic}-group")
    try:
        records = poll_until(source, 1)
        for _ in range(5):
            source.keep_alive()
        records += poll_until(source, 50 - len(records))
    finally:
        source.close()
    assert [r.offset for r in records] == list(range(50))


def test_seek_before_assignment_applies_when_partitions_arrive(kafka_bootstrap, unique_name, transactions):
    topic = unique_name
    create_topic(kafka_bootstrap, topic, 2)
    produce(kafka_bootstrap, topic, [encoded(tx) for tx in transactions], partition_of=lambda i: i % 2)

    assigned: list = []
    source = KafkaSource(kafka_bootstrap, topic, f"{topic}-group", listener=Listener(on_assign=assigned.extend))
    try:
        source.seek({(topic, 0): 140, (topic, 1): 145})
        records = poll_until(source, 15)
    finally:
        source.close()

    assert sorted(assigned) == [(topic, 0), (topic, 1)]
    assert sorted(r.position[1:] for r in records) == [(0, o) for o in range(140, 150)] + [(1, o) for o in range(145, 150)]


def test_a_second_member_takes_over_from_the_offsets_committed_in_on_revoke(kafka_bootstrap, unique_name):
    topic, group = unique_name, f"{unique_name}-group"
    create_topic(kafka_bootstrap, topic, 2)
    stream = generate(SyntheticConfig(n_transactions=2_000, n_accounts=300, days=2, n_rings=3, seed=9))
    produce(kafka_bootstrap, topic, [encoded(tx) for tx in stream.transactions], partition_of=lambda i: i % 2)
    events: list[tuple[str, str, list]] = []
    got: dict[str, list] = {"first": [], "second": []}

    def finish_in_flight_and_commit(partitions: list) -> None:
        events.append(("first", "revoke", partitions))
        first.commit(next_positions(got["first"]))

    first = KafkaSource(kafka_bootstrap, topic, group, listener=Listener(
        on_revoke=finish_in_flight_and_commit, on_assign=lambda p: events.append(("first", "assign", p))))
    second = None
    try:
        deadline = time.monotonic() + DEADLINE_S
        while first.assignment() != [(topic, 0), (topic, 1)]:
            assert time.monotonic() < deadline, "the first member never got both partitions"
            got["first"] += first.poll(max_records=10, timeout_ms=100)
        second = KafkaSource(kafka_bootstrap, topic, group,
                             listener=Listener(on_assign=lambda p: events.append(("second", "assign", p))))
        while len(got["first"]) + len(got["second"]) < len(stream):
            assert time.monotonic() < deadline, f"stalled at {len(got['first'])}+{len(got['second'])}: {events}"
            got["first"] += first.poll(max_records=10, timeout_ms=100)
            got["second"] += second.poll(max_records=10, timeout_ms=100)
        split = first.assignment() + second.assignment()
    finally:
        first.close()
        if second is not None:
            second.close()

    assert sorted(split) == [(topic, 0), (topic, 1)]
    revoke = events.index(("first", "revoke", [(topic, 0), (topic, 1)]))
    second_assign = next(i for i, e in enumerate(events) if e[:2] == ("second", "assign") and e[2])
    assert revoke < second_assign, f"partitions moved before the first member gave them up: {events}"
    assert got["second"], "the second member took over a partition and read from it"
    positions = [r.position for r in got["first"] + got["second"]]
    assert len(positions) == len(set(positions)) == len(stream), "nothing read twice, nothing skipped"


def make_alert(i: int) -> Alert:
    accounts = (f"a{i}", f"b{i}")
    return Alert(alert_id(f"t{i}", accounts), f"t{i}", accounts, (f"s{i}", f"t{i}"), 2, 190.0, 1, 2, 3, 0.5)


def test_kafka_sink_keys_alerts_by_id_and_a_replay_produces_nothing_twice(kafka_bootstrap, unique_name, tmp_path):
    topic = unique_name
    create_topic(kafka_bootstrap, topic, 1)
    alerts = [make_alert(i) for i in range(10)]
    sink = KafkaSink(kafka_bootstrap, topic, tmp_path / "state")
    sink.deliver(alerts[:6])
    sink.deliver(alerts[3:])
    assert sink.flush(30)
    sink.close()

    replay = KafkaSink(kafka_bootstrap, topic, tmp_path / "state")
    sentinel = make_alert(99)
    replay.deliver(alerts + [sentinel])
    assert replay.flush(30)
    replay.close()

    messages = read_topic(kafka_bootstrap, topic, until=lambda m: any(x.key == sentinel.alert_id.encode() for x in m))
    assert [m.key.decode() for m in messages] == [a.alert_id for a in alerts + [sentinel]]
    assert [Alert.from_dict(json.loads(m.value)) for m in messages] == alerts + [sentinel]


def test_an_unreachable_broker_is_a_clear_error_naming_it():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(KafkaConnectorError, match=address):
        KafkaSink(address, "alerts", bootstrap_timeout_ms=1_000)

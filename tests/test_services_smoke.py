"""The test services are real and usable: Redis answers, Kafka groups commit offsets."""

from __future__ import annotations

import json

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic


def test_redis_round_trip(redis_client, unique_name):
    redis_client.set(unique_name, b"ring")
    assert redis_client.get(unique_name) == b"ring"


def test_kafka_group_consumes_and_commits_1000_messages(kafka_bootstrap, unique_name):
    topic, group = unique_name, f"{unique_name}-group"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, value_serializer=lambda v: json.dumps(v).encode())
    for i in range(1000):
        producer.send(topic, {"n": i}, key=str(i).encode())
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False,
        max_poll_interval_ms=5000, session_timeout_ms=6000, heartbeat_interval_ms=1000,
        value_deserializer=json.loads,
    )
    seen: list[int] = []
    next_offset: dict[TopicPartition, int] = {}
    while len(seen) < 1000:
        for tp, records in consumer.poll(timeout_ms=1000).items():
            seen.extend(r.value["n"] for r in records)
            next_offset[tp] = records[-1].offset + 1
    consumer.commit()
    consumer.close()

    # A fresh consumer in the same group reads the committed offsets back from the broker.
    reader = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    committed = {tp: reader.committed(tp) for tp in next_offset}
    reader.close()

    assert sorted(seen) == list(range(1000))
    assert committed == next_offset
    assert sum(committed.values()) == 1000

"""Engines on a cluster share one graph: real nodes, real Redis, real Tansu, real SIGKILL.

- Two `ringwatch run --address` engines in one consumer group on a 4-partition
  topic share the group's named shard actors; every ring reaches a
  signature-checking webhook once (alert ids are claimed in the GCS), whichever
  engine's partitions its payments came from. One engine is then SIGKILLed: the
  other takes its partitions and every ring of the rest still arrives once.
- The node holding a shard actor is SIGKILLed mid-stream: the runtime restarts
  the shard on a live node from its checkpoint, the engine rewinds to its
  aligned checkpoint and replays, without restarting; every ring arrives once.
- An engine claims alerts it cannot send (its webhook endpoint is down) and is
  SIGKILLed, never to restart: the engine that takes its partitions replays
  them, finds those claims stale once the dead engine's lease has lapsed, and
  delivers every ring once.

Both compare against `detect` on the same payments: the ring definition is in
event time, so the set of alerts does not depend on partitions or engines.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from engine_harness import SECRET, EngineProcess, Receiver, create_topic, group_checkpoint, wait_until
from ringwatch import runtime as rt
from ringwatch.connectors import SyntheticConfig, generate, produce_transactions
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.runtime.auth import ClusterKeys
from ringwatch.runtime.gcs import RedisGcs
from ringwatch.stream import detect
from ringwatch.stream.claims import AlertClaims
from runtime_cluster import TOKEN, Cluster

DEADLINE_S = 240.0
FAST_HEARTBEATS = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5")


@pytest.fixture
def cluster(redis_url, unique_name) -> Iterator[Cluster]:
    cluster = Cluster(redis_url, unique_name, extra_args=FAST_HEARTBEATS)
    try:
        yield cluster
    finally:
        cluster.stop()


def start_engine(name: str, tmp_path, bootstrap: str, topic: str, redis_url: str, namespace: str,
                 receiver: Receiver, checkpoint_interval: str = "1s") -> EngineProcess:
    return EngineProcess(["--kafka-bootstrap", bootstrap, "--topic", topic, "--group", f"{topic}-engines",
                          "--state-dir", str(tmp_path / name), "--webhook-url", receiver.url,
                          "--checkpoint-interval", checkpoint_interval, "--address", redis_url],
                         tmp_path / f"{name}.log",
                         env={"RINGWATCH_TOKEN": TOKEN, "RINGWATCH_WEBHOOK_SECRET": SECRET,
                              "RINGWATCH_NAMESPACE": namespace}).start()  # the cluster's GCS namespace


def covered(redis_url: str, namespace: str, group: str) -> int:
    """Records of the topic the group's newest aligned checkpoint covers (all partitions)."""
    checkpoint = group_checkpoint(redis_url, namespace, group, TOKEN)
    return sum(checkpoint.positions.values()) if checkpoint else 0


def group_keys(redis_url: str, namespace: str, prefix: str) -> list[str]:
    """The GCS keys under `prefix` (the claims of a group live under ringwatch/engines/<group>/)."""
    gcs = RedisGcs(redis_url, namespace, keys=ClusterKeys.from_token(TOKEN))
    try:
        return gcs.kv_keys(prefix)
    finally:
        gcs.close()


def claimants(redis_url: str, namespace: str, prefix: str) -> list[str]:
    """The engine id in each claim under `prefix`."""
    gcs = RedisGcs(redis_url, namespace, keys=ClusterKeys.from_token(TOKEN))
    try:
        return [json.loads(gcs.kv_get(key))["engine"] for key in gcs.kv_keys(prefix)]
    finally:
        gcs.close()


def shard_nodes(redis_url: str, namespace: str) -> dict[str, str]:
    gcs = RedisGcs(redis_url, namespace, keys=ClusterKeys.from_token(TOKEN))
    try:
        return {a["name"]: a["node"] for a in gcs.actors()
                if a.get("class_name") == "GraphShard" and a.get("state") == "alive"}
    finally:
        gcs.close()


def test_two_engines_share_one_graph_and_deliver_every_ring_once_through_a_sigkill(
        kafka_bootstrap, redis_url, unique_name, tmp_path, receiver, cluster, engines):
    stream = generate(SyntheticConfig(n_transactions=8_000, n_accounts=2_000, n_rings=16, days=6, seed=29))
    payments = stream.transactions
    expected = {alert.alert_id for alert in detect(payments, use_runtime=False)}
    half = len(payments) // 2
    cluster.start_node("node-1", workers=1)
    cluster.start_node("node-2", workers=1)
    create_topic(kafka_bootstrap, unique_name, 4)
    produce_transactions(kafka_bootstrap, unique_name, payments[:half])
    group = f"{unique_name}-engines"

    first = start_engine("first", tmp_path, kafka_bootstrap, unique_name, redis_url, unique_name, receiver)
    second = start_engine("second", tmp_path, kafka_bootstrap, unique_name, redis_url, unique_name, receiver)
    engines += [first, second]
    wait_until(lambda: "partition assigned" in first.log() and "partition assigned" in second.log()
               or not (first.alive() and second.alive()), DEADLINE_S, "both engines to own partitions")
    wait_until(lambda: covered(redis_url, unique_name, group) == half or not (first.alive() and second.alive()),
               DEADLINE_S, "the group to checkpoint the first half")
    assert first.alive() and second.alive(), first.log() + second.log()
    first_half = {a.alert_id for a in detect(payments[:half], use_runtime=False)}
    wait_until(lambda: set(receiver.accepted) >= first_half, DEADLINE_S, "the first half's rings")

    first.kill()  # SIGKILL; the second engine takes its partitions
    produce_transactions(kafka_bootstrap, unique_name, payments[half:])
    wait_until(lambda: covered(redis_url, unique_name, group) == len(payments) or not second.alive(), DEADLINE_S,
               "the surviving engine to checkpoint every payment")
    assert second.alive(), second.log()
    wait_until(lambda: set(receiver.accepted) >= expected, DEADLINE_S, "every ring")
    assert second.terminate() == 0, second.log()

    receiver.assert_each_once(expected)
    assert receiver.delivered_rings(stream.rings) == len(stream.rings)


def test_sigkill_of_the_node_holding_a_shard_replays_without_restarting_the_engine(
        kafka_bootstrap, redis_url, unique_name, tmp_path, receiver, cluster, engines):
    stream = generate(SyntheticConfig(n_transactions=6_000, n_accounts=1_500, n_rings=12, days=6, seed=31))
    payments = stream.transactions
    expected = {alert.alert_id for alert in detect(payments, use_runtime=False)}
    for node in ("node-1", "node-2", "node-3"):
        cluster.start_node(node, workers=1)
    create_topic(kafka_bootstrap, unique_name, 2)
    part = len(payments) // 3
    produce_transactions(kafka_bootstrap, unique_name, payments[:part])
    group = f"{unique_name}-engines"
    engine = start_engine("engine", tmp_path, kafka_bootstrap, unique_name, redis_url, unique_name, receiver)
    engines.append(engine)
    wait_until(lambda: covered(redis_url, unique_name, group) == part or not engine.alive(), DEADLINE_S,
               "a checkpoint of the first part (the shards have checkpoints to restart from)")
    produce_transactions(kafka_bootstrap, unique_name, payments[part:2 * part])
    wait_until(lambda: covered(redis_url, unique_name, group) > part or not engine.alive(), DEADLINE_S,
               "the engine to be working on the second part")

    victim = sorted(set(shard_nodes(redis_url, unique_name).values()))[0]
    cluster.nodes[victim].kill()
    produce_transactions(kafka_bootstrap, unique_name, payments[2 * part:])
    wait_until(lambda: covered(redis_url, unique_name, group) == len(payments) or not engine.alive(), DEADLINE_S,
               "a checkpoint covering every payment after the node died")
    assert engine.alive(), engine.log()
    assert victim not in shard_nodes(redis_url, unique_name).values(), "a shard is still placed on the dead node"
    wait_until(lambda: set(receiver.accepted) >= expected, DEADLINE_S, "every ring")
    assert engine.terminate() == 0, engine.log()

    assert "replaying from checkpoint" in engine.log(), "the engine never noticed the shard restart"
    receiver.assert_each_once(expected)


def test_alerts_claimed_by_an_engine_killed_before_sending_them_are_delivered_by_the_next_owner(
        kafka_bootstrap, redis_url, unique_name, tmp_path, receiver, cluster, engines):
    stream = generate(SyntheticConfig(n_transactions=3_000, n_accounts=800, n_rings=8, days=6, seed=37))
    payments = stream.transactions
    expected = {alert.alert_id for alert in detect(payments, use_runtime=False)}
    cluster.start_node("node-1", workers=1)
    create_topic(kafka_bootstrap, unique_name, 4)
    produce_transactions(kafka_bootstrap, unique_name, payments)
    group = f"{unique_name}-engines"
    claims = f"ringwatch/engines/{group}/alerts/"

    # The first engine's endpoint is down (nothing listens there) and it never checkpoints: it claims
    # every ring, sends none and commits nothing.
    down = Receiver(free_port())
    first = start_engine("first", tmp_path, kafka_bootstrap, unique_name, redis_url, unique_name, down,
                         checkpoint_interval="1h")
    engines.append(first)
    wait_until(lambda: len(group_keys(redis_url, unique_name, claims)) == len(expected) or not first.alive(),
               DEADLINE_S, "the first engine to claim every ring")
    assert first.alive(), first.log()
    first.kill()  # SIGKILL, never restarted: its claims stay in the GCS, its outbox on its disk

    second = start_engine("second", tmp_path, kafka_bootstrap, unique_name, redis_url, unique_name, receiver)
    engines.append(second)
    wait_until(lambda: set(receiver.accepted) >= expected or not second.alive(), DEADLINE_S,
               "the second engine to deliver every ring the first one claimed")
    assert second.terminate() == 0, second.log()

    assert "took over" in second.log()
    receiver.assert_each_once(expected)
    assert receiver.delivered_rings(stream.rings) == len(stream.rings)


def test_alerts_a_live_engine_claimed_but_cannot_send_move_to_the_engine_that_outlives_it(
        kafka_bootstrap, redis_url, unique_name, tmp_path, receiver, cluster, engines):
    stream = generate(SyntheticConfig(n_transactions=4_000, n_accounts=1_000, n_rings=12, days=6, seed=47))
    payments = stream.transactions
    expected = {alert.alert_id for alert in detect(payments, use_runtime=False)}
    cluster.start_node("node-1", workers=1)
    create_topic(kafka_bootstrap, unique_name, 4)
    group = f"{unique_name}-engines"
    claims = f"ringwatch/engines/{group}/alerts/"

    stuck = start_engine("stuck", tmp_path, kafka_bootstrap, unique_name, redis_url, unique_name,
                         Receiver(free_port()), checkpoint_interval="1h")  # nothing listens at its endpoint
    live = start_engine("live", tmp_path, kafka_bootstrap, unique_name, redis_url, unique_name, receiver)
    engines += [stuck, live]
    wait_until(lambda: "partition assigned" in stuck.log() and "partition assigned" in live.log()
               or not (stuck.alive() and live.alive()), DEADLINE_S, "both engines to own partitions")
    produce_transactions(kafka_bootstrap, unique_name, payments)
    wait_until(lambda: len(claimants(redis_url, unique_name, claims)) >= len(expected)
               or not (stuck.alive() and live.alive()), DEADLINE_S, "every ring to be claimed")
    assert stuck.alive() and live.alive(), stuck.log() + live.log()
    stuck_id = f"{socket.gethostname()}:{(tmp_path / 'stuck').resolve()}"
    assert stuck_id in claimants(redis_url, unique_name, claims), "the stuck engine claimed no ring"
    assert not set(receiver.accepted) >= expected, "rings the stuck engine claimed arrived while it lived"

    stuck.kill()  # SIGKILL, never restarted
    wait_until(lambda: set(receiver.accepted) >= expected or not live.alive(), DEADLINE_S, "every ring")
    assert live.terminate() == 0, live.log()

    assert "took over" in live.log()
    receiver.assert_each_once(expected)

def test_an_alert_a_live_engine_claimed_is_parked_until_it_is_sent_or_the_claimants_run_ends(unique_name):
    stream = generate(SyntheticConfig(n_transactions=1_500, n_accounts=400, n_rings=6, seed=43))
    alerts = detect(stream.transactions, use_runtime=False)
    assert len(alerts) >= 5
    first, later = alerts[:3], alerts[3:5]
    rt.init(num_workers=1)
    opened: list[AlertClaims] = []

    def engine(engine_id: str) -> AlertClaims:
        opened.append(AlertClaims(unique_name, engine_id, ttl_s=600))
        return opened[-1]

    try:
        a, b = engine("engine-a"), engine("engine-b")
        assert a.ours(first) == first
        assert a.ours(first) == first, "a replay of its own claims is handed over again"
        assert b.ours(first) == [] and b.parked == 3 and not b.settle()
        assert b.retry() == [] and b.parked == 3, "taken from a live engine that may still send them"
        assert a.settle()  # a's sinks made them durable: marked sent
        assert b.retry() == [] and b.parked == 0 and b.settle()

        assert a.ours(later) == later
        assert b.ours(later) == [] and b.parked == 2
        a.close()  # a's run ends without sending them
        assert b.retry() == later and b.taken_over == 2
        b.close()
        restarted = engine("engine-b")  # the same engine id, a new run: the old run's claims are stale
        assert restarted.ours(later) == later
        c = engine("engine-c")
        assert c.ours(later) == [] and c.parked == 2, "the restarted run holds them now"
        assert c.ours(first) == [] and c.parked == 2, "sent ones are skipped, not parked"
    finally:
        for claims in opened:
            claims.close()
        rt.shutdown()

"""The engine on a real Ray head (`--backend ray`).

- `detect` raises the same alerts on Ray as on ringwatch's runtime.
- Kafka in (two partitions: the rings must not depend on arrival order), signed
  webhook out; the Ray worker holding one of the shards is SIGKILLed between two
  halves of the stream. Ray restarts the actor (`max_restarts`) and ringwatch's
  host restores it from the shard's latest checkpoint; the engine sees the
  restart in the actor records, rewinds to its aligned checkpoint and replays.
  The test checks the runtime's actor records (one restart, a new worker), the
  graph's size (the restarted shard holds the first half again: one restarted
  empty would hold fewer payments) and the receiver (exactly the alerts
  `detect` raises, each delivered once, every signature valid).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import ringwatch.runtime as rt
from engine_harness import SECRET, EngineProcess, Receiver, checkpointed_transactions, create_topic, scrape, wait_until
from ringwatch.connectors import SyntheticConfig, generate, produce_transactions, write_stream
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.graph import shard_of
from ringwatch.stream import detect

SHARDS = 2
DEADLINE_S = 240.0
VOLATILE = ("detected_at", "latency_ms")  # when the alert was raised, not what it is


def detect_cli(path: Path, out: Path, *extra: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "detect", str(path), "--out", str(out),
                           "--shards", str(SHARDS), "--batch-size", "200", *extra],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    alerts = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in alert.items() if k not in VOLATILE} for alert in alerts]


def test_detect_gives_identical_alerts_on_both_backends(ray_head, tmp_path):
    stream = generate(SyntheticConfig(n_transactions=3_000, n_accounts=600, n_rings=8, days=2, seed=5))
    payments = tmp_path / "payments.jsonl"
    write_stream(stream, payments)

    own = detect_cli(payments, tmp_path / "own.jsonl")
    on_ray = detect_cli(payments, tmp_path / "ray.jsonl", "--backend", "ray", "--address", ray_head.address)

    assert len(own) >= len(stream.rings) > 0
    assert on_ray == own


def shard_records() -> list[dict]:
    """The GraphShard actors' records in this process's Ray namespace (written by their hosts, no call made)."""
    return sorted((r for r in rt.actors() if r["class_name"] == "GraphShard"), key=lambda r: r["actor_id"])


def test_a_shard_worker_sigkilled_on_ray_restarts_from_its_checkpoint_and_every_ring_arrives_once(
        ray_head, kafka_bootstrap, unique_name, tmp_path):
    stream = generate(SyntheticConfig(n_transactions=6_000, n_accounts=1_200, n_rings=8, days=3, seed=9))
    offline = detect(stream.transactions, use_runtime=False)
    expected = {alert.alert_id for alert in offline}
    assert {ring.tx_ids[-1] for ring in stream.rings} <= {alert.trigger_tx_id for alert in offline}
    # Payments stored per holding shard (twice when payer and payee live on different shards); nothing is evicted.
    stored = sum(len({shard_of(tx.src, SHARDS), shard_of(tx.dst, SHARDS)}) for tx in stream.transactions)
    half = len(stream.transactions) // 2
    create_topic(kafka_bootstrap, unique_name, 2)
    produce_transactions(kafka_bootstrap, unique_name, stream.transactions[:half])
    receiver = Receiver(free_port()).start()
    state_dir, metrics_port = tmp_path / "state", free_port()
    engine = EngineProcess(["--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name,
                            "--group", f"{unique_name}-engine", "--state-dir", str(state_dir),
                            "--webhook-url", receiver.url, "--checkpoint-interval", "1s", "--window", "7d",
                            "--shards", str(SHARDS), "--metrics-port", str(metrics_port),
                            "--backend", "ray", "--address", ray_head.address, "--namespace", unique_name],
                           tmp_path / "engine.log", {"RINGWATCH_WEBHOOK_SECRET": SECRET}).start()
    rt.init(backend="ray", address=ray_head.address, namespace=unique_name)  # reads the engine's actor records
    try:
        wait_until(lambda: checkpointed_transactions(state_dir) == half or not engine.alive(), DEADLINE_S,
                   "a checkpoint covering the first half")
        assert engine.alive(), engine.log()
        before = shard_records()
        assert len(before) == SHARDS and all(r["restarts"] == 0 and r["checkpoint"] for r in before), before
        victim = before[0]
        os.kill(victim["pid"], signal.SIGKILL)
        produce_transactions(kafka_bootstrap, unique_name, stream.transactions[half:])

        wait_until(lambda: checkpointed_transactions(state_dir) == len(stream.transactions) or not engine.alive(),
                   DEADLINE_S, "a checkpoint covering every payment after the shard restarted")
        wait_until(lambda: set(receiver.accepted) >= expected or not engine.alive(), DEADLINE_S, "every alert")
        assert engine.alive(), engine.log()
        edges = scrape(metrics_port)[("ringwatch_graph_edges", ())]
        after = {r["actor_id"]: r for r in shard_records()}
        assert engine.terminate() == 0, engine.log()
    finally:
        rt.shutdown()
        engine.ensure_stopped()
        receiver.stop()

    assert "replaying from checkpoint" in engine.log(), "the engine never noticed the shard restart"
    restarted = after[victim["actor_id"]]
    assert restarted["restarts"] == 1 and restarted["pid"] != victim["pid"], restarted  # Ray restarted that actor
    assert all(r["restarts"] == 0 for r in after.values() if r is not restarted), after
    assert edges == stored  # the restarted shard holds the first half again: it came back from its checkpoint
    receiver.assert_each_once(expected)

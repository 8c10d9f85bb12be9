"""The engine on a real Ray head (`--backend ray`): same alerts as on ringwatch's runtime; Kafka in,
signed webhook out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine_harness import SECRET, EngineProcess, Receiver, checkpointed_transactions, create_topic, wait_until
from ringwatch.connectors import SyntheticConfig, generate, produce_transactions, write_stream
from ringwatch.connectors.embedded_broker import free_port

N_RINGS = 8
DEADLINE_S = 240.0
VOLATILE = ("detected_at", "latency_ms")  # when the alert was raised, not what it is


def detect_cli(path: Path, out: Path, *extra: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "detect", str(path), "--out", str(out),
                           "--shards", "2", "--batch-size", "200", *extra],
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


def test_engine_on_ray_from_kafka_to_a_signed_webhook(ray_head, kafka_bootstrap, unique_name, tmp_path):
    stream = generate(SyntheticConfig(n_transactions=6_000, n_accounts=1_200, n_rings=N_RINGS, days=3, seed=9))
    create_topic(kafka_bootstrap, unique_name, 1)  # one partition: engine v1 search depends on arrival order
    produce_transactions(kafka_bootstrap, unique_name, stream.transactions)
    receiver = Receiver(free_port()).start()
    state_dir = tmp_path / "state"
    engine = EngineProcess(["--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name,
                            "--group", f"{unique_name}-engine", "--state-dir", str(state_dir),
                            "--webhook-url", receiver.url, "--checkpoint-interval", "1s", "--window", "7d",
                            "--backend", "ray", "--address", ray_head.address],
                           tmp_path / "engine.log", {"RINGWATCH_WEBHOOK_SECRET": SECRET}).start()
    try:
        wait_until(lambda: checkpointed_transactions(state_dir) == len(stream.transactions) or not engine.alive(),
                   DEADLINE_S, "a checkpoint covering every payment")
        assert engine.alive(), engine.log()
        assert len(ray_head.worker_pids("GraphShard")) == 2  # the engine's two shards are Ray actors
        wait_until(lambda: receiver.delivered_rings(stream.rings) == N_RINGS, DEADLINE_S, "every injected ring")
        assert engine.terminate() == 0, engine.log()
    finally:
        engine.ensure_stopped()
        receiver.stop()

    assert receiver.bad_signatures == 0
    assert all(count == 1 for count in receiver.accepted.values()), receiver.accepted.most_common(3)

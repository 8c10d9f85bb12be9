"""The engine on a real Ray head (`--backend ray`): same alerts as on ringwatch's runtime, Kafka in,
signed webhook out, and a shard's Ray worker SIGKILLed mid-stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ringwatch.connectors import SyntheticConfig, generate, write_stream

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

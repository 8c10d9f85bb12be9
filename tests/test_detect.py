"""`detect` and `ringwatch detect`: the real shards-as-actors engine over files and iterables."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from graph_oracle import oracle_rings
from ringwatch.connectors.synthetic import SyntheticConfig, generate, write_stream
from ringwatch.graph import SearchOptions, Transaction
from ringwatch.stream import DetectReport, detect


def random_stream(n=300, accounts=20, seed=3):
    rng = random.Random(seed)
    ts, rows = 0, []
    for i in range(n):
        ts += rng.choice([0, 1000, 5000, 60_000])
        rows.append({"tx_id": f"t{i}", "src": f"a{rng.randrange(accounts)}", "dst": f"a{rng.randrange(accounts)}",
                     "amount": rng.choice([90.0, 100.0]), "ts": ts})
    return rows


def test_runtime_engine_matches_the_oracle_and_orders_alerts_by_trigger():
    rows = random_stream()
    alerts = detect(rows, shards=3, batch_size=41, window="10m", max_degree=None, max_rings_per_tx=None)
    stream = [Transaction.from_dict(r) for r in rows]
    options = SearchOptions(window_ms=600_000)
    expected = {t.tx_id: oracle_rings(stream, k, t.ts - 600_000, options) for k, t in enumerate(stream)}
    got: dict[str, set] = {}
    for alert in alerts:
        got.setdefault(alert.trigger_tx_id, set()).add(alert.accounts)
    assert got == {k: v for k, v in expected.items() if v}
    position = {r["tx_id"]: i for i, r in enumerate(rows)}
    assert [position[a.trigger_tx_id] for a in alerts] == sorted(position[a.trigger_tx_id] for a in alerts)


def test_runtime_and_in_process_shards_raise_the_same_alerts():
    rows = random_stream(seed=11)
    on_runtime = detect(rows, shards=2, window="10m")
    in_process = detect(rows, shards=2, window="10m", use_runtime=False)
    assert [(a.alert_id, a.tx_ids) for a in on_runtime] == [(a.alert_id, a.tx_ids) for a in in_process]
    assert on_runtime


def test_bad_rows_are_reported_with_reasons_not_dropped():
    rows = random_stream(n=50) + [{"tx_id": "bad", "src": "a1", "dst": "a2", "amount": -1, "ts": 1},
                                  {"tx_id": "nots", "src": "a1", "dst": "a2", "amount": 3}]
    report = DetectReport()
    detect(rows, use_runtime=False, report=report)
    assert report.transactions == 52
    assert [r["reason"] for r in report.rejected] == [
        "invalid:amount: must be a finite number > 0, got -1", "invalid:ts: missing"]


def test_detect_finds_every_injected_ring_in_a_synthetic_file(tmp_path):
    stream = generate(SyntheticConfig(n_transactions=20_000, n_accounts=2_000, days=2, n_rings=12, seed=5))
    path = tmp_path / "payments.parquet"
    write_stream(stream, path)
    alerts = detect(path, window="48h", shards=2)
    closed = {(a.trigger_tx_id, frozenset(a.accounts)) for a in alerts}
    for ring in stream.rings:
        assert (ring.tx_ids[-1], frozenset(ring.accounts)) in closed, ring


def test_the_detect_command_writes_alerts_and_rejected_rows(tmp_path):
    path = tmp_path / "payments.jsonl"
    lines = [json.dumps(r) for r in random_stream(n=120)] + ["{not json"]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "alerts.jsonl"
    done = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "detect", str(path), "--window", "10m",
                           "--shards", "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    expected = detect(random_stream(n=120), window="10m", use_runtime=False)
    assert [a["alert_id"] for a in alerts] == [a.alert_id for a in expected]
    rejected = [json.loads(line) for line in (tmp_path / "alerts.jsonl.rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 1 and rejected[0]["reason"].startswith("malformed")
    assert "121 payments read" in done.stderr


@pytest.mark.parametrize("argv, message", [
    (["--window", "soon"], "window: cannot read 'soon'"),
    (["--order", "sideways"], "invalid choice"),
])
def test_the_detect_command_names_bad_options(tmp_path, argv, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(random_stream(n=1)[0]) + "\n")
    done = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "detect", str(path), *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr

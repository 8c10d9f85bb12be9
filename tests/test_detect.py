"""`detect` and `ringwatch detect`: the graph engine over files (read in columnar chunks) and iterables."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from graph_oracle import oracle
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


def expected_rings(rows, window_ms):
    options = SearchOptions(window_ms=window_ms, max_rings_per_tx=None)
    return {i: (r.trigger, r.accounts, r.tx_ids)
            for i, r in oracle([Transaction.from_dict(r) for r in rows], options).items()}


def test_detect_matches_the_oracle_once_per_ring_in_trigger_order():
    rows = random_stream()
    alerts = detect(rows, batch_size=41, window="10m", max_rings_per_tx=None)
    assert {a.alert_id: (a.trigger_tx_id, a.accounts, a.tx_ids) for a in alerts} == expected_rings(rows, 600_000)
    assert len({a.alert_id for a in alerts}) == len(alerts)
    order = [(a.last_ts, a.trigger_tx_id.encode()) for a in alerts]
    assert order == sorted(order)


def test_shard_actors_on_the_runtime_raise_the_same_alerts():
    rows = random_stream(seed=11)
    on_runtime = detect(rows, shards=2, batch_size=50, window="10m")
    in_process = detect(rows, window="10m")
    assert [(a.alert_id, a.tx_ids) for a in on_runtime] == [(a.alert_id, a.tx_ids) for a in in_process]
    assert on_runtime


def test_a_file_in_any_order_gives_the_same_rings(tmp_path):
    rows = random_stream(seed=5)
    shuffled = list(rows)
    random.Random(1).shuffle(shuffled)
    path = tmp_path / "shuffled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in shuffled))
    alerts = detect(path, window="10m", allowed_lateness="1d", max_rings_per_tx=None)
    assert {a.alert_id: (a.trigger_tx_id, a.accounts) for a in alerts} == \
        {i: (t, accounts) for i, (t, accounts, _) in expected_rings(rows, 600_000).items()}


def test_bad_rows_late_payments_and_conflicts_are_reported_with_reasons():
    rows = random_stream(n=50) + [{"tx_id": "bad", "src": "a1", "dst": "a2", "amount": -1, "ts": 1},
                                  {"tx_id": "nots", "src": "a1", "dst": "a2", "amount": 3},
                                  {"tx_id": "t0", "src": "a1", "dst": "a2", "amount": 3, "ts": 10**9},
                                  {"tx_id": "old", "src": "a1", "dst": "a2", "amount": 3, "ts": 0}]
    report = DetectReport()
    detect(rows, report=report, window="10m", batch_size=10)  # the late payment comes in a later batch
    assert report.transactions == 54
    reasons = [r["reason"] for r in report.rejected]
    assert reasons[:2] == ["invalid:amount: must be a finite number > 0, got -1", "invalid:ts: missing"]
    assert any(r.startswith("conflict: tx_id 't0'") for r in reasons)
    assert any(r.startswith("late: ts 0 is older") for r in reasons)


def test_detect_finds_every_injected_ring_in_a_synthetic_file(tmp_path):
    stream = generate(SyntheticConfig(n_transactions=20_000, n_accounts=2_000, days=2, n_rings=12, seed=5))
    path = tmp_path / "payments.parquet"
    write_stream(stream, path)
    alerts = detect(path, window="48h")
    closed = {(a.trigger_tx_id, frozenset(a.accounts)) for a in alerts}
    for ring in stream.rings:
        assert (ring.tx_ids[-1], frozenset(ring.accounts)) in closed, ring


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_every_file_format_gives_the_same_alerts(tmp_path, suffix):
    stream = generate(SyntheticConfig(n_transactions=5_000, n_accounts=300, days=2, n_rings=5, seed=2))
    path = tmp_path / f"payments{suffix}"
    write_stream(stream, path)
    from_file = detect(path, window="12h")
    from_records = detect(stream.transactions, window="12h")
    assert [(a.alert_id, a.tx_ids, a.total_amount) for a in from_file] == \
        [(a.alert_id, a.tx_ids, a.total_amount) for a in from_records]
    assert from_file


def test_the_detect_command_writes_alerts_and_rejected_rows(tmp_path):
    path = tmp_path / "payments.jsonl"
    lines = [json.dumps(r) for r in random_stream(n=120)] + ["{not json"]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "alerts.jsonl"
    done = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "detect", str(path), "--window", "10m",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    expected = detect(random_stream(n=120), window="10m")
    assert [a["alert_id"] for a in alerts] == [a.alert_id for a in expected]
    rejected = [json.loads(line) for line in (tmp_path / "alerts.jsonl.rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 1 and rejected[0]["reason"].startswith("malformed")
    assert "121 payments read" in done.stderr


@pytest.mark.parametrize("name, content, message", [
    ("payments", b"tx_id,src\n", "without suffix"),
    ("payments.parquet", b"this is not parquet at all", "cannot read it as parquet"),
])
def test_an_unreadable_file_is_one_clear_error_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    done = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "detect", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and str(path) in done.stderr
    assert "Traceback" not in done.stderr


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

"""`ringwatch generate`: the synthetic stream as a file or a Kafka topic, with its ground truth."""

from __future__ import annotations

import subprocess
import sys
import time

from ringwatch.connectors import FileSource, KafkaSource, SyntheticConfig, generate, read_truth

CONFIG = SyntheticConfig(n_transactions=2_000, n_accounts=500, days=3, mode="dense", n_rings=6, seed=21)
ARGS = ["--transactions", "2000", "--accounts", "500", "--days", "3", "--mode", "dense", "--rings", "6", "--seed", "21"]


def ringwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_generate_writes_the_stream_and_its_truth(tmp_path):
    out = tmp_path / "stream.parquet"
    result = ringwatch("generate", *ARGS, "--out", str(out))

    assert result.returncode == 0, result.stderr
    expected = generate(CONFIG)
    assert [r.transaction for r in FileSource(out)] == expected.transactions
    assert read_truth(out) == expected.rings


def test_generate_produces_to_kafka_keyed_by_payer(kafka_bootstrap, unique_name, tmp_path):
    truth = tmp_path / "truth.json"
    result = ringwatch("generate", *ARGS, "--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name,
                       "--truth", str(truth))
    assert result.returncode == 0, result.stderr

    source = KafkaSource(kafka_bootstrap, unique_name, f"{unique_name}-group")
    records = []
    deadline = time.monotonic() + 60
    try:
        while len(records) < CONFIG.n_transactions:
            assert time.monotonic() < deadline, f"only {len(records)} records arrived"
            records.extend(source.poll(max_records=1_000, timeout_ms=200))
    finally:
        source.close()

    expected = generate(CONFIG)
    assert all(r.ok for r in records)
    by_id = lambda tx: tx.tx_id  # noqa: E731
    assert sorted((r.transaction for r in records), key=by_id) == expected.transactions
    assert read_truth(truth) == expected.rings
    partitions_of_payer: dict[str, set[int]] = {}
    for r in records:
        partitions_of_payer.setdefault(r.transaction.src, set()).add(r.position[1])
    assert all(len(p) == 1 for p in partitions_of_payer.values()), "one payer's payments share a partition"


def test_generate_refuses_a_bad_setting_naming_it(tmp_path):
    result = ringwatch("generate", "--mode", "dense", "--rings", "5000", "--out", str(tmp_path / "s.jsonl"))
    assert result.returncode != 0 and "n_rings" in result.stderr

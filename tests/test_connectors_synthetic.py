"""The synthetic generator: stream invariants, ring ground truth, determinism, files."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from ringwatch.connectors import (
    GeneratorSource,
    InvalidSyntheticConfigError,
    SyntheticConfig,
    generate,
    read_truth,
    write_stream,
)

SMALL = SyntheticConfig(n_transactions=20_000, n_accounts=2_000, days=5, n_rings=20, seed=7)


@pytest.fixture(scope="module", params=["bank", "dense"])
def stream(request):
    return generate(SyntheticConfig(**{**SMALL.__dict__, "mode": request.param}))


def test_stream_is_time_ordered_positive_unique_and_free_of_self_payments(stream):
    txs = stream.transactions
    assert len(txs) == 20_000
    assert all(a.ts <= b.ts for a, b in zip(txs, txs[1:]))
    assert all(tx.amount > 0 for tx in txs)
    assert len({tx.tx_id for tx in txs}) == len(txs)
    assert all(tx.src != tx.dst for tx in txs)


def test_injected_rings_are_time_ordered_cycles_passing_on_most_of_the_money(stream):
    by_id = {tx.tx_id: (index, tx) for index, tx in enumerate(stream.transactions)}
    assert len(stream.rings) == 20
    for ring in stream.rings:
        hops = len(ring.accounts)
        assert 2 <= hops <= 6 and len(ring.tx_ids) == hops
        legs = [by_id[tx_id] for tx_id in ring.tx_ids]
        for i, (_, tx) in enumerate(legs):
            assert (tx.src, tx.dst) == (ring.accounts[i], ring.accounts[(i + 1) % hops])
        assert all(a[1].ts < b[1].ts and a[0] < b[0] for a, b in zip(legs, legs[1:]))
        for (_, before), (_, after) in zip(legs, legs[1:]):
            assert 0.85 * float(before.amount) - 0.01 <= float(after.amount) <= 0.99 * float(before.amount) + 0.01
    members = [account for ring in stream.rings for account in ring.accounts]
    assert len(members) == len(set(members)), "each ring has accounts of its own"


def test_same_seed_same_stream_other_seed_other_stream():
    first, again = generate(SMALL), generate(SMALL)
    other = generate(SyntheticConfig(**{**SMALL.__dict__, "seed": 8}))
    assert first.transactions == again.transactions and first.rings == again.rings
    assert first.transactions != other.transactions


def test_bank_mode_has_merchant_hubs_and_dense_mode_has_many_genuine_two_cycles():
    bank = generate(SMALL)
    dense = generate(SyntheticConfig(**{**SMALL.__dict__, "mode": "dense"}))
    top_payee_share = Counter(tx.dst for tx in bank.transactions).most_common(1)[0][1] / len(bank)
    assert top_payee_share > 0.05, "a popular merchant receives a large share of all payments"

    def reciprocal_pairs(s):
        edges = {(tx.src, tx.dst) for tx in s.transactions}
        return sum(1 for src, dst in edges if (dst, src) in edges)

    assert reciprocal_pairs(dense) > 10 * reciprocal_pairs(bank)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_write_stream_writes_transactions_and_truth_beside_them(tmp_path, suffix):
    stream = generate(SMALL)
    path = tmp_path / f"stream{suffix}"
    truth_path = write_stream(stream, path)
    assert truth_path == tmp_path / f"stream{suffix}.truth.json"
    assert read_truth(path) == stream.rings
    assert json.loads(truth_path.read_text())["config"]["seed"] == 7
    if suffix == ".parquet":
        table = pq.read_table(path)
        assert table.num_rows == len(stream)
        assert table.column("tx_id")[5].as_py() == stream.transactions[5].tx_id
    else:
        lines = path.read_text().splitlines()
        assert len(lines) == len(stream) + (1 if suffix == ".csv" else 0)


def test_generator_source_yields_every_transaction_and_resumes_from_a_position():
    config = SyntheticConfig(n_transactions=2_000, n_accounts=400, days=2, n_rings=5, seed=3)
    records = list(GeneratorSource(config))
    assert [r.transaction for r in records] == generate(config).transactions
    assert [r.position for r in records[:2]] == [("synthetic", 0, 0), ("synthetic", 0, 1)]
    resumed = list(GeneratorSource(config, start=1_500))
    assert resumed == records[1_500:]


def test_paced_generator_source_polls_the_same_records_and_is_caught_up_at_the_end():
    config = SyntheticConfig(n_transactions=300, n_accounts=400, days=2, n_rings=2, seed=3)
    source = GeneratorSource(config, rate=50_000)
    polled = []
    while not source.exhausted:
        assert source.caught_up() == set() or polled, "caught up before anything was read"
        polled += source.poll(max_records=64, timeout_ms=10)
    assert polled == list(GeneratorSource(config))
    assert len(source.poll(max_records=64, timeout_ms=1)) == 0
    assert source.caught_up() == {("synthetic", 0)}
    assert source.lag() == {("synthetic", 0): 0}


@pytest.mark.parametrize("change, field", [
    ({"mode": "sparse"}, "mode"),
    ({"ring_hops": (1, 4)}, "ring_hops"),
    ({"pass_on": (0.9, 1.2)}, "pass_on"),
    ({"n_transactions": 10}, "n_transactions"),
    ({"n_rings": 200}, "n_rings"),
])
def test_bad_config_names_the_field(change, field):
    with pytest.raises(InvalidSyntheticConfigError, match=f"^{field}:"):
        SyntheticConfig(**{**SMALL.__dict__, **change})

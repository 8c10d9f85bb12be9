"""The engine's alerts equal, ring for ring, a networkx oracle on random temporal multigraphs."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph_oracle import oracle_rings
from ringwatch.graph import LocalShards, RingDetector, SearchOptions, Transaction, alert_id

WINDOW = 20
UNBOUNDED = {"max_degree": None, "max_rings_per_tx": None}  # the oracle knows no work bounds


@st.composite
def streams(draw):
    """Payments among few accounts: parallel edges, self-loops, equal timestamps, exact window edges."""
    accounts = draw(st.integers(2, 7))
    n = draw(st.integers(1, 45))
    ts, stream = 0, []
    for i in range(n):
        ts += draw(st.sampled_from([0, 0, 1, 2, 3, WINDOW]))
        src, dst = draw(st.integers(0, accounts - 1)), draw(st.integers(0, accounts - 1))
        amount = draw(st.sampled_from([100.0, 95.0, 90.0, 50.0]))
        stream.append(Transaction(f"t{i}", f"a{src}", f"a{dst}", amount, ts))
    return stream


def run_engine(stream, options, shards, batch_sizes):
    detector = RingDetector(LocalShards(shards), options)
    alerts, start = [], 0
    sizes = iter(batch_sizes)
    while start < len(stream):
        size = next(sizes, 3)
        alerts.extend(detector.process(stream[start:start + size]).alerts)
        start += size
    return alerts


def assert_matches_oracle(stream, options, alerts):
    by_id = {tx.tx_id: (k, tx) for k, tx in enumerate(stream)}
    got: dict[str, set] = {}
    for alert in alerts:
        k, trigger = by_id[alert.trigger_tx_id]
        assert alert.alert_id == alert_id(trigger.tx_id, alert.accounts)
        _assert_witnesses_valid(alert, stream, by_id, k, options)
        got.setdefault(trigger.tx_id, set()).add(alert.accounts)
    assert len(alerts) == sum(len(v) for v in got.values()), "one alert per account cycle per trigger"
    for k, tx in enumerate(stream):
        assert got.get(tx.tx_id, set()) == oracle_rings(stream, k, tx.ts - options.window_ms, options), tx


def _assert_witnesses_valid(alert, stream, by_id, k, options):
    trigger = stream[k]
    assert alert.tx_ids[-1] == trigger.tx_id and alert.hops == len(alert.accounts) == len(alert.tx_ids)
    witnesses = [by_id[t][1] for t in alert.tx_ids[:-1]]
    ring = alert.accounts + (alert.accounts[0],)
    for i, w in enumerate(witnesses):
        assert (w.src, w.dst) == (ring[i], ring[i + 1])
        assert by_id[w.tx_id][0] < k and trigger.ts - options.window_ms <= w.ts <= trigger.ts
    if options.order == "strict":
        assert all(a.ts <= b.ts for a, b in zip(witnesses, witnesses[1:]))
    assert alert.total_amount == sum(w.amount for w in witnesses) + trigger.amount


common = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
batches = st.lists(st.integers(1, 9), max_size=12)


@common
@given(stream=streams(), shards=st.integers(1, 4), sizes=batches, max_hops=st.integers(2, 6))
def test_strict_order_matches_oracle(stream, shards, sizes, max_hops):
    options = SearchOptions(max_hops=max_hops, window_ms=WINDOW, **UNBOUNDED)
    assert_matches_oracle(stream, options, run_engine(stream, options, shards, sizes))


@common
@given(stream=streams(), shards=st.integers(1, 4), sizes=batches)
def test_unordered_matches_oracle(stream, shards, sizes):
    options = SearchOptions(max_hops=4, window_ms=WINDOW, order="none", **UNBOUNDED)
    assert_matches_oracle(stream, options, run_engine(stream, options, shards, sizes))


@common
@given(stream=streams(), shards=st.integers(1, 4), sizes=batches)
def test_flow_rule_matches_oracle(stream, shards, sizes):
    options = SearchOptions(max_hops=5, window_ms=WINDOW, min_ratio=0.85, max_ratio=1.0, **UNBOUNDED)
    assert_matches_oracle(stream, options, run_engine(stream, options, shards, sizes))


@common
@given(stream=streams(), sizes=batches)
def test_batching_never_changes_the_alerts(stream, sizes):
    options = SearchOptions(max_hops=6, window_ms=WINDOW, **UNBOUNDED)
    one_by_one = run_engine(stream, options, 2, [1] * len(stream))
    batched = run_engine(stream, options, 3, sizes)
    assert [(a.alert_id, a.tx_ids) for a in batched] == [(a.alert_id, a.tx_ids) for a in one_by_one]

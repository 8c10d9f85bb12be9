"""Shard store and detector behaviour: idempotence, eviction, partitioning, late payments, limits."""

from __future__ import annotations

import subprocess
import sys

import pytest

from graph_oracle import oracle_rings
from ringwatch.graph import (
    InvalidSearchOptionError,
    InvalidTransactionError,
    LocalShards,
    RingDetector,
    SearchOptions,
    Transaction,
    parse_duration,
    shard_of,
    subgraph,
)

H = 3_600_000


def tx(tx_id, src, dst, ts, amount=100.0):
    return Transaction(tx_id, src, dst, amount, ts)


def triangle(start=0):
    return [tx("t1", "A", "B", start), tx("t2", "B", "C", start + 1), tx("t3", "C", "A", start + 2)]


def test_a_triangle_raises_one_alert_at_its_closing_payment():
    detector = RingDetector(LocalShards(2), SearchOptions(window_ms=H))
    alerts = [a for t in triangle() for a in detector.process([t]).alerts]
    assert [(a.trigger_tx_id, a.accounts, a.tx_ids, a.hops) for a in alerts] == [
        ("t3", ("A", "B", "C"), ("t1", "t2", "t3"), 3)]
    assert alerts[0].first_ts == 0 and alerts[0].last_ts == 2 and alerts[0].total_amount == 300.0


def test_a_batch_applied_twice_changes_nothing():
    shards = LocalShards(3)
    detector = RingDetector(shards, SearchOptions(window_ms=H))
    first = detector.process(triangle())
    edges, size = shards.edge_count(), shards.nbytes()
    again = detector.process(triangle())
    assert len(first.alerts) == 1
    assert again.alerts == [] and again.duplicates == 3
    assert (shards.edge_count(), shards.nbytes()) == (edges, size)


def test_witness_exactly_at_the_window_edge_counts_and_one_ms_older_does_not():
    options = SearchOptions(window_ms=1000)
    on_edge = RingDetector(LocalShards(1), options).process(
        [tx("a", "A", "B", 0), tx("b", "B", "A", 1000)])
    past_edge = RingDetector(LocalShards(1), options).process(
        [tx("a", "A", "B", 0), tx("b", "B", "A", 1001)])
    assert [a.accounts for a in on_edge.alerts] == [("A", "B")]
    assert past_edge.alerts == []


def test_edges_older_than_the_watermark_are_evicted():
    shards = LocalShards(1)
    detector = RingDetector(shards, SearchOptions(window_ms=1000), evict_every_ms=1)
    detector.process([tx(f"old{i}", f"X{i}", f"Y{i}", i) for i in range(50)])
    assert shards.edge_count() == 50
    detector.process([tx("new", "P", "Q", 5000)])
    assert shards.edge_count() == 1


def test_partitioning_is_stable_across_processes():
    accounts = [f"acct-{i}" for i in range(200)]
    here = [shard_of(a, 7) for a in accounts]
    code = ("import json,sys; from ringwatch.graph import shard_of; "
            "print(json.dumps([shard_of(a, 7) for a in json.loads(sys.argv[1])]))")
    import json
    there = subprocess.run([sys.executable, "-c", code, json.dumps(accounts)],
                           capture_output=True, text=True, check=True).stdout
    assert json.loads(there) == here
    assert len(set(here)) == 7


def test_a_late_payment_is_stored_and_witnesses_later_rings():
    detector = RingDetector(LocalShards(2), SearchOptions(window_ms=10 * H))
    detector.process([tx("n1", "X", "Y", 5 * H)])
    late = detector.process([tx("late", "A", "B", 2 * H)])  # late, but inside the watermark
    assert late.rejected == []
    closing = detector.process([tx("close", "B", "A", 6 * H)])
    assert [a.tx_ids for a in closing.alerts] == [("late", "close")]


def test_a_late_trigger_closes_rings_only_with_witnesses_at_or_before_its_time():
    detector = RingDetector(LocalShards(1), SearchOptions(window_ms=10 * H))
    detector.process([tx("ab", "A", "B", 1 * H), tx("bc_after", "B", "C", 5 * H), tx("bc", "B", "C", 2 * H)])
    result = detector.process([tx("ca", "C", "A", 3 * H)])  # late: newest seen is 5 h
    assert [a.tx_ids for a in result.alerts] == [("ab", "bc", "ca")]


def test_a_payment_older_than_the_watermark_is_rejected_with_the_reason():
    detector = RingDetector(LocalShards(1), SearchOptions(window_ms=H))
    detector.process([tx("new", "A", "B", 10 * H)])
    result = detector.process([tx("ancient", "B", "A", 1 * H)])
    assert [r.transaction.tx_id for r in result.rejected] == ["ancient"]
    assert result.rejected[0].reason.startswith("late: ts 3600000 is older than the low watermark 32400000")


def test_hub_guard_skips_hubs_and_says_the_search_was_cut_short():
    # A -> HUB -> C0 -> D -> A: the forward half from A must pass through the hub.
    stream = [tx("a", "A", "HUB", 0)] + [tx(f"h{i}", "HUB", f"C{i}", 1 + i) for i in range(5)]
    stream += [tx("c", "C0", "D", 10), tx("d", "D", "A", 11)]
    guarded = RingDetector(LocalShards(2), SearchOptions(window_ms=H, max_degree=3)).process(stream)
    open_ = RingDetector(LocalShards(2), SearchOptions(window_ms=H, max_degree=None)).process(stream)
    assert guarded.alerts == [] and guarded.truncated_searches >= 1
    assert [a.accounts for a in open_.alerts] == [("A", "HUB", "C0", "D")] and open_.truncated_searches == 0


def test_max_rings_per_tx_caps_and_flags_truncation():
    stream = [tx(f"ab{i}", "A", f"B{i}", i) for i in range(4)] + [tx(f"ba{i}", f"B{i}", "Z", 10 + i) for i in range(4)]
    stream.append(tx("close", "Z", "A", 20))
    result = RingDetector(LocalShards(1), SearchOptions(window_ms=H, max_rings_per_tx=2)).process(stream)
    assert len(result.alerts) == 2 and all(a.truncated for a in result.alerts)


def test_large_random_stream_against_the_oracle():
    import random
    rng = random.Random(7)
    stream, ts = [], 0
    for i in range(400):
        ts += rng.choice([0, 1, 5, 30])
        stream.append(tx(f"t{i}", f"a{rng.randrange(25)}", f"a{rng.randrange(25)}", ts, rng.choice([90.0, 100.0])))
    options = SearchOptions(max_hops=6, window_ms=300, max_degree=None, max_rings_per_tx=None)
    detector = RingDetector(LocalShards(4), options)
    alerts = []
    for start in range(0, len(stream), 37):
        alerts.extend(detector.process(stream[start:start + 37]).alerts)
    got: dict[str, set] = {}
    for alert in alerts:
        got.setdefault(alert.trigger_tx_id, set()).add(alert.accounts)
    expected = {t.tx_id: oracle_rings(stream, k, t.ts - 300, options) for k, t in enumerate(stream)}
    assert {k: v for k, v in expected.items() if v} == got
    assert len(alerts) > 20


def test_subgraph_exports_payments_with_amounts_and_times():
    shards = LocalShards(3)
    RingDetector(shards, SearchOptions(window_ms=H)).process(triangle() + [tx("far", "Z", "Q", 3)])
    graph = subgraph(shards, ["A"], hops=1)
    assert set(graph.nodes) == {"A", "B", "C"}
    assert {(u, v, k) for u, v, k in graph.edges(keys=True)} == {("A", "B", "t1"), ("C", "A", "t3")}
    assert graph.edges["A", "B", "t1"] == {"amount": 100.0, "ts": 0, "seq": 0, "tx_id": "t1"}
    assert graph.nodes["B"]["hops"] == 1
    assert set(subgraph(shards, ["A"], hops=2).nodes) == {"A", "B", "C"}
    assert set(subgraph(shards, ["A"], hops=1, since=1).edges(keys=True)) == {("C", "A", "t3")}
    assert list(subgraph(shards, ["nobody"], hops=2).edges) == []


@pytest.mark.parametrize("record, field", [
    ({"tx_id": "1", "dst": "b", "amount": 1, "ts": 1}, "src"),
    ({"tx_id": "1", "src": "a", "dst": "b", "amount": -5, "ts": 1}, "amount"),
    ({"tx_id": "1", "src": "a", "dst": "b", "amount": "lots", "ts": 1}, "amount"),
    ({"tx_id": "1", "src": "a", "dst": "b", "amount": 1, "ts": "yesterday"}, "ts"),
    ({"src": "a", "dst": "b", "amount": 1, "ts": 1}, "tx_id"),
])
def test_validation_names_the_bad_field(record, field):
    with pytest.raises(InvalidTransactionError) as caught:
        Transaction.from_dict(record)
    assert caught.value.field == field and str(caught.value).startswith(field + ":")


def test_timestamps_in_iso_and_epoch_ms_agree():
    iso = Transaction.from_dict({"tx_id": "1", "src": "a", "dst": "b", "amount": 1, "ts": "2024-01-01T00:00:00Z"})
    ms = Transaction.from_dict({"tx_id": "1", "src": "a", "dst": "b", "amount": 1, "ts": 1704067200000})
    assert iso.ts == ms.ts


@pytest.mark.parametrize("spelling, ms", [("500ms", 500), ("90s", 90_000), ("48h", 172_800_000),
                                          ("7d", 604_800_000), (1234, 1234), (None, None)])
def test_durations_in_every_spelling(spelling, ms):
    assert parse_duration(spelling) == ms


def test_bad_search_options_name_the_option():
    with pytest.raises(InvalidSearchOptionError, match="order"):
        SearchOptions(order="sideways")
    with pytest.raises(InvalidSearchOptionError, match="max_hops"):
        SearchOptions(max_hops=1)
    with pytest.raises(InvalidSearchOptionError, match="min_ratio"):
        SearchOptions(min_ratio=0.9)

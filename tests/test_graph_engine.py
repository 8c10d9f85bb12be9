"""The graph engine's behaviour: alerts, money, duplicates and conflicts, eviction, late payments, cuts, checkpoints."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from decimal import Decimal

import pytest

from graph_oracle import oracle
from ringwatch.graph import (
    Alert,
    GraphShard,
    InvalidSearchOptionError,
    InvalidTransactionError,
    LocalRingGraph,
    SearchOptions,
    ShardedRingGraph,
    Transaction,
    parse_duration,
    payment_table,
    shard_of,
    subgraph,
)

H = 3_600_000


def tx(tx_id, src, dst, ts, amount="100", currency=None):
    return Transaction(tx_id, src, dst, amount, ts, currency)


def triangle(start=0):
    return [tx("t1", "A", "B", start), tx("t2", "B", "C", start + 1), tx("t3", "C", "A", start + 2)]


@pytest.fixture(params=["local", "sharded"])
def make(request):
    def build(options):
        return LocalRingGraph(options) if request.param == "local" else ShardedRingGraph.in_process(options, 3)
    return build


def test_a_triangle_raises_one_alert_with_an_exact_total(make):
    graph = make(SearchOptions(window_ms=H))
    alerts = [a for t in [tx("t1", "A", "B", 0, "0.1"), tx("t2", "B", "C", 1, "0.2"), tx("t3", "C", "A", 2, "0.3")]
              for a in graph.process([t]).alerts]
    assert [(a.trigger_tx_id, a.accounts, a.tx_ids, a.hops) for a in alerts] == [
        ("t3", ("A", "B", "C"), ("t1", "t2", "t3"), 3)]
    alert = alerts[0]
    assert alert.total_amount == Decimal("0.6") and alert.currency is None and alert.totals == {}
    assert alert.first_ts == 0 and alert.last_ts == 2 and not alert.truncated
    assert json.loads(alert.to_json())["total_amount"] == "0.6"
    assert Alert.from_dict(json.loads(alert.to_json())) == alert


def test_currency_on_every_alert_and_totals_per_currency_when_mixed(make):
    graph = make(SearchOptions(window_ms=H))
    one = graph.process([tx("a", "A", "B", 0, "10.25", "EUR"), tx("b", "B", "A", 1, "10.5", "EUR")]).alerts
    mixed = graph.process([tx("c", "C", "D", 2, "7", "USD"), tx("d", "D", "C", 3, "5.5", "EUR")]).alerts
    assert [(a.currency, a.total_amount, a.totals) for a in one] == [("EUR", Decimal("20.75"), {})]
    assert [(a.currency, a.totals) for a in mixed] == [("mixed", {"EUR": Decimal("5.5"), "USD": Decimal("7")})]
    assert json.loads(mixed[0].to_json())["totals"] == {"EUR": "5.5", "USD": "7"}


def test_a_batch_applied_twice_is_counted_as_duplicates_and_changes_nothing(make):
    graph = make(SearchOptions(window_ms=H))
    first = graph.process(triangle())
    edges, size = graph.edge_count(), graph.nbytes()
    again = graph.process(triangle())
    assert len(first.alerts) == 1
    assert again.alerts == [] and again.duplicates == 3 and again.rejected == []
    assert (graph.edge_count(), graph.nbytes()) == (edges, size)


def test_a_tx_id_reused_with_other_content_is_a_conflict_with_the_reason(make):
    graph = make(SearchOptions(window_ms=H))
    graph.process([tx("t1", "A", "B", 0)])
    result = graph.process([tx("t1", "A", "B", 0, "101"), tx("t2", "B", "A", 1)])
    assert [(r.index, r.tx_id) for r in result.rejected] == [(0, "t1")]
    assert result.rejected[0].reason.startswith("conflict: tx_id 't1' is already stored with other content")
    assert [a.tx_ids for a in result.alerts] == [("t1", "t2")]


def test_witness_exactly_at_the_window_edge_counts_and_one_ms_older_does_not(make):
    options = SearchOptions(window_ms=1000)
    on_edge = make(options).process([tx("a", "A", "B", 0), tx("b", "B", "A", 1000)])
    past_edge = make(options).process([tx("a", "A", "B", 0), tx("b", "B", "A", 1001)])
    assert [a.accounts for a in on_edge.alerts] == [("A", "B")]
    assert past_edge.alerts == []


def test_a_window_of_zero_takes_only_payments_at_the_same_time(make):
    graph = make(SearchOptions(window_ms=0))
    result = graph.process([tx("a", "A", "B", 5), tx("b", "B", "A", 5), tx("c", "A", "B", 4), tx("d", "B", "A", 6)])
    assert [a.tx_ids for a in result.alerts] == [("a", "b")]


def test_empty_batches_and_unknown_accounts_are_fine(make):
    graph = make(SearchOptions(window_ms=H))
    assert graph.process([]).alerts == []
    assert graph.process(payment_table([])).alerts == []
    assert graph.edges(["nobody"], "out") == {"nobody": []}
    assert graph.evict(10) == 0
    assert graph.process(triangle(start=10)).alerts


def test_edges_older_than_the_horizon_are_evicted(make):
    graph = make(SearchOptions(window_ms=1000))
    graph.process([tx(f"old{i}", f"X{i}", f"Y{i}", i) for i in range(50)])
    assert graph.edge_count() >= 50
    graph.process([tx("new", "P", "Q", 5000)])
    graph.evict(4000)
    assert graph.edges(["X1", "P"], "out") == {"X1": [], "P": graph.edges(["P"], "out")["P"]}
    assert [e.tx_id for e in graph.edges(["P"], "out")["P"]] == ["new"]
    assert graph.process([tx("back", "Y1", "X1", 5001)]).alerts == []
    # a payment older than the horizon is not stored silently: it comes back as late, with the reason
    refused = graph.process([tx("stale", "Y2", "X2", 3999), tx("fresh", "Q", "P", 5002)])
    assert [(r.index, r.tx_id, r.reason.split(":")[0]) for r in refused.rejected] == [(0, "stale", "late")]
    assert [a.accounts for a in refused.alerts] == [("P", "Q")]


def test_store_compaction_keeps_every_live_edge():
    graph = LocalRingGraph(SearchOptions(window_ms=100, max_hops=3))
    for start in range(0, 20_000, 1000):
        graph.process([tx(f"t{i}", f"a{i % 37}", f"a{(i * 7) % 37}", i) for i in range(start, start + 1000)])
        graph.evict(start + 1000 - 150)
    live = graph.edges([f"a{i}" for i in range(37)], "out", since=19_850)
    assert sorted(e.tx_id for edges in live.values() for e in edges) == sorted(f"t{i}" for i in range(19_850, 20_000))


def test_partitioning_is_stable_across_processes():
    accounts = [f"acct-{i}" for i in range(200)]
    here = [shard_of(a, 7) for a in accounts]
    code = ("import json,sys; from ringwatch.graph import shard_of; "
            "print(json.dumps([shard_of(a, 7) for a in json.loads(sys.argv[1])]))")
    there = subprocess.run([sys.executable, "-c", code, json.dumps(accounts)],
                           capture_output=True, text=True, check=True).stdout
    assert json.loads(there) == here
    assert len(set(here)) == 7


def test_a_late_payment_in_the_middle_of_a_ring_completes_it_when_it_arrives(make):
    graph = make(SearchOptions(window_ms=10 * H))
    assert graph.process([tx("ab", "A", "B", 1 * H), tx("ca", "C", "A", 3 * H)]).alerts == []
    late = graph.process([tx("bc", "B", "C", 2 * H)])
    assert [(a.trigger_tx_id, a.tx_ids) for a in late.alerts] == [("ca", ("ab", "bc", "ca"))]
    assert late.late_payments == 1


def test_a_late_trigger_uses_only_witnesses_before_it_in_event_time(make):
    graph = make(SearchOptions(window_ms=10 * H))
    graph.process([tx("ab", "A", "B", 1 * H), tx("bc_after", "B", "C", 5 * H), tx("bc", "B", "C", 2 * H)])
    result = graph.process([tx("ca", "C", "A", 3 * H)])
    assert [a.tx_ids for a in result.alerts] == [("ab", "bc", "ca")]


def test_the_hub_guard_is_off_by_default_and_every_cut_is_reported(make):
    # A -> HUB -> C0 -> D -> A: the forward search from A must pass through the hub.
    stream = [tx("a", "A", "HUB", 0)] + [tx(f"h{i}", "HUB", f"C{i}", 1 + i) for i in range(5)]
    stream += [tx("c", "C0", "D", 10), tx("d", "D", "A", 11)]
    assert SearchOptions().max_degree is None
    exact = make(SearchOptions(window_ms=H)).process(stream)
    guarded = make(SearchOptions(window_ms=H, max_degree=3)).process(stream)
    assert [a.accounts for a in exact.alerts] == [("A", "HUB", "C0", "D")] and exact.truncated_searches == 0
    assert guarded.alerts == [] and guarded.truncated_searches >= 1


@pytest.mark.parametrize("old_payments_of_b", [0, 5])
def test_a_side_emptied_by_the_hub_guard_is_not_final(make, old_payments_of_b):
    """Trigger A -> B, witness B -> A, A's in-list a hub: the ring needs no hub list scanned (the search enters
    A without its in-list), so it is raised whichever side the search grows first. Evicted payments of B still
    in its list make the forward side look dearer, so the backward side (A's hub in-list) grows first."""
    graph = make(SearchOptions(window_ms=H, max_degree=2))
    graph.process([tx(f"old{i}", "B", f"Z{i}", i) for i in range(old_payments_of_b)])
    graph.evict(100)
    graph.process([tx(f"x{i}", f"X{i}", "A", 200 + i) for i in range(3)] + [tx("ba", "B", "A", 300)])
    result = graph.process([tx("ab", "A", "B", 400)])
    assert [(a.accounts, a.tx_ids) for a in result.alerts] == [(("B", "A"), ("ba", "ab"))]
    assert all(a.cut_by == ("max_degree",) for a in result.alerts) and result.truncated_searches == 1


@pytest.mark.parametrize("kind", ["local", "sharded"])
def test_latency_counts_from_the_latest_arrival_among_the_ring_s_batch_payments(kind):
    options = SearchOptions(window_ms=H)
    now = lambda: 100.0  # noqa: E731
    graph = LocalRingGraph(options, clock=now) if kind == "local" else ShardedRingGraph(
        options, [GraphShard(i, 2) for i in range(2)], clock=now)
    graph.process([tx("t1", "A", "B", 0)], received_at=10.0)
    first = graph.process([tx("x", "Q", "R", 1), tx("t2", "B", "C", 1), tx("t3", "C", "A", 2)],
                          received_at=[99.0, 98.5, 99.25])
    replayed = graph.process([tx("z", "R", "S", 3), tx("t3", "C", "A", 2)], received_at=[99.75, 99.5], replay=True)
    unknown = graph.process([tx("u1", "D", "E", 5), tx("u2", "E", "D", 6)])
    assert [(a.tx_ids, a.latency_ms) for a in first.alerts] == [(("t1", "t2", "t3"), 750.0)]
    assert [(a.tx_ids, a.latency_ms) for a in replayed.alerts] == [(("t1", "t2", "t3"), 500.0)]
    assert [(a.tx_ids, a.latency_ms) for a in unknown.alerts] == [(("u1", "u2"), 0.0)]


def test_max_rings_per_tx_caps_and_says_so_on_the_alert(make):
    stream = [tx(f"ab{i}", "A", f"B{i}", i) for i in range(4)] + [tx(f"ba{i}", f"B{i}", "Z", 10 + i) for i in range(4)]
    stream.append(tx("close", "Z", "A", 20))
    result = make(SearchOptions(window_ms=H, max_rings_per_tx=2)).process(stream)
    assert len(result.alerts) == 2 and all(a.truncated and a.cut_by == ("max_rings_per_tx",) for a in result.alerts)
    assert result.truncated_searches == 1


def test_min_amount_and_order_none(make):
    small = make(SearchOptions(window_ms=H, min_amount="50")).process(
        [tx("a", "A", "B", 0, "10"), tx("b", "B", "A", 1)])
    unordered = make(SearchOptions(window_ms=H, order="none")).process(
        [tx("bc", "B", "C", 0), tx("ab", "A", "B", 1), tx("ca", "C", "A", 2)])
    assert small.alerts == []
    assert [a.tx_ids for a in unordered.alerts] == [("ab", "bc", "ca")]


def test_large_random_stream_in_shuffled_batches_against_the_oracle():
    rng = random.Random(7)
    stream, ts = [], 0
    for i in range(400):
        ts += rng.choice([0, 1, 5, 30])
        stream.append(tx(f"t{i}", f"a{rng.randrange(25)}", f"a{rng.randrange(25)}", ts, rng.choice(["90", "100"])))
    options = SearchOptions(max_hops=6, window_ms=300, max_rings_per_tx=None)
    shuffled = list(stream)
    rng.shuffle(shuffled)
    for graph in (LocalRingGraph(options), ShardedRingGraph.in_process(options, 4)):
        raised = {}
        for start in range(0, len(shuffled), 37):
            raised.update((a.alert_id, a.accounts) for a in graph.process(shuffled[start:start + 37]).alerts)
        expected = oracle(stream, options)
        assert raised == {i: r.accounts for i, r in expected.items()}
        assert len(raised) > 20


@pytest.mark.parametrize("late_unfiltered", [0, 64])
def test_a_long_stream_with_eviction_and_compaction_raises_exactly_the_oracle_s_rings(late_unfiltered):
    """Thousands of payments through a small window: lists drop their evicted heads, shift and move, and the
    store compacts (renumbers every edge); arrival is shuffled within blocks (late payments),
    eviction never reaches a payment a later one could still need. Each ring is raised once, as the oracle's.
    Late payments' candidate triggers: always filtered by backward labels (0), or only beyond 64 (default)."""
    rng = random.Random(11)
    stream, ts = [], 0
    for i in range(3000):
        ts += rng.choice([0, 1, 1, 3])
        stream.append(tx(f"t{i:04d}", f"a{rng.randrange(30)}", f"a{rng.randrange(30)}", ts))
    arrival = []
    for start in range(0, len(stream), 40):
        block = stream[start:start + 40]
        rng.shuffle(block)
        arrival += block
    options = SearchOptions(max_hops=5, window_ms=40, max_rings_per_tx=None)
    graph, raised, i = LocalRingGraph(options), [], 0
    graph.store.late_unfiltered = late_unfiltered
    compactions = 0
    while i < len(arrival):
        size = rng.randrange(1, 60)
        batch, i = arrival[i:i + size], i + size
        raised += [(a.alert_id, a.tx_ids) for a in graph.process(batch).alerts]
        if i < len(arrival):
            compactions += graph.evict(min(t.ts for t in arrival[i:i + 40]) - options.window_ms) > 0
    expected = oracle(stream, options)
    assert len(raised) == len(set(raised))
    assert sorted(raised) == sorted((k, r.tx_ids) for k, r in expected.items())
    assert compactions >= 1 and len(expected) > 100


def test_subgraph_exports_payments_with_amounts_and_times(make):
    graph = make(SearchOptions(window_ms=H))
    graph.process(triangle() + [tx("far", "Z", "Q", 3)])
    view = subgraph(graph, ["A"], hops=1)
    assert set(view.nodes) == {"A", "B", "C"}
    assert {(u, v, k) for u, v, k in view.edges(keys=True)} == {("A", "B", "t1"), ("C", "A", "t3")}
    assert view.edges["A", "B", "t1"] == {"amount": Decimal("100"), "ts": 0, "currency": None, "tx_id": "t1"}
    assert view.nodes["B"]["hops"] == 1
    assert set(subgraph(graph, ["A"], hops=2).nodes) == {"A", "B", "C"}
    assert set(subgraph(graph, ["A"], hops=1, since=1).edges(keys=True)) == {("C", "A", "t3")}
    assert list(subgraph(graph, ["nobody"], hops=2).edges) == []


def test_a_checkpoint_is_arrow_tables_and_restores_the_same_graph(make):
    graph = make(SearchOptions(window_ms=H))
    graph.process(triangle() + [tx("t4", "A", "C", 4, "7.5", "EUR")])
    tables = graph.checkpoint()
    copy = make(SearchOptions(window_ms=H))
    copy.restore(tables)
    accounts = ["A", "B", "C"]
    for way in ("out", "in"):
        assert copy.edges(accounts, way) == graph.edges(accounts, way)
    assert copy.process(triangle()).duplicates == 3
    assert sorted(a.tx_ids for a in copy.process([tx("t5", "C", "A", 9)]).alerts) == [("t1", "t2", "t5"), ("t4", "t5")]


def test_a_shard_actor_checkpoint_is_one_arrow_table():
    shard = GraphShard(1, 2)
    shard.apply(payment_table(triangle()))
    state = shard.__checkpoint__().build()  # built on the runtime's checkpoint writer thread
    restored = GraphShard(1, 2)
    restored.__restore__(state)
    assert state.num_rows == shard.edge_count() and restored.snapshot().equals(state)


@pytest.mark.parametrize("record, field", [
    ({"tx_id": "1", "dst": "b", "amount": 1, "ts": 1}, "src"),
    ({"tx_id": "1", "src": "a", "dst": "b", "amount": -5, "ts": 1}, "amount"),
    ({"tx_id": "1", "src": "a", "dst": "b", "amount": "lots", "ts": 1}, "amount"),
    ({"tx_id": "1", "src": "a", "dst": "b", "amount": "1.00001", "ts": 1}, "amount"),
    ({"tx_id": "1", "src": "a", "dst": "b", "amount": 1e308, "ts": 1}, "amount"),
    ({"tx_id": "1", "src": "a", "dst": "b", "amount": float("nan"), "ts": 1}, "amount"),
    ({"tx_id": "1", "src": "a", "dst": "b", "amount": 1, "ts": "yesterday"}, "ts"),
    ({"tx_id": "1", "src": "a", "dst": "b", "amount": 1, "ts": 1e308}, "ts"),
    ({"tx_id": "1", "src": "a", "dst": "b", "amount": 1, "ts": "2500-01-01T00:00:00Z"}, "ts"),
    ({"tx_id": "1", "src": "a", "dst": "b", "amount": 1, "ts": -1}, "ts"),
    ({"src": "a", "dst": "b", "amount": 1, "ts": 1}, "tx_id"),
])
def test_validation_names_the_bad_field(record, field):
    with pytest.raises(InvalidTransactionError) as caught:
        Transaction.from_dict(record)
    assert caught.value.field == field and str(caught.value).startswith(field + ":")


def test_amounts_are_exact_decimals_with_a_configurable_ceiling():
    record = {"tx_id": "1", "src": "a", "dst": "b", "amount": 20095.23, "ts": 1}
    assert Transaction.from_dict(record).amount == Decimal("20095.23")
    assert Transaction.from_dict(record).amount_units == 200_952_300
    with pytest.raises(InvalidTransactionError, match="ceiling"):
        Transaction.from_dict(record, max_amount=Decimal(1000))


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
    with pytest.raises(InvalidSearchOptionError, match="min_amount"):
        SearchOptions(min_amount="-1")

"""A store's snapshot is what an in-process checkpoint writes, built off the loop's lock: it must stay the payments
of its moment while the store goes on — batches appended, arrays grown, payments evicted and compacted away."""

from __future__ import annotations

from ringwatch.graph import LocalRingGraph, SearchOptions, Transaction


def payments(start: int, stop: int) -> list[Transaction]:
    return [Transaction(f"t{i}", f"a{i % 997}", f"a{(i * 7 + 1) % 1009}", str(1 + i % 5), i,
                        "EUR" if i % 3 else None) for i in range(start, stop)]


def test_a_snapshot_keeps_its_payments_while_the_store_grows_evicts_and_compacts():
    graph = LocalRingGraph(SearchOptions(window_ms=10_000))
    graph.process(payments(0, 3_000))
    then = graph.store.to_table()
    snapshot = graph.store.snapshot()
    capacity = graph.store.e_hot.shape[0]

    graph.process(payments(3_000, 9_000) + [Transaction("usd", "new-1", "new-2", "3", 8_999, "USD")])
    assert graph.store.evict(8_000) > 0, "the test means to compact"
    assert graph.store.e_hot.shape[0] != capacity or graph.store.n_edges < 3_000

    assert snapshot.to_table().equals(then)
    assert graph.store.snapshot().to_table().equals(graph.store.to_table())
    assert graph.store.to_table().num_rows == graph.store.live_count() == 1_001

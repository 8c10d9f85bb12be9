"""Compile every kernel path once, so later processes only load numba's cache.

numba compiles a function the first time it runs with new argument types and
caches the machine code next to `graph/kernel.py` (or in `NUMBA_CACHE_DIR`).
A fresh install pays about half a minute on first use; `python -m
ringwatch.graph.warmup` pays it up front (the test script does, before it
starts processes that would otherwise all compile at once).
"""

from __future__ import annotations

import time

from .model import Transaction
from .options import SearchOptions
from .ring_graph import LocalRingGraph
from .sharded import ShardedRingGraph


def warm_up() -> float:
    """Run insert, search (strict, none, flow rule), the late search, eviction and compaction; returns seconds."""
    started = time.perf_counter()
    payments = [Transaction(f"w{i}", f"a{i % 5}", f"a{(i * 3 + 1) % 5}", "10", i) for i in range(3000)]
    for options in (SearchOptions(window_ms=50, max_hops=4), SearchOptions(window_ms=50, order="none"),
                    SearchOptions(window_ms=50, min_ratio=0.5, max_ratio=2.0, max_degree=100)):
        for graph in (LocalRingGraph(options), ShardedRingGraph.in_process(options, 2)):
            graph.process(payments[1000:])
            graph.process(payments[:1000])  # late payments
            graph.evict(2900)  # compaction
            graph.process([Transaction("w-last", "a0", "a1", "10", 3000)])
    return time.perf_counter() - started


if __name__ == "__main__":
    print(f"ringwatch graph kernel ready in {warm_up():.1f} s")

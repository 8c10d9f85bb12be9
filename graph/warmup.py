"""Compile the kernel once, up front, and say so while it happens.

numba compiles a function the first time it runs with new argument types and
caches the machine code next to `graph/kernel.py` (or in `NUMBA_CACHE_DIR`).
A fresh install pays about half a minute on first use (minutes on a busy
machine), and every process that starts cold pays it again at the same time.
`load_compiled_code` is what the commands call before they start any worker:
this process compiles (or, usually, just loads) the paths it is about to run,
so the workers started after it find numba's cache warm, and a user watching a
first start sees a progress line instead of a silent minute.
`python -m ringwatch.graph.warmup` compiles every path (the test script does,
before it starts processes that would otherwise all compile at once).
"""

from __future__ import annotations

import logging
import threading
import time

from .model import Transaction
from .options import SearchOptions
from .ring_graph import LocalRingGraph
from .sharded import ShardedRingGraph, load_compiled_code as load_sharded_code

progress = logging.getLogger("ringwatch.progress")  # progress lines show at every log level

NOTICE_AFTER_S = 2.0  # a load from numba's cache takes well under a second: longer means compiling

_loaded: set[str] = set()  # placements whose code this process has run


def load_compiled_code(placement: str = "actors", *, notice_after_s: float = NOTICE_AFTER_S) -> float:
    """Load the compiled search this process runs for `placement` ("actors" or "in-process"); seconds taken.

    When that takes longer than `notice_after_s` (a first start after an
    install or upgrade: numba compiles), a progress line says what is going on
    and another when it is done. Once per process and placement; 0.0 after that.
    """
    if placement in _loaded:
        return 0.0
    _loaded.add(placement)
    notice = threading.Timer(notice_after_s, progress.info,
                             ("compiling the ring-search kernel (first start after an install or upgrade: "
                              "about half a minute, more on a busy machine; later starts load it from "
                              "numba's cache in under a second)",))
    notice.daemon = True
    started = time.perf_counter()
    notice.start()
    try:
        if placement == "in-process":
            _load_local_code()
        else:
            load_sharded_code()
    finally:
        notice.cancel()
    took = time.perf_counter() - started
    if took >= notice_after_s:
        progress.info("ring-search kernel compiled in %.0f s and cached", took)
    return took


def _load_local_code() -> None:
    """Run the in-process graph's paths once: a ring, a late payment, store growth, eviction and compaction."""
    graph = LocalRingGraph(SearchOptions(window_ms=10, max_hops=4))
    graph.process([Transaction("w2", "a", "b", "1", 2), Transaction("w3", "b", "c", "1", 3)])
    graph.process([Transaction("w1", "c", "a", "1", 1), Transaction("w4", "c", "a", "1", 4)])
    graph.process([Transaction(f"g{i}", f"g{i}", f"g{i + 1}", "1", 5) for i in range(3000)])
    graph.evict(6)


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

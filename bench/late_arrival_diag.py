"""Late arrival: CPU per payment of the ring search by arrival order, batch size and graph placement.

With several Kafka partitions interleaved most payments arrive older than the
newest one already stored: each is a late payment, searched for the rings it
closes at newer triggers (graph/label_rounds.py: WRAP and LATE jobs). This
prints, for one stream in one arrival order, the CPU each payment cost (this
process, plus the shard actors' processes with `--graph actors`: the figure
the machine's load does not inflate), the alert count with a hash of the
sorted alert ids (equal whatever the order, batching or placement), the load
average, and the sharded search's figures (rounds per batch, late payments,
those whose wrap search met, gather jobs).

    python bench/late_arrival_diag.py --graph actors --arrival parts:2000 --batch engine
    python bench/late_arrival_diag.py --graph sharded --arrival shuffle:3000

Arrival orders: `order` (event time), `shuffle:B` (shuffled within blocks of
B), `parts:K` (4 partitions keyed by src, fetched K payments at a time from a
random partition, as a consumer drains a backlog).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from collections import Counter

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ring_search import payments, shuffle_within  # noqa: E402

from ringwatch.connectors.synthetic import SyntheticConfig, generate  # noqa: E402
from ringwatch.graph import LocalRingGraph, SearchOptions, ShardedRingGraph  # noqa: E402
from ringwatch.graph.sharded import owners_of_column  # noqa: E402
from ringwatch.stream.eviction import EVICT_SLICES  # noqa: E402

PARTITIONS = 4
FIGURES = ("rounds", "late", "late_met", "survivors", "gathers", "gathered_edges", "bytes_out", "bytes_in")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tx", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=50_000)
    parser.add_argument("--arrival", default="parts:2000", help="order | shuffle:B | parts:K")
    parser.add_argument("--batch", default="engine", help="payments per batch, or 'engine' (256 doubling to 8192)")
    parser.add_argument("--graph", default="actors", choices=("local", "sharded", "actors"),
                        help="in process; 2 in-process GraphShards; 2 GraphShard actors on a local runtime")
    return parser.parse_args()


def arrive(table: pa.Table, arrival: str, seed: int = 7) -> tuple[pa.Table, int]:
    """The payments in arrival order, and how many arrivals a payment may lag (the eviction's slack)."""
    if arrival == "order":
        return table, 0
    kind, _, size = arrival.partition(":")
    if kind == "shuffle":
        return shuffle_within(table, int(size), seed), int(size)
    if kind != "parts":
        raise SystemExit(f"--arrival: order, shuffle:B or parts:K, not {arrival!r}")
    chunk = int(size)
    partition, _ = owners_of_column(table.column("src"), PARTITIONS)
    rows = [np.flatnonzero(partition == p) for p in range(PARTITIONS)]
    at = [0] * PARTITIONS
    rng = np.random.default_rng(seed)
    order: list[np.ndarray] = []
    while any(at[p] < rows[p].size for p in range(PARTITIONS)):
        p = int(rng.integers(PARTITIONS))
        order.append(rows[p][at[p]:at[p] + chunk])
        at[p] += chunk
    return table.take(pa.array(np.concatenate(order).astype(np.int64))), PARTITIONS * chunk


def batches(n: int, batch: str, first: int) -> list[tuple[int, int]]:
    out, start, cap = [], first, 256
    while start < n:
        size = cap if batch == "engine" else int(batch)
        out.append((start, size))
        start += size
        cap = min(2 * cap, 8192)
    return out


def main() -> None:
    args = parse_args()
    options = SearchOptions(window_ms=48 * 3_600_000, max_rings_per_tx=100)
    stream = generate(SyntheticConfig(n_transactions=args.tx, n_accounts=args.accounts, days=10, n_rings=50, seed=7))
    table, lateness = arrive(payments(stream), args.arrival)
    ts = table.column("ts").to_numpy()
    late_rows = int(np.count_nonzero(ts < np.maximum.accumulate(ts)))
    runtime = None
    if args.graph == "local":
        graph = LocalRingGraph(options)
    elif args.graph == "sharded":
        graph = ShardedRingGraph.in_process(options, 2)
    else:
        from ringwatch import runtime

        runtime.init()
        graph = ShardedRingGraph.create(options, 2)
        graph.process(table.slice(0, 1))  # the actors are up and their compiled code loaded
    first = 1 if args.graph == "actors" else 0
    window, step = options.window_ms, options.window_ms // EVICT_SLICES
    evicted, alerts, figures = None, set(), Counter()
    shards_before = sum(graph.cpu_seconds()) if runtime else 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    plan = batches(table.num_rows, args.batch, first)
    for start, size in plan:
        result = graph.process(table.slice(start, size))
        alerts.update(alert.alert_id for alert in result.alerts)
        end = min(start + size, table.num_rows)
        # evict as the engine would, behind the oldest payment still to arrive within the lateness
        horizon = int(min(ts[end - 1] if not lateness else ts[end:end + lateness].min(initial=ts[end - 1]),
                          ts[end:].min(initial=ts[end - 1]))) - window
        if evicted is None or horizon - evicted >= step:
            graph.evict(horizon)
            evicted = horizon
        if args.graph != "local":
            figures.update({name: getattr(graph.figures, name, 0) for name in FIGURES})  # 0: an older version
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    shards = sum(graph.cpu_seconds()) - shards_before if runtime else 0.0
    n = table.num_rows - first
    ids = zlib.crc32(",".join(sorted(alerts)).encode())
    print(f"{args.graph} arrival={args.arrival} batch={args.batch} batches={len(plan)} late rows={late_rows:,}: "
          f"CPU {(cpu + shards) / n * 1e6:.1f} us per payment (driver {cpu:.2f} s, shards {shards:.2f} s), "
          f"wall {wall:.1f} s, {len(alerts)} alerts, ids hash {ids}, load average {os.getloadavg()[0]:.1f}")
    if figures:
        print(f"  rounds per batch {figures['rounds'] / len(plan):.1f}, "
              + ", ".join(f"{name.replace('_', ' ')} {figures[name]:,}" for name in FIGURES[1:]))
    if runtime:
        graph.close()
        runtime.shutdown()


if __name__ == "__main__":
    main()

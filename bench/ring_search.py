"""Ring-search benchmark: throughput, per-transaction latency, memory and recall of the graph engine.

Streams the synthetic AML stream (`ringwatch.connectors.synthetic`, bank and
dense modes, injected rings as ground truth) through `RingDetector` with 1, 2
and 4 shards, and in the same run times a naive baseline (networkx `DiGraph` +
`all_simple_paths` per payment) on the first `--baseline-tx` payments, next to
the engine on the same prefix.

Latency: payments are handed over in micro-batches of `--batch-size` as fast as
the engine takes them; a payment's latency is the wall time of its batch (it
waits for the whole batch), so it is an upper bound on one payment's search.
Bytes per stored edge: the shards' own estimate of what their arrays, tx ids,
interning and dedup index hold, divided by the payments stored in the window.

Full size of issue 5:
    python bench/ring_search.py --transactions 1000000 --accounts 100000 --days 10
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import resource
import sys
import time
from collections import deque
from pathlib import Path

import networkx as nx
import numpy as np

from ringwatch.connectors.synthetic import SyntheticConfig, SyntheticStream, generate, write_stream
from ringwatch.graph import (
    ActorShards,
    LocalShards,
    RingDetector,
    SearchOptions,
    Transaction,
    parse_duration,
    search_in_parallel,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=10.0)
    parser.add_argument("--rings", type=int, default=50, help="injected rings per stream")
    parser.add_argument("--modes", default="bank,dense")
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--engine", choices=("local", "runtime"), default="local",
                        help="local: shards in this process; runtime: GraphShard actors + search tasks")
    parser.add_argument("--backend", choices=("ringwatch", "ray"), default="ringwatch",
                        help="runtime of --engine runtime: ringwatch's own, or Ray (started locally)")
    parser.add_argument("--max-hops", type=int, default=6)
    parser.add_argument("--window", default="48h")
    parser.add_argument("--max-degree", type=int, default=1000, help="hub guard; 0 turns it off")
    parser.add_argument("--max-rings-per-tx", type=int, default=100, help="0 turns the cap off")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--baseline-tx", type=int, default=20_000)
    parser.add_argument("--baseline-budget", type=float, default=60.0,
                        help="seconds the naive baseline may run before it is stopped (its rate still counts)")
    parser.add_argument("--engine-budget", type=float, default=120.0,
                        help="seconds one engine run may take before it is stopped (figures cover what it did)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write", type=Path, help="also write each stream (parquet) with its truth into this folder")
    parser.add_argument("--profile", action="store_true", help="cProfile the 1-shard run of each mode")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = SearchOptions(max_hops=args.max_hops, window_ms=parse_duration(args.window, name="window"),
                            max_degree=args.max_degree or None, max_rings_per_tx=args.max_rings_per_tx or None)
    shard_counts = [int(s) for s in args.shards.split(",")]
    print(f"# ring_search: {args.transactions:,} tx, {args.accounts:,} accounts, {args.days:g} days, "
          f"{args.rings} injected rings, max_hops={args.max_hops}, window={args.window}, "
          f"max_degree={options.max_degree}, max_rings_per_tx={options.max_rings_per_tx}, "
          f"batch={args.batch_size}, engine={args.engine}, backend={args.backend}, seed={args.seed}")
    runtime = _start_runtime(args.backend) if args.engine == "runtime" else None
    try:
        for mode in args.modes.split(","):
            stream = _generate(args, mode)
            transactions = stream.transactions
            print(f"\n## mode {mode}: {len(transactions):,} tx generated, "
                  f"{len(stream.rings)} rings injected ({_hub_summary(stream, options)})")
            print(f"{'shards':>6} {'tx done':>9} {'tx/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
                  f"{'B/edge':>7} {'recall':>9} {'alerts':>8} {'truncated':>9} {'maxRSS MB':>9}")
            for count in shard_counts:
                profile = cProfile.Profile() if args.profile and count == shard_counts[0] else None
                result = _run_engine(transactions, options, count, args, profile)
                print(f"{count:>6} {result['done']:>9,} {result['rate']:>9,.0f} {result['p50']:>8.2f} "
                      f"{result['p99']:>8.2f} {result['p999']:>9.2f} {result['bytes_per_edge']:>7.0f} "
                      f"{_recall(stream, result['alerts'], result['done']):>9} {len(result['alerts']):>8,} "
                      f"{result['truncated']:>9,} {_max_rss_mb():>9,.0f}")
                if profile is not None:
                    pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(18)
            _compare_with_baseline(transactions[:args.baseline_tx], options, args)
    finally:
        if runtime is not None:
            runtime.shutdown()
    return 0


def _start_runtime(backend: str):
    from ringwatch import runtime as rt

    rt.init(backend=backend)
    return rt


def _generate(args: argparse.Namespace, mode: str) -> SyntheticStream:
    config = SyntheticConfig(n_transactions=args.transactions, n_accounts=args.accounts, days=args.days,
                             mode=mode, n_rings=args.rings, seed=args.seed)
    stream = generate(config)
    if args.write is not None:
        args.write.mkdir(parents=True, exist_ok=True)
        truth = write_stream(stream, args.write / f"{mode}.parquet")
        print(f"# wrote {args.write / f'{mode}.parquet'} and {truth}")
    return stream


def _hub_summary(stream: SyntheticStream, options: SearchOptions) -> str:
    """How skewed the stream is: payments per window touching the busiest account."""
    per_window = len(stream) * options.window_ms / max(int(stream.ts[-1] - stream.ts[0]), 1)
    degree = np.bincount(np.concatenate([stream.src, stream.dst]), minlength=len(stream.account_names))
    busiest = int(degree.max() * per_window / len(stream))
    hubs = int((degree * per_window / len(stream) > (options.max_degree or np.inf)).sum())
    return f"~{per_window:,.0f} tx per window; busiest account ~{busiest:,} edges per window; " \
           f"~{hubs} accounts over the hub guard"


def _detector(count: int, options: SearchOptions, engine: str) -> RingDetector:
    if engine == "local":
        return RingDetector(LocalShards(count), options)
    searcher = functools.partial(search_in_parallel, parallelism=count)
    return RingDetector(ActorShards(count), options, searcher=searcher)


def _run_engine(transactions: list[Transaction], options: SearchOptions, count: int, args: argparse.Namespace,
                profile: cProfile.Profile | None) -> dict:
    detector = _detector(count, options, args.engine)
    latencies = np.empty(len(transactions))
    alerts, truncated, peak_bytes, peak_edges = [], 0, 0, 1
    sample_every = max(len(transactions) // 20, args.batch_size)
    started = time.perf_counter()
    if profile is not None:
        profile.enable()
    done = 0
    for start in range(0, len(transactions), args.batch_size):
        if time.perf_counter() - started > args.engine_budget:
            break
        batch = transactions[start:start + args.batch_size]
        batch_started = time.perf_counter()
        result = detector.process(batch)
        latencies[start:start + len(batch)] = time.perf_counter() - batch_started
        alerts.extend(result.alerts)
        truncated += result.truncated_searches
        done += len(batch)
        if (start // args.batch_size) % (sample_every // args.batch_size) == 0:
            peak_bytes, peak_edges = max((detector.shards.nbytes(), _payments_stored(detector)),
                                         (peak_bytes, peak_edges))
    if profile is not None:
        profile.disable()
    elapsed = time.perf_counter() - started
    if isinstance(detector.shards, ActorShards):
        detector.shards.close()
    p50, p99, p999 = np.percentile(latencies[:done] * 1000, [50, 99, 99.9])
    return {"done": done, "rate": done / elapsed, "p50": p50, "p99": p99, "p999": p999, "alerts": alerts,
            "truncated": truncated, "bytes_per_edge": peak_bytes / max(peak_edges, 1)}


def _payments_stored(detector: RingDetector) -> int:
    """Distinct payments held: a payment whose two ends live on different shards is stored on both."""
    shards = detector.shards
    if isinstance(shards, LocalShards):
        return len(set().union(*(store._seen for store in shards.stores)))
    return shards.edge_count()


def _recall(stream: SyntheticStream, alerts: list, done: int) -> str:
    """Injected rings raised, of those whose closing payment was processed."""
    raised = {(a.trigger_tx_id, a.accounts) for a in alerts}
    processed = {tx.tx_id for tx in stream.transactions[:done]}
    due = [ring for ring in stream.rings if ring.tx_ids[-1] in processed]
    found = sum((ring.tx_ids[-1], ring.accounts) in raised for ring in due)
    return f"{found}/{len(due)}"


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _compare_with_baseline(prefix: list[Transaction], options: SearchOptions, args: argparse.Namespace) -> None:
    engine = _run_engine(prefix, options, 1, argparse.Namespace(**{**vars(args), "engine": "local"}), None)
    if engine["done"] < len(prefix):
        prefix = prefix[:engine["done"]]
    done, elapsed, rings = _naive_baseline(prefix, options, args.baseline_budget)
    naive_rate = done / elapsed
    stopped = "" if done == len(prefix) else f", stopped after {args.baseline_budget:g} s"
    print(f"baseline on the first {len(prefix):,} tx: networkx {naive_rate:,.0f} tx/s ({done:,} tx{stopped}, "
          f"{rings:,} rings); engine (1 shard, local) {engine['rate']:,.0f} tx/s "
          f"({len(engine['alerts']):,} rings); ratio {engine['rate'] / naive_rate:,.1f}x")


def _naive_baseline(prefix: list[Transaction], options: SearchOptions, budget_s: float) -> tuple[int, float, int]:
    """Per payment: `all_simple_paths(v -> u)` on the windowed account graph, then a witness check.

    No hub guard and no ring cap: the textbook way, to see what the engine buys.
    """
    graph = nx.DiGraph()
    arrivals: deque[tuple[int, str, str]] = deque()
    rings, started, done = 0, time.perf_counter(), 0
    for tx in prefix:
        low = tx.ts - options.window_ms
        while arrivals and arrivals[0][0] < low:
            ts, a, b = arrivals.popleft()
            stamps = graph[a][b]["ts"]
            stamps.remove(ts)
            if not stamps:
                graph.remove_edge(a, b)
        if tx.src != tx.dst and tx.dst in graph and tx.src in graph:
            for path in nx.all_simple_paths(graph, tx.dst, tx.src, cutoff=options.max_hops - 1):
                rings += _witnessed(graph, path, low, tx.ts)
        if graph.has_edge(tx.src, tx.dst):
            graph[tx.src][tx.dst]["ts"].append(tx.ts)
        else:
            graph.add_edge(tx.src, tx.dst, ts=[tx.ts])
        arrivals.append((tx.ts, tx.src, tx.dst))
        done += 1
        if time.perf_counter() - started > budget_s:
            break
    return done, time.perf_counter() - started, rings


def _witnessed(graph: nx.DiGraph, path: list[str], low: int, high: int) -> bool:
    """Time-ordered witnesses exist along `path`: greedily take the earliest usable payment per hop."""
    at = low
    for a, b in zip(path, path[1:]):
        usable = [ts for ts in graph[a][b]["ts"] if at <= ts <= high]
        if not usable:
            return False
        at = min(usable)
    return True


if __name__ == "__main__":
    sys.exit(main())

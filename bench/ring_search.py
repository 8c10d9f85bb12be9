"""Ring-search benchmark: throughput, per-payment latency, memory and exactness of the graph engine v2.

One run prints, side by side:
- the in-process graph (`LocalRingGraph`, one compiled call per batch);
- the same stream through `GraphShard` actors on a local runtime (`--actor-shards`);
- `ringwatch detect` on the stream written as JSON lines (whole process, `--detect`);
- a baseline measured in the same run: a networkx brute force (per payment,
  `all_simple_paths` over the windowed account graph, then the v2 witness
  check) on the first `--baseline-tx` payments — it also proves exactness:
  its ring count must equal the engine's alert count on that prefix;
- compile time (fresh numba cache) and cache-load time (second start).

Latency: `p50/p99/p99.9 per payment` comes from a second in-process pass that
hands payments over one at a time (after warming with the rest of the stream in
batches), so it includes the Python call per payment. Through actors the two
operating points are printed apart, each with its batch size: throughput with
large batches (`--actor-batch-size`; their p50/p99/p99.9 is the batch's wall
time, which every payment of the batch waits for), and per-payment latency with
small batches (`--actor-latency-batch`, default one payment per call, over the
last `--actor-latency-tx` payments, after the same actors were emptied and
warmed with the window before them in large batches; a call evicts when the
engine would, once the horizon moved 1/16 of the window, not every call).
On a shared machine other processes take the CPU away at random: the run
prints the load average, and next to wall-clock figures the CPU time this
process spent (in-process: payments per CPU-second; per payment: the calling
thread's CPU time per call, which a descheduled process does not inflate).
Bytes per stored edge: the store's allocated arrays (edge columns, tx-id bytes
and table, per-account list pools) over the payments in the window; accounts'
interning is shown apart.

Full size (issue 10):
    python bench/ring_search.py --transactions 1000000 --accounts 100000 --days 10
The actor runs on ringwatch's runtime and on Ray, side by side (issue 14):
    python bench/ring_search.py --backends ringwatch,ray
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import networkx as nx
import numpy as np
import pyarrow as pa

from ringwatch.connectors.synthetic import SyntheticConfig, SyntheticStream, generate, write_stream
from ringwatch.graph import (PAYMENT_SCHEMA, LocalRingGraph, SearchOptions, ShardedRingGraph, Transaction,
                             parse_duration)
from ringwatch.stream.eviction import EVICT_SLICES

ISSUE_DENSE_BASELINE_TX_S = 143  # dense mode, 1 shard, before v2 (issue 10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=10.0)
    parser.add_argument("--rings", type=int, default=50, help="injected rings per stream")
    parser.add_argument("--modes", default="bank,dense")
    parser.add_argument("--max-hops", type=int, default=6)
    parser.add_argument("--window", default="48h")
    parser.add_argument("--max-rings-per-tx", type=int, default=0, help="0: no cap (exact)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--actor-shards", default="2", help="shard counts to run through GraphShard actors ('' = none)")
    parser.add_argument("--actor-batch-size", type=int, default=16384,
                        help="payments per batch of the actor throughput run (its batch latency is printed too)")
    parser.add_argument("--actor-latency-batch", type=int, default=1,
                        help="payments per call of the actor latency pass (1: one payment per call, as in process)")
    parser.add_argument("--actor-latency-tx", type=int, default=5_000,
                        help="payments the actor latency pass times (0: skip it)")
    parser.add_argument("--backends", default="ringwatch",
                        help="runtimes of the actor runs, side by side: ringwatch (its own), ray (started locally)")
    parser.add_argument("--actor-budget", type=float, default=300.0, help="seconds an actor run may take")
    parser.add_argument("--latency-tx", type=int, default=50_000, help="payments timed one at a time")
    parser.add_argument("--shuffle-block", type=int, default=2_000,
                        help="also run in process with arrival shuffled within blocks of this many payments (late "
                             "payments, as from several partitions); 0: skip")
    parser.add_argument("--budget", type=float, default=600.0,
                        help="seconds an in-process run may take (dense mode is output-bound); figures cover what it did")
    parser.add_argument("--baseline-tx", type=int, default=20_000)
    parser.add_argument("--baseline-budget", type=float, default=120.0)
    parser.add_argument("--detect", action="store_true", help="also time `ringwatch detect` on the bank stream")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = SearchOptions(max_hops=args.max_hops, window_ms=parse_duration(args.window, name="window"),
                            max_rings_per_tx=args.max_rings_per_tx or None)
    print(f"# ring_search: {args.transactions:,} tx, {args.accounts:,} accounts, {args.days:g} days, "
          f"{args.rings} injected rings, max_hops={args.max_hops}, window={args.window}, no hub guard, "
          f"max_rings_per_tx={options.max_rings_per_tx}, batch={args.batch_size}, seed={args.seed}, "
          f"cpus={os.cpu_count()}, load average {_load()}")
    compile_s, load_s, load_cpu_s = _compile_and_load_times()
    print(f"# numba: compile (fresh cache) {compile_s:.2f} s; second start (cache load) {load_s:.2f} s to the first "
          f"batch, {load_cpu_s:.2f} s of CPU for the whole process (load average {_load()})")
    warm = LocalRingGraph(options)  # load the compiled code (timed just above) before any clock starts
    warm.process([Transaction("w1", "x", "y", 1, 0), Transaction("w2", "y", "x", 1, 1)])
    warm.evict(1)
    for mode in args.modes.split(","):
        stream = generate(SyntheticConfig(n_transactions=args.transactions, n_accounts=args.accounts, days=args.days,
                                          mode=mode, n_rings=args.rings, seed=args.seed))
        table = payments(stream)
        print(f"\n## mode {mode}: {table.num_rows:,} payments, {len(stream.rings)} rings injected")
        print(f"{'engine':<24} {'tx done':>9} {'tx/s':>10} {'alerts':>9} {'alerts/s':>9} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'p99.9 ms':>9} {'B/edge':>7} {'recall':>8}")
        local = run_local(table, options, args.batch_size, args.budget)
        _row("in-process, 1 shard", local, stream)
        wall, cpu = per_payment_latency(table.slice(0, local["done"]), options, args.batch_size, args.latency_tx)
        print(f"{'  one payment per call':<24} {'':>9} {'':>10} {'':>9} {'':>9} {wall[0]:>8.3f} "
              f"{wall[1]:>8.3f} {wall[2]:>9.3f}")
        print(f"{'    same, CPU time':<24} {'':>9} {'':>10} {'':>9} {'':>9} {cpu[0]:>8.3f} "
              f"{cpu[1]:>8.3f} {cpu[2]:>9.3f}   (load average {_load()})")
        if args.shuffle_block:
            shuffled = run_local(shuffle_within(table.slice(0, local["done"]), args.shuffle_block, args.seed),
                                 options, args.batch_size, args.budget, lateness=args.shuffle_block)
            _row(f"  shuffled by {args.shuffle_block:,}", shuffled, stream)
            same = "same" if set(shuffled["ids"]) == set(local["ids"]) else "DIFFERENT"
            print(f"{'':<24} ({same} alert ids as in order; {local['cpu_s'] / shuffled['cpu_s']:.2f}x the in-order "
                  f"payments per CPU-second)")
        for shards in [int(s) for s in args.actor_shards.split(",") if s]:
            for backend in args.backends.split(","):
                actors = run_actors(table, options, shards, args, backend)
                _row(f"{shards} actors on {backend}", actors, stream)
                cpu = actors["driver_cpu_s"] + actors["shards_cpu_s"]
                print(f"{'':<24} (batches of {args.actor_batch_size:,}: p50/p99/p99.9 above are per batch; CPU: "
                      f"driver {actors['driver_cpu_s']:.2f} s + shards {actors['shards_cpu_s']:.2f} s for "
                      f"{actors['elapsed']:.2f} s of wall clock: {actors['done'] / cpu:,.0f} payments per CPU-second; "
                      f"load average {actors['load']})")
                if "latency" in actors:
                    (p50, p99, p999), count = actors["latency"], actors["latency_tx"]
                    print(f"{f'  {args.actor_latency_batch:,} per call':<24} {count:>9,} {'':>10} {'':>9} {'':>9} "
                          f"{p50:>8.2f} {p99:>8.2f} {p999:>9.2f}   (the last {count:,} payments, "
                          f"{args.actor_latency_batch:,} per call, wall clock; load average {actors['latency_load']})")
        baseline(table, options, args, local)
        if mode == "dense":
            print(f"dense: {local['rate'] / ISSUE_DENSE_BASELINE_TX_S:,.0f}x the {ISSUE_DENSE_BASELINE_TX_S} tx/s "
                  f"of the engine before v2 (issue 10); {local['alerts'] / local['elapsed']:,.0f} alerts/s")
        if args.detect and mode == "bank":
            detect_rate(stream, options, args)
    return 0


def payments(stream: SyntheticStream) -> pa.Table:
    """The stream as the graph's columns (amounts to 1/10,000 units), without a Python object per payment."""
    raw = stream.to_arrow()
    units = np.rint(raw.column("amount").to_numpy() * 10_000).astype(np.int64)
    return pa.table([raw.column("tx_id"), raw.column("src"), raw.column("dst"), raw.column("ts"), pa.array(units),
                     raw.column("currency")], schema=PAYMENT_SCHEMA)


def _row(name: str, result: dict, stream: SyntheticStream) -> None:
    print(f"{name:<24} {result['done']:>9,} {result['rate']:>10,.0f} {result['alerts']:>9,} "
          f"{result['alerts'] / result['elapsed']:>9,.0f} {result['p50']:>8.2f} {result['p99']:>8.2f} "
          f"{result['p999']:>9.2f} {result.get('bytes_per_edge', float('nan')):>7.0f} "
          f"{_recall(stream, result['ids'], result['done']):>8}")
    if "account_bytes" in result:
        print(f"{'':<24} (window: {result['edges']:,} payments, {result['store_mb']:.1f} MB edge store; accounts: "
              f"{result['account_bytes'] / 1e6:.1f} MB for interning and list heads)")
    if "cpu_s" in result:
        print(f"{'':<24} (CPU: {result['cpu_s']:.2f} s for {result['elapsed']:.2f} s of wall clock: "
              f"{result['done'] / result['cpu_s']:,.0f} payments per CPU-second; load average {_load()})")


def shuffle_within(table: pa.Table, block: int, seed: int) -> pa.Table:
    """The payments with arrival order shuffled within consecutive blocks (each block's late payments)."""
    rng = np.random.default_rng(seed)
    n = table.num_rows
    order = np.concatenate([rng.permutation(np.arange(s, min(s + block, n))) for s in range(0, n, block)] or [[]])
    return table.take(pa.array(order.astype(np.int64)))


def run_local(table: pa.Table, options: SearchOptions, batch_size: int, budget: float = float("inf"),
              lateness: int = 0) -> dict:
    """In process, batch by batch, evicting behind the newest payment (behind the oldest of the next `lateness`
    arrivals when arrival is shuffled, so no payment arrives below the horizon)."""
    graph = LocalRingGraph(options)
    window = options.window_ms
    ts = table.column("ts").to_numpy()
    times, alerts, peak, done = [], {}, (0, 1, 0), 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, table.num_rows, batch_size):
        if time.perf_counter() - started > budget:
            break
        batch = table.slice(start, batch_size)
        t0 = time.perf_counter()
        result = graph.process(batch)
        end = start + batch.num_rows
        graph.evict(int(ts[end - 1] if not lateness else ts[end:end + lateness].min(initial=ts[end - 1])) - window)
        times.append((time.perf_counter() - t0, batch.num_rows))
        done += batch.num_rows
        alerts.update((a.alert_id, (a.trigger_tx_id, a.accounts)) for a in result.alerts)
        if (start // batch_size) % 16 == 0:
            store = graph.store
            peak = max(peak, (store.nbytes(), store.live_count(), store.account_nbytes()))
    elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    return _figures(times, alerts, done, elapsed) | {
        "bytes_per_edge": peak[0] / max(peak[1], 1), "edges": peak[1], "store_mb": peak[0] / 1e6,
        "account_bytes": peak[2], "cpu_s": cpu_s}


def per_payment_latency(table: pa.Table, options: SearchOptions, batch_size: int, count: int
                        ) -> tuple[tuple, tuple]:
    """(p50, p99, p99.9) ms per call of one payment each (process + evict, as run_local): wall clock, thread CPU."""
    graph = LocalRingGraph(options)
    head = max(table.num_rows - count, 0)
    for start in range(0, head, batch_size):
        batch = table.slice(start, min(batch_size, head - start))
        graph.process(batch)
        graph.evict(batch.column("ts")[-1].as_py() - options.window_ms)
    ts = table.column("ts").to_numpy()
    wall, cpu = [], []
    for i in range(head, table.num_rows):
        t0, c0 = time.perf_counter(), time.thread_time()
        graph.process(table.slice(i, 1))
        graph.evict(int(ts[i]) - options.window_ms)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return (tuple(np.percentile(np.array(wall) * 1000, [50, 99, 99.9])),
            tuple(np.percentile(np.array(cpu) * 1000, [50, 99, 99.9])))


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def run_actors(table: pa.Table, options: SearchOptions, shards: int, args: argparse.Namespace, backend: str
               ) -> dict:
    """The stream through `shards` GraphShard actors in batches of `--actor-batch-size` (throughput), then the
    latency pass (`actor_latency`) on the same actors."""
    from ringwatch import runtime as rt

    rt.init(backend=backend)
    graph = ShardedRingGraph.create(options, shards)
    batch_size = args.actor_batch_size
    try:
        graph.process(table.slice(0, 1))  # start the actors (and their compiled code) before the clock
        times, alerts, done = [], {}, 1
        shards_cpu, driver_cpu = sum(graph.cpu_seconds()), time.process_time()
        started = time.perf_counter()
        for start in range(1, table.num_rows, batch_size):
            if time.perf_counter() - started > args.actor_budget:
                break
            batch = table.slice(start, batch_size)
            t0 = time.perf_counter()
            result = graph.process(batch)
            graph.evict(batch.column("ts")[-1].as_py() - options.window_ms)
            times.append((time.perf_counter() - t0, batch.num_rows))
            alerts.update((a.alert_id, (a.trigger_tx_id, a.accounts)) for a in result.alerts)
            done += batch.num_rows
        elapsed = time.perf_counter() - started
        figures = _figures(times, alerts, done, elapsed) | {
            "load": _load(), "driver_cpu_s": time.process_time() - driver_cpu,
            "shards_cpu_s": sum(graph.cpu_seconds()) - shards_cpu}
        if args.actor_latency_tx:
            count = min(args.actor_latency_tx, table.num_rows - 1)
            figures |= {"latency": actor_latency(graph, table, options, batch_size, args.actor_latency_batch, count),
                        "latency_tx": count, "latency_load": _load()}
        return figures
    finally:
        graph.close()
        rt.shutdown()


def actor_latency(graph: ShardedRingGraph, table: pa.Table, options: SearchOptions, batch_size: int, small: int,
                  count: int) -> tuple:
    """(p50, p99, p99.9) ms per call of `small` payments each over the last `count` payments (process, and evict
    when the engine would: once the horizon moved 1/16 of the window, not per call). The shards are emptied first and warmed, in batches of `batch_size`, with the payments of the
    window before the timed ones: the live graph the timed calls search is the full run's."""
    graph.restore([PAYMENT_SCHEMA.empty_table()] * graph.num_shards)
    ts = table.column("ts").to_numpy()
    head = table.num_rows - count
    ordered = bool(np.all(ts[1:] >= ts[:-1]))
    warm_from = int(np.searchsorted(ts, ts[head] - options.window_ms)) if ordered else 0
    for start in range(warm_from, head, batch_size):
        batch = table.slice(start, min(batch_size, head - start))
        graph.process(batch)
        graph.evict(int(ts[start + batch.num_rows - 1]) - options.window_ms)
    wall, evicted = [], int(ts[head - 1]) - options.window_ms if head else None
    for start in range(head, table.num_rows, small):
        batch = table.slice(start, small)
        t0 = time.perf_counter()
        graph.process(batch)
        horizon = int(ts[start + batch.num_rows - 1]) - options.window_ms
        if evicted is None or horizon - evicted >= options.window_ms // EVICT_SLICES:
            graph.evict(horizon)  # a pass over the shards: as the engine, once the horizon moved a slice of the window
            evicted = horizon
        wall.append(time.perf_counter() - t0)
    return tuple(np.percentile(np.array(wall) * 1000, [50, 99, 99.9]))


def _figures(times: list[tuple[float, int]], alerts: dict, done: int, elapsed: float) -> dict:
    per_payment = np.repeat([t for t, _ in times], [n for _, n in times]) * 1000
    p50, p99, p999 = np.percentile(per_payment, [50, 99, 99.9]) if per_payment.size else (0, 0, 0)
    return {"done": done, "rate": done / elapsed, "elapsed": elapsed, "alerts": len(alerts), "ids": alerts,
            "p50": p50, "p99": p99, "p999": p999}


def _recall(stream: SyntheticStream, raised: dict, done: int) -> str:
    """Injected rings raised, of those whose closing payment was processed."""
    found_cycles = {(t, frozenset(accounts)) for t, accounts in raised.values()}
    width = len(stream.rings[0].tx_ids[-1]) if stream.rings else 0
    due = [r for r in stream.rings if int(r.tx_ids[-1][2:]) < done] if width else []
    return f"{sum((r.tx_ids[-1], frozenset(r.accounts)) in found_cycles for r in due)}/{len(due)}"


def baseline(table: pa.Table, options: SearchOptions, args: argparse.Namespace, local: dict) -> None:
    """networkx brute force on a prefix, next to the engine on the same prefix; their ring counts must agree.

    The brute force lists every ring, so the engine runs here without the ring cap: a capped run that
    reports fewer rings is a cut, not a difference (the capped figures are the main run's)."""
    prefix = table.slice(0, args.baseline_tx)
    engine = run_local(prefix, replace(options, max_rings_per_tx=None), args.batch_size)
    done, elapsed, rings = brute_force(prefix, options, args.baseline_budget)
    complete = done == prefix.num_rows
    verdict = ("equal" if rings == engine["alerts"] else "DIFFERENT") if complete else "not compared (stopped)"
    print(f"baseline, first {prefix.num_rows:,} payments: networkx brute force {done / elapsed:,.0f} tx/s "
          f"({done:,} tx{'' if complete else f', stopped after {args.baseline_budget:g} s'}, {rings:,} rings); "
          f"engine without the ring cap {engine['rate']:,.0f} tx/s ({engine['alerts']:,} rings): ring counts {verdict}; "
          f"engine {engine['rate'] / (done / elapsed):,.0f}x the baseline")


def brute_force(prefix: pa.Table, options: SearchOptions, budget_s: float) -> tuple[int, float, int]:
    """Per payment in (ts, tx_id) order: every simple path dst -> src in the windowed account graph of the
    payments before it, kept when time-ordered witnesses exist (earliest usable payment per hop)."""
    rows = sorted(zip(prefix.column("ts").to_pylist(), prefix.column("tx_id").to_pylist(),
                      prefix.column("src").to_pylist(), prefix.column("dst").to_pylist()),
                  key=lambda r: (r[0], r[1].encode()))
    graph = nx.DiGraph()
    arrivals: deque = deque()
    rings, done, started = 0, 0, time.perf_counter()
    strict = options.order == "strict"
    for ts, _, src, dst in rows:
        low = ts - options.window_ms
        while arrivals and arrivals[0][0] < low:
            old, a, b = arrivals.popleft()
            stamps = graph[a][b]["ts"]
            stamps.remove(old)
            if not stamps:
                graph.remove_edge(a, b)
        if src != dst and src in graph and dst in graph:
            for path in nx.all_simple_paths(graph, dst, src, cutoff=options.max_hops - 1):
                at, ok = low, True
                for a, b in zip(path, path[1:]):
                    usable = [t for t in graph[a][b]["ts"] if (t >= at if strict else True) and t <= ts]
                    if not usable:
                        ok = False
                        break
                    at = min(usable) if strict else at
                rings += ok
        if graph.has_edge(src, dst):
            graph[src][dst]["ts"].append(ts)
        else:
            graph.add_edge(src, dst, ts=[ts])
        arrivals.append((ts, src, dst))
        done += 1
        if time.perf_counter() - started > budget_s:
            break
    return done, time.perf_counter() - started, rings


def detect_rate(stream: SyntheticStream, options: SearchOptions, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "payments.jsonl"
        write_stream(stream, path)
        command = [sys.executable, "-m", "ringwatch.stream.cli", "detect", str(path), "--window", args.window,
                   "--max-hops", str(args.max_hops), "--max-rings-per-tx", str(args.max_rings_per_tx or "none"),
                   "--out", str(Path(folder) / "alerts.jsonl")]
        size_mb = path.stat().st_size / 1e6
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
    last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    print(f"ringwatch detect on {len(stream):,} JSON lines ({size_mb:.0f} MB): {len(stream) / elapsed:,.0f} "
          f"payments/s for the whole process ({elapsed:.1f} s, exit {done.returncode}): {last}")


def _compile_and_load_times() -> tuple[float, float, float]:
    """Seconds to the first processed batch in a fresh process: with an empty numba cache, then with it; and the
    second start's CPU seconds, interpreter start included (what a busy machine does not inflate)."""
    code = ("import time; t=time.perf_counter(); from ringwatch.graph import LocalRingGraph, SearchOptions, "
            "Transaction; g=LocalRingGraph(SearchOptions()); g.process([Transaction('a','x','y',1,0), "
            "Transaction('b','y','x',1,1)]); print(time.perf_counter()-t, time.process_time())")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    load_s, load_cpu_s = map(float, second.stdout.split())
    return float(first.stdout.split()[0]), load_s, load_cpu_s


if __name__ == "__main__":
    sys.exit(main())

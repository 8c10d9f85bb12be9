"""How long a shard checkpoint stalls its actor: the latency of calls made to a `GraphShard` while it checkpoints.

A `GraphShard` actor on a local runtime holds `--edges` payments. Each round
sends `rt.checkpoint(shard)` and then, back to back until the checkpoint
answers, cheap calls (`edge_count`) to the same actor; a call that waits
behind the checkpoint shows the stall. Per tree it prints, medians over the
rounds: the slowest call during a checkpoint (the stall), the calls served
meanwhile (and their p90 latency, all rounds), the checkpoint's wall time until its id came back (durable), and
the call latency with no checkpoint running.

`--shards N` (N > 1) measures instead the engine's aligned checkpoint over N
shard actors (`ShardedEngineGraph.checkpoint`, `--edges` payments each): its
wall time, median over the rounds.

`--baseline DIR` runs the same measurement with DIR first on PYTHONPATH (a
directory holding a `ringwatch` package, e.g. main's code), alternating with
this tree, in the same run; the load average is printed with every figure.

Run: python bench/shard_checkpoint.py [--edges 200000] [--rounds 5] [--baseline DIR] [--repeats 2] [--shards N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def payments(start: int, n: int, accounts: int, rng):
    """`n` synthetic payments as a payment table."""
    import numpy as np
    import pyarrow as pa

    from ringwatch.graph.batch import PAYMENT_SCHEMA

    ids = np.arange(start, start + n)
    return pa.table([
        pa.array([f"tx-{i}" for i in ids], pa.string()),
        pa.array([f"acct-{a}" for a in rng.integers(0, accounts, n)], pa.string()),
        pa.array([f"acct-{a}" for a in rng.integers(0, accounts, n)], pa.string()),
        pa.array(1_700_000_000_000 + ids, pa.int64()), pa.array(rng.integers(1, 10**8, n), pa.int64()),
        pa.array(["EUR"] * n, pa.string()),
    ], schema=PAYMENT_SCHEMA)


def measure_aligned(edges: int, rounds: int, shards: int) -> dict:
    """The engine's aligned checkpoint over `shards` shard actors of `edges` payments each."""
    import numpy as np

    import ringwatch.runtime as rt
    from ringwatch.graph import SearchOptions
    from ringwatch.stream.graph_port import ShardedEngineGraph

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="ringwatch-bench-ckpt-") as work:
        rt.init(num_workers=shards)
        try:
            graph = ShardedEngineGraph(shards, SearchOptions(), checkpoint_uri=f"file://{work}")
            for handle in graph.graph.handles:
                for start in range(0, edges, 20_000):
                    rt.get(handle.apply.remote(payments(start, min(20_000, edges - start), edges // 10, rng)),
                           timeout=600)
            code = rt.get(rt.remote(_code).remote(), timeout=600)
            graph.checkpoint()  # warm
            walls = []
            for _ in range(rounds):
                started = time.perf_counter()
                graph.checkpoint()
                walls.append(time.perf_counter() - started)
            graph.close()
        finally:
            rt.shutdown()
    return {"code": code, "shards": shards, "edges": edges, "wall_ms": statistics.median(walls) * 1e3,
            "wall_all_ms": [round(w * 1e3, 1) for w in walls]}


def measure(edges: int, rounds: int) -> dict:
    """One tree's figures (run in a fresh process, whatever `ringwatch` PYTHONPATH gives)."""
    import numpy as np

    import ringwatch.runtime as rt
    from ringwatch.graph.sharded import GraphShard
    from ringwatch.runtime.api import ActorMethod
    from ringwatch.runtime.protocol import CHECKPOINT_METHOD

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="ringwatch-bench-ckpt-") as work:
        rt.init(num_workers=1)
        try:
            shard = rt.remote(GraphShard).options(checkpoint_uri=f"file://{work}").remote(0, 1)
            for start in range(0, edges, 20_000):
                rt.get(shard.apply.remote(payments(start, min(20_000, edges - start), edges // 10, rng)), timeout=600)
            stored = rt.get(shard.edge_count.remote())
            code = rt.get(rt.remote(_code).remote(), timeout=600)
            idle = []
            for _ in range(200):
                started = time.perf_counter()
                rt.get(shard.edge_count.remote())
                idle.append(time.perf_counter() - started)
            rt.checkpoint(shard, timeout=600)  # warm: the store's folder, the writer thread
            stalls, served, walls, during = [], [], [], []
            for _ in range(rounds):
                started = time.perf_counter()
                ref = ActorMethod(shard, CHECKPOINT_METHOD).remote()
                latencies = []
                while not rt.wait([ref], timeout=0)[0]:
                    sent = time.perf_counter()
                    rt.get(shard.edge_count.remote(), timeout=600)
                    latencies.append(time.perf_counter() - sent)
                rt.get(ref, timeout=600)
                walls.append(time.perf_counter() - started)
                stalls.append(max(latencies, default=0.0))
                during.extend(latencies)
                served.append(len(latencies))
            files = list(Path(work).rglob("*.ckpt"))
            size = sum(f.stat().st_size for f in files) / max(1, len(files))
        finally:
            rt.shutdown()
    return {"code": code, "edges": stored, "mb": size / 1e6,
            "stall_ms": statistics.median(stalls) * 1e3, "stall_all_ms": [round(s * 1e3, 1) for s in stalls],
            "served": statistics.median(served),
            "p90_ms": statistics.quantiles(during, n=10)[-1] * 1e3 if len(during) > 1 else 0.0,
            "wall_ms": statistics.median(walls) * 1e3,
            "idle_p50_ms": statistics.median(idle) * 1e3}


def _code() -> str:
    """Where a worker's runtime comes from (the tree under test, not the installed one)."""
    import ringwatch.runtime.worker

    return str(Path(ringwatch.runtime.worker.__file__).resolve().parent.parent)


def run_tree(pythonpath: str | None, edges: int, rounds: int, shards: int) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, str(HERE), "--measure", "--edges", str(edges), "--rounds", str(rounds),
                          "--shards", str(shards)], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def show(label: str, figures: dict) -> None:
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if "shards" in figures:
        print(f"{label:<9} aligned checkpoint of {figures['shards']} shards x {figures['edges']} payments: "
              f"{figures['wall_ms']:7.1f} ms (rounds {figures['wall_all_ms']})  [{figures['code']}]  load {load}",
              flush=True)
        return
    print(f"{label:<9} stall {figures['stall_ms']:7.1f} ms (rounds {figures['stall_all_ms']})  "
          f"served meanwhile {figures['served']:5.0f} (p90 {figures['p90_ms']:.1f} ms)  "
          f"checkpoint wall {figures['wall_ms']:6.1f} ms  "
          f"idle call p50 {figures['idle_p50_ms']:.2f} ms  [{figures['edges']} edges, {figures['mb']:.1f} MB; "
          f"{figures['code']}]  load {load}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edges", type=int, default=200_000, help="payments the shard holds (default 200000)")
    parser.add_argument("--rounds", type=int, default=5, help="checkpoints per measurement (default 5)")
    parser.add_argument("--baseline", help="a directory holding the baseline's `ringwatch` package (PYTHONPATH)")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of baseline and this tree (default 2)")
    parser.add_argument("--shards", type=int, default=1, help="over 1: the aligned checkpoint of this many shards")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        figures = measure_aligned(args.edges, args.rounds, args.shards) if args.shards > 1 else \
            measure(args.edges, args.rounds)
        print(json.dumps(figures))
        return
    stalls: dict[str, list[float]] = {"baseline": [], "this": []}
    for _ in range(args.repeats):
        for label, path in (("baseline", args.baseline), ("this", None)):
            if label == "baseline" and not path:
                continue
            figures = run_tree(path, args.edges, args.rounds, args.shards)
            stalls[label].append(figures["wall_ms" if args.shards > 1 else "stall_ms"])
            show(label, figures)
    if stalls["baseline"]:
        ratio = statistics.median(stalls["baseline"]) / statistics.median(stalls["this"])
        what = "aligned checkpoint wall" if args.shards > 1 else "stall"
        print(f"{what}: baseline / this = {ratio:.2f}x (medians of the repeats)")


if __name__ == "__main__":
    main()

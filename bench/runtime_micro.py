"""Micro benchmark of the runtime, against Ray 2.x in the same run when `ray` is importable.

Rows (each a rate per second, higher is better):
  tasks async      5,000 no-op tasks submitted, then one get of all
  tasks sync       submit and get one task at a time
  actor async      5,000 calls on one actor, then one get of all
  actor sync       one actor call and its get at a time
  put+get 10 MB    put a 10 MB NumPy array and get it back
  tasks 1 ms       tasks that each burn 1 ms of CPU, submitted together (ideal: workers x 1,000/s)
  8 actors empty   calls spread over 8 actors, then one get of all
  8 actors 1 ms    calls that each burn 1 ms of CPU, spread over 8 actors (ideal: min(8, workers) x 1,000/s)

Run: python bench/runtime_micro.py [--workers N] [--n 5000] [--sync-n 1000] [--no-ray] [--cluster]
Both runtimes run in local mode with the same number of worker processes
(Ray: `num_cpus=N`), started side by side in this process, and each row is
measured in turns: ringwatch, Ray, ringwatch, Ray, ... (best of 3 each), so a
change in what else the machine runs hits both columns alike (the load average
is printed). The ideal column is what N workers that did nothing but the 1 ms
of work would reach; "% ideal" is ringwatch's rate against it (other processes
take cores from the ideal).
For the 1 ms rows it also prints the CPU each runtime spends per call beyond
the work itself (all its processes and threads, from /proc), which other load
does not change, and the share of ideal that leaves within reach, then where
that CPU goes: the calling thread, the runtime's other threads in the driver
(ringwatch: its node's dispatcher), its other processes (workers, and Ray's
raylet and GCS).
`--cluster` adds a column: the same rows from a driver that joined a loopback
cluster of two nodes with N/2 workers each (GCS in a local redis-server), so
every call crosses processes the way it does across machines; its ratio is
against ringwatch's local column (measured before it, not in turns).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

BURN_S = 0.001
ACTORS = 8
REPEATS = 3

Rows = dict[str, tuple[int, Callable[[], None]]]  # row -> (calls per run, one run)


def tree_cpu_s(pid: int | None = None) -> float:
    """CPU seconds used so far by a process, its threads and all its descendants (Linux /proc, ns precision)."""
    total, stack = 0, [pid or os.getpid()]
    while stack:
        current = stack.pop()
        try:
            for tid in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{tid}/schedstat") as stat:
                    total += int(stat.read().split()[0])
                with open(f"/proc/{current}/task/{tid}/children") as children:
                    stack.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


def _thread_cpu_s(tid: int) -> float:
    try:
        with open(f"/proc/{os.getpid()}/task/{tid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def _children() -> list[int]:
    found = []
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/children") as children:
                found.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def _is_ringwatch(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"ringwatch.runtime.worker" in cmdline.read()
    except (FileNotFoundError, ProcessLookupError):
        return False


def cpu_parts(name: str) -> dict[str, float]:
    """CPU seconds so far of one of the runtimes running side by side here, in three parts.

    The calling thread; the runtime's other threads in this process (ringwatch:
    its Python threads, named ringwatch-*, the node's dispatcher among them;
    Ray: every other thread); its other processes (ringwatch: its workers; Ray:
    every other child, raylet, GCS and workers under it).
    """
    caller = threading.get_native_id()
    named = {t.native_id for t in threading.enumerate() if t.name.startswith("ringwatch")}
    tids = [int(tid) for tid in os.listdir(f"/proc/{os.getpid()}/task") if int(tid) != caller]
    threads = [tid for tid in tids if (tid in named) == (name == "ringwatch")]
    processes = [pid for pid in _children() if _is_ringwatch(pid) == (name == "ringwatch")]
    return {"caller": _thread_cpu_s(caller), "threads": sum(_thread_cpu_s(tid) for tid in threads),
            "processes": sum(tree_cpu_s(pid) for pid in processes)}


def overhead_us(name: str, count: int, run: Callable[[], None]) -> dict[str, float]:
    """CPU the runtime `name` spends per call beyond the 1 ms of work: in all ("total"), and in the calling
    thread, its other threads and its other processes (less the work).

    Unlike the rate, this does not depend on what else the machine runs: with
    every core free, a rate of 1 ms / (1 ms + overhead) of ideal is within reach.
    """
    before = cpu_parts(name)
    run()
    used = {part: (value - before[part]) / count * 1e6 for part, value in cpu_parts(name).items()}
    used["processes"] -= BURN_S * 1e6
    return {"total": max(0.0, sum(used.values())), **used}


def burn(seconds: float) -> None:
    """Spend `seconds` of this thread's CPU time (a stand-in for a small unit of real work).

    CPU time, not wall time: a worker the OS leaves waiting for a core does not
    count that wait as work done.
    """
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def ideal_rates(workers: int) -> dict[str, float]:
    """The rate of N workers doing nothing but the 1 ms of work (rows without work have no ideal)."""
    return {"tasks 1 ms": workers / BURN_S, f"{ACTORS} actors 1 ms calls": min(ACTORS, workers) / BURN_S}


def prepare(rt: Any, n: int, sync_n: int, workers: int) -> Rows:
    """Every row for one runtime module exposing the Ray-style API (`remote`, `get`, `put`), warmed up."""

    @rt.remote
    def noop(x):
        return x

    @rt.remote
    class Echo:
        def echo(self, x):
            return x

    @rt.remote
    def busy(x):
        burn(BURN_S)
        return x

    @rt.remote
    class Busy:
        def echo(self, x):
            return x

        def busy(self, x):
            burn(BURN_S)
            return x

    actor = Echo.remote()
    crew = [Busy.remote() for _ in range(ACTORS)]
    rt.get([noop.remote(i) for i in range(200)])  # warm: workers started, code shipped
    rt.get([actor.echo.remote(i) for i in range(200)])
    rt.get([busy.remote(i) for i in range(20)])
    rt.get([a.echo.remote(0) for a in crew])
    busy_n = max(400, workers * 200)  # about 0.2 s of ideal work per repeat
    array = np.random.default_rng(0).random(10 * 1024 * 1024 // 8)
    put_n = 20

    def tasks_async() -> None:
        rt.get([noop.remote(i) for i in range(n)])

    def tasks_sync() -> None:
        for i in range(sync_n):
            rt.get(noop.remote(i))

    def actor_async() -> None:
        rt.get([actor.echo.remote(i) for i in range(n)])

    def actor_sync() -> None:
        for i in range(sync_n):
            rt.get(actor.echo.remote(i))

    def put_get() -> None:
        for _ in range(put_n):
            rt.get(rt.put(array))

    def busy_tasks() -> None:
        rt.get([busy.remote(i) for i in range(busy_n)])

    def crew_empty() -> None:
        rt.get([crew[i % ACTORS].echo.remote(i) for i in range(n)])

    def crew_busy() -> None:
        rt.get([crew[i % ACTORS].busy.remote(i) for i in range(busy_n)])

    return {
        "tasks async": (n, tasks_async),
        "tasks sync": (sync_n, tasks_sync),
        "actor calls async": (n, actor_async),
        "actor calls sync": (sync_n, actor_sync),
        "put+get 10 MB array": (put_n, put_get),
        "tasks 1 ms": (busy_n, busy_tasks),
        f"{ACTORS} actors empty calls": (n, crew_empty),
        f"{ACTORS} actors 1 ms calls": (busy_n, crew_busy),
    }


def measure(runtimes: dict[str, Rows]) -> dict[str, dict[str, Any]]:
    """Each row's best rate of `REPEATS` runs per runtime, the runtimes taking turns; then the 1 ms rows' CPU."""
    results: dict[str, dict[str, Any]] = {name: {} for name in runtimes}
    first = next(iter(runtimes.values()))
    for row in first:
        best = {name: float("inf") for name in runtimes}
        for _ in range(REPEATS):
            for name, rows in runtimes.items():
                start = time.perf_counter()
                rows[row][1]()
                best[name] = min(best[name], time.perf_counter() - start)
        for name, rows in runtimes.items():
            results[name][row] = rows[row][0] / best[name]
    for row in ideal_rates(1):
        for name, rows in runtimes.items():
            results[name][f"overhead {row}"] = overhead_us(name, *rows[row])
    return results


def run_local(workers: int, n: int, sync_n: int, with_ray: bool) -> dict[str, dict[str, Any]]:
    """ringwatch and (when importable) Ray side by side in this process, measured in turns."""
    import ringwatch.runtime as rt

    ray = None
    if with_ray:
        try:
            import ray
        except ImportError:
            ray = None
    rt.init(num_workers=workers)
    try:
        runtimes = {"ringwatch": prepare(rt, n, sync_n, workers)}
        if ray is not None:
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
            runtimes["ray"] = prepare(ray, n, sync_n, workers)
        try:
            return measure(runtimes)
        finally:
            if ray is not None:
                ray.shutdown()
    finally:
        rt.shutdown()


def run_ringwatch_cluster(workers: int, n: int, sync_n: int) -> dict[str, Any]:
    """The rows from a driver of a 2-node loopback cluster (the driver's light node owns its objects)."""
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import ringwatch.runtime as rt
    from runtime_cluster import TOKEN, Cluster
    from services import RedisServer

    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="ringwatch-bench-")) / "redis").start()
    cluster = Cluster(redis_server.url, "bench")
    try:
        for name in ("node-1", "node-2"):
            cluster.start_node(name, workers=max(1, workers // 2))
        rt.init(address=redis_server.url, token=TOKEN, namespace="bench")
        try:
            return measure({"ringwatch": prepare(rt, n, sync_n, workers)})["ringwatch"]
        finally:
            rt.shutdown()
    finally:
        cluster.stop()
        redis_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n", type=int, default=5000, help="tasks / calls in the async rows")
    parser.add_argument("--sync-n", type=int, default=1000, help="tasks / calls in the sync rows")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray column")
    parser.add_argument("--cluster", action="store_true", help="add ringwatch on a 2-node loopback cluster")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    local = run_local(args.workers, args.n, args.sync_n, not args.no_ray)
    ours, theirs = local["ringwatch"], local.get("ray")
    if theirs is None and not args.no_ray:
        print("ray is not importable: the Ray column is empty (pip install ray to fill it)")
    cluster = run_ringwatch_cluster(args.workers, args.n, args.sync_n) if args.cluster else None
    print(f"workers={args.workers}  n={args.n}  sync_n={args.sync_n}  cpus={os.cpu_count()}  "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after  "
          f"(rates per second, best of {REPEATS}, runtimes in turns)")
    ideal = ideal_rates(args.workers)
    header = f"{'row':<24} {'ringwatch':>10} {'ray':>10} {'ratio':>7} {'ideal':>8} {'% ideal':>8}"
    print(header + (f" {'2-node':>10} {'/local':>7}" if cluster else ""))
    overheads = {row: ours.pop(f"overhead {row}") for row in ideal}
    their_overheads = {row: theirs.pop(f"overhead {row}") for row in ideal} if theirs else {}
    cluster_overheads = {row: cluster.pop(f"overhead {row}") for row in ideal} if cluster else {}
    for row, value in ours.items():
        ray_rate = f"{theirs[row]:,.0f}" if theirs else "-"
        ratio = f"{value / theirs[row]:.2f}x" if theirs else "-"
        best = f"{ideal[row]:,.0f}" if row in ideal else "-"
        share = f"{value / ideal[row]:.0%}" if row in ideal else "-"
        line = f"{row:<24} {value:>10,.0f} {ray_rate:>10} {ratio:>7} {best:>8} {share:>8}"
        if cluster:
            line += f" {cluster[row]:>10,.0f} {cluster[row] / value:>6.2f}x"
        print(line)
    print("\nCPU spent per call beyond the 1 ms of work (driver, workers and daemons; independent of other load),")
    print("and the share of ideal it leaves reachable with every core free:")
    for row, value in overheads.items():
        line = f"{row:<24} ringwatch {value['total']:>6.0f} us ({BURN_S / (BURN_S + value['total'] / 1e6):.0%})"
        if their_overheads:
            theirs_total = their_overheads[row]["total"]
            line += f"   ray {theirs_total:>6.0f} us ({BURN_S / (BURN_S + theirs_total / 1e6):.0%})"
        if cluster_overheads:
            line += f"   2-node {cluster_overheads[row]['total']:>6.0f} us"
        print(line)
    print("\nwhere it goes, us per call: the calling thread / the runtime's other threads in the driver")
    print("(ringwatch: its node's dispatcher) / its other processes beyond the work (workers; Ray: also raylet, GCS):")
    for name, parts in (("ringwatch", overheads), ("ray", their_overheads), ("2-node", cluster_overheads)):
        for row, value in parts.items():
            print(f"{row:<24} {name:<9} {value['caller']:>6.0f} / {value['threads']:>6.0f} / {value['processes']:>6.0f}")


if __name__ == "__main__":
    main()

"""Micro benchmark of the runtime, against Ray 2.x in the same run when `ray` is importable.

Rows (each a rate per second, higher is better):
  tasks async      5,000 no-op tasks submitted, then one get of all
  tasks sync       submit and get one task at a time
  actor async      5,000 calls on one actor, then one get of all
  actor sync       one actor call and its get at a time
  put+get 10 MB    put a 10 MB NumPy array and get it back

Run: python bench/runtime_micro.py [--workers N] [--n 5000] [--sync-n 1000] [--no-ray]
Both runtimes run in local mode with the same number of worker processes.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _rate(count: int, run: Callable[[], None], repeats: int = 3) -> float:
    """Best of `repeats` runs, so one noisy run on a shared machine does not decide the row."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def measure(rt: Any, n: int, sync_n: int) -> dict[str, float]:
    """The five rows for one runtime module exposing the Ray-style API (`remote`, `get`, `put`)."""

    @rt.remote
    def noop(x):
        return x

    @rt.remote
    class Echo:
        def echo(self, x):
            return x

    actor = Echo.remote()
    rt.get([noop.remote(i) for i in range(200)])  # warm: workers started, code shipped
    rt.get([actor.echo.remote(i) for i in range(200)])
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

    return {
        "tasks async": _rate(n, tasks_async),
        "tasks sync": _rate(sync_n, tasks_sync),
        "actor calls async": _rate(n, actor_async),
        "actor calls sync": _rate(sync_n, actor_sync),
        "put+get 10 MB array": _rate(put_n, put_get),
    }


def run_ringwatch(workers: int, n: int, sync_n: int) -> dict[str, float]:
    import ringwatch.runtime as rt

    rt.init(num_workers=workers)
    try:
        return measure(rt, n, sync_n)
    finally:
        rt.shutdown()


def run_ray(workers: int, n: int, sync_n: int) -> dict[str, float] | None:
    try:
        import ray
    except ImportError:
        return None
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
    try:
        return measure(ray, n, sync_n)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n", type=int, default=5000, help="tasks / calls in the async rows")
    parser.add_argument("--sync-n", type=int, default=1000, help="tasks / calls in the sync rows")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray column")
    args = parser.parse_args()
    ours = run_ringwatch(args.workers, args.n, args.sync_n)
    theirs = None if args.no_ray else run_ray(args.workers, args.n, args.sync_n)
    if theirs is None and not args.no_ray:
        print("ray is not importable: the Ray column is empty (pip install ray to fill it)")
    print(f"workers={args.workers}  n={args.n}  sync_n={args.sync_n}  (rates per second, best of 3)")
    print(f"{'row':<22} {'ringwatch':>12} {'ray':>12} {'ratio':>8}")
    for row, value in ours.items():
        if theirs is None:
            print(f"{row:<22} {value:>12,.0f} {'-':>12} {'-':>8}")
        else:
            print(f"{row:<22} {value:>12,.0f} {theirs[row]:>12,.0f} {value / theirs[row]:>7.2f}x")


if __name__ == "__main__":
    main()

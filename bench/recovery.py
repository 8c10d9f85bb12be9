"""Recovery benchmark of the runtime on a 3-node loopback cluster (real processes, real Redis).

Prints:
  checkpoint write      MB/s for rt.checkpoint() of an actor holding STATE_MB of NumPy state
  actor back after kill seconds from SIGKILL of the actor's node to the restarted actor answering a call,
                        and from the GCS's death declaration to that answer (target: under 5 s)
  lineage overhead      tasks/s of cross-node tasks returning large values, with lineage recording
                        and without it (RINGWATCH_LINEAGE=0 on the nodes), measured in the same run

Run: python bench/recovery.py [--state-mb 100] [--tasks 300] [--heartbeat-timeout 5]
It needs redis-server on PATH (tests/run.sh installs it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import ringwatch.runtime as rt  # noqa: E402
from runtime_cluster import TOKEN, Cluster  # noqa: E402
from services import RedisServer  # noqa: E402

from ringwatch.runtime.auth import ClusterKeys  # noqa: E402
from ringwatch.runtime.gcs import RedisGcs  # noqa: E402

SPARE = {"spare": 1}


@rt.remote(resources=SPARE, max_restarts=1)
class Holder:
    """An actor with a large state, checkpointed as one NumPy array."""

    def __init__(self, megabytes: int):
        self.state = np.random.default_rng(0).random(megabytes * 1024 * 1024 // 8)

    def __checkpoint__(self) -> dict:
        return {"state": self.state}

    def __restore__(self, saved: dict) -> None:
        self.state = saved["state"]

    def where(self) -> tuple[str, float]:
        return rt.current_node_id(), float(self.state[:1000].sum())


@rt.remote(resources=SPARE)
def make_block(i: int) -> np.ndarray:
    return np.full(40_000, float(i))  # 320 KB: above the inline threshold, so it stays where it was made


def start_cluster(redis_url: str, name: str, heartbeat_timeout: float, env: dict[str, str]) -> Cluster:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cluster = Cluster(redis_url, f"{name}-{time.monotonic_ns()}",
                          extra_args=("--heartbeat-interval", str(heartbeat_timeout / 5),
                                      "--heartbeat-timeout", str(heartbeat_timeout)))
        cluster.start_node("node-a")
        rt.init(address=redis_url, token=TOKEN, namespace=cluster.namespace)  # the driver enters at node-a
        cluster.start_node("node-b", resources=SPARE)
        cluster.start_node("node-c", resources=SPARE)
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return cluster


def actor_recovery(redis_url: str, state_mb: int, heartbeat_timeout: float, checkpoint_dir: str) -> dict:
    cluster = start_cluster(redis_url, "actor", heartbeat_timeout, {})
    try:
        holder = Holder.options(checkpoint_uri=f"file://{checkpoint_dir}").remote(state_mb)
        victim, checksum = rt.get(holder.where.remote(), timeout=300)
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            rt.checkpoint(holder, timeout=300)
            timings.append(time.perf_counter() - start)
        killed_at = time.time()
        cluster.nodes[victim].kill()
        node, checksum_after = rt.get(holder.where.remote(), timeout=600)
        answered_at = time.time()
        gcs = RedisGcs(redis_url, cluster.namespace, keys=ClusterKeys.from_token(TOKEN))
        declared_at = gcs.dead_nodes()[victim]
        gcs.close()
        assert node != victim and checksum_after == checksum, "the restarted actor lost its state"
        return {"checkpoint_mb_s": state_mb / min(timings), "checkpoint_s": min(timings),
                "kill_to_answer_s": answered_at - killed_at, "declared_to_answer_s": answered_at - declared_at}
    finally:
        rt.shutdown()
        cluster.stop()


def task_rate(redis_url: str, tasks: int, lineage: bool) -> float:
    cluster = start_cluster(redis_url, "lineage", 5.0, {"RINGWATCH_LINEAGE": "1" if lineage else "0"})
    try:
        rt.get(rt.wait([make_block.remote(0) for _ in range(20)], num_returns=20, timeout=120)[0][0])  # warm up
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            refs = [make_block.remote(i) for i in range(tasks)]
            rt.wait(refs, num_returns=len(refs), timeout=600)
            best = min(best, time.perf_counter() - start)
            del refs
        return tasks / best
    finally:
        rt.shutdown()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-mb", type=int, default=100, help="actor state size in MB (default 100)")
    parser.add_argument("--tasks", type=int, default=300, help="tasks per lineage-overhead round (default 300)")
    parser.add_argument("--heartbeat-timeout", type=float, default=5.0,
                        help="node heartbeat timeout in seconds (default 5, the runtime's default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ringwatch-bench-") as work:
        redis_server = RedisServer(Path(work) / "redis").start()
        try:
            actor = actor_recovery(redis_server.url, args.state_mb, args.heartbeat_timeout, f"{work}/checkpoints")
            with_lineage = task_rate(redis_server.url, args.tasks, lineage=True)
            without = task_rate(redis_server.url, args.tasks, lineage=False)
        finally:
            redis_server.stop()
    print(f"cluster: 3 nodes on loopback, 1 worker each; heartbeat timeout {args.heartbeat_timeout} s")
    print(f"checkpoint write     {args.state_mb} MB in {actor['checkpoint_s']:.2f} s = "
          f"{actor['checkpoint_mb_s']:.0f} MB/s (best of 3, fsynced)")
    print(f"actor back after kill {actor['kill_to_answer_s']:.2f} s from SIGKILL, "
          f"{actor['declared_to_answer_s']:.2f} s after the death was declared (target < 5 s)")
    print(f"lineage overhead     {with_lineage:,.0f} tasks/s with lineage, {without:,.0f} without "
          f"(ratio {with_lineage / without:.2f})")


if __name__ == "__main__":
    main()

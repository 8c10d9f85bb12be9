"""Fault tolerance on a 3-node loopback cluster: nodes and workers killed with SIGKILL, Redis restarted.

Each test gets its own cluster (it kills parts of it). The driver joins through
node-a, started alone first; node-b and node-c both offer the resource "spare",
so work pinned to "spare" can move from one to the other when one dies.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import ringwatch.runtime as rt
from runtime_cluster import TOKEN, Cluster, until
from services import RedisServer

FAST_HEARTBEATS = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5")
SPARE = {"spare": 1}


def start_cluster(redis_url: str, name: str) -> Cluster:
    cluster = Cluster(redis_url, f"{name}-{os.getpid()}-{time.monotonic_ns()}", extra_args=FAST_HEARTBEATS)
    cluster.start_node("node-a")
    rt.init(address=redis_url, token=TOKEN, namespace=cluster.namespace)
    cluster.start_node("node-b", resources=SPARE)
    cluster.start_node("node-c", resources=SPARE)
    return cluster


@pytest.fixture
def cluster(redis_url, request):
    cluster = start_cluster(redis_url, request.node.name)
    try:
        yield cluster
    finally:
        rt.shutdown()
        cluster.stop()


def runs_logged(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    return [tuple(line.split()) for line in log.read_text().splitlines()]


@rt.remote(resources=SPARE)
def first(log: str):
    with open(log, "a") as out:
        out.write(f"first {rt.current_node_id()}\n")
    return np.arange(300_000, dtype=np.float64)  # large: it stays on the node that made it


@rt.remote(resources=SPARE)
def then_double(values, log: str):
    with open(log, "a") as out:
        out.write(f"double {rt.current_node_id()}\n")
    return values * 2


@rt.remote(resources=SPARE)
def then_add_one(values, log: str):
    with open(log, "a") as out:
        out.write(f"add_one {rt.current_node_id()}\n")
    return values + 1


def test_a_lost_chain_of_task_outputs_is_rebuilt_from_lineage(cluster, tmp_path):
    log = tmp_path / "runs.log"
    one = first.remote(str(log))
    two = then_double.remote(one, str(log))
    three = then_add_one.remote(two, str(log))
    assert rt.wait([three], timeout=60)[0] == [three]
    ran_on = {node for _, node in runs_logged(log)}
    assert len(ran_on) == 1, "the chain follows its data onto one node"
    victim = ran_on.pop()
    cluster.nodes[victim].kill()

    values = rt.get(three, timeout=120)

    assert np.array_equal(values, np.arange(300_000, dtype=np.float64) * 2 + 1)
    runs = runs_logged(log)
    assert sorted(name for name, _ in runs) == sorted(["first", "double", "add_one"] * 2)
    assert {node for _, node in runs[3:]} == {"node-b", "node-c"} - {victim}


def test_a_task_running_on_a_killed_node_is_retried_elsewhere(cluster, tmp_path):
    gate, log = tmp_path / "gate", tmp_path / "runs.log"

    @rt.remote(resources=SPARE)
    def slow_square(x: int, gate: str, log: str):
        with open(log, "a") as out:
            out.write(f"start {rt.current_node_id()}\n")
        while not os.path.exists(gate):
            time.sleep(0.01)
        return x * x, rt.current_node_id()

    ref = slow_square.remote(12, str(gate), str(log))
    victim = until(lambda: runs_logged(log), "the task to start")[0][1]
    cluster.nodes[victim].kill()
    until(lambda: len(runs_logged(log)) == 2, "the task to start again on the other node")
    gate.touch()

    value, node = rt.get(ref, timeout=120)

    assert value == 144 and node != victim


@rt.remote(resources=SPARE, max_restarts=1, checkpoint_every=3)
class Counter:
    def __init__(self):
        self.count = 0

    def incr(self) -> int:
        self.count += 1
        return self.count

    def where(self) -> tuple[int, str, int]:
        return self.count, rt.current_node_id(), os.getpid()


def test_an_actor_comes_back_on_another_node_with_its_checkpointed_count(cluster, tmp_path):
    counter = Counter.options(checkpoint_uri=f"file://{tmp_path}").remote()
    assert [rt.get(counter.incr.remote()) for _ in range(7)] == list(range(1, 8))  # checkpoints after 3 and 6
    _, victim, _ = rt.get(counter.where.remote())
    cluster.nodes[victim].kill()

    count, node, _ = rt.get(counter.where.remote(), timeout=120)

    assert count == 6 and node == ({"node-b", "node-c"} - {victim}).pop()
    assert rt.get(counter.incr.remote(), timeout=60) == 7
    record = next(a for a in rt.actors() if a["actor_id"] == counter.actor_id)
    assert record["restarts"] == 1 and record["state"] == "alive"


def test_an_actor_whose_worker_is_killed_restarts_on_the_same_node(cluster, tmp_path):
    counter = Counter.options(checkpoint_uri=f"file://{tmp_path}").remote()
    for _ in range(4):
        rt.get(counter.incr.remote())
    assert rt.checkpoint(counter, timeout=60)  # the count of 4 is durable now
    _, node, pid = rt.get(counter.where.remote())
    os.kill(pid, signal.SIGKILL)
    until(lambda: next(a for a in rt.actors() if a["actor_id"] == counter.actor_id)["restarts"] == 1,
          "the actor to be restarted")

    count, node_after, pid_after = rt.get(counter.where.remote(), timeout=60)

    assert (count, node_after) == (4, node) and pid_after != pid


def test_an_actor_out_of_restarts_raises_actor_died_with_the_reason(cluster, tmp_path):
    counter = Counter.options(checkpoint_uri=f"file://{tmp_path}").remote()
    rt.get(counter.incr.remote())
    for restarts_before in (0, 1):
        until(lambda: next(a for a in rt.actors() if a["actor_id"] == counter.actor_id)["restarts"]
              == restarts_before, "the previous restart")
        *_, pid = rt.get(counter.where.remote(), timeout=60)
        os.kill(pid, signal.SIGKILL)
    until(lambda: next(a for a in rt.actors() if a["actor_id"] == counter.actor_id)["state"] == "dead",
          "the actor to be declared dead")

    with pytest.raises(rt.ActorDiedError, match="no restarts left"):
        rt.get(counter.incr.remote(), timeout=60)


def test_the_cluster_rides_out_a_redis_restart(tmp_path):
    redis_server = RedisServer(tmp_path / "redis", appendonly=True).start()
    cluster = start_cluster(redis_server.url, "redis-restart")
    try:
        gate = tmp_path / "gate"

        @rt.remote
        def wait_for_gate(gate: str) -> str:
            while not os.path.exists(gate):
                time.sleep(0.01)
            return "finished"

        running = wait_for_gate.remote(str(gate))
        redis_server.stop()
        time.sleep(10)  # the outage itself: Redis stays away this long
        gate.touch()
        redis_server.start()

        assert rt.get(running, timeout=60) == "finished"
        assert rt.get(rt.remote(lambda x: x + 1).remote(41), timeout=60) == 42
        assert all(node.process.poll() is None for node in cluster.nodes.values())
        assert until(lambda: all(n["alive"] for n in rt.nodes()), "every node to heartbeat again")
        assert len(rt.nodes()) == 3
    finally:
        rt.shutdown()
        cluster.stop()
        redis_server.stop()


@rt.remote(resources=SPARE)
def square(x: int) -> tuple[int, str]:
    return x * x, rt.current_node_id()


@rt.remote(resources=SPARE)
class Tally:
    def __init__(self):
        self.total = 0

    def add(self, k: int) -> tuple[int, str]:
        self.total += k
        return self.total, rt.current_node_id()


def test_a_driver_outlives_the_node_it_joined_through(redis_url, tmp_path):
    """The driver joins while node-a is the only node and makes a large value there; node-a is SIGKILLed.

    The driver owns its objects in its own light node, so it keeps working: new
    tasks run, an actor on another node answers, a put value is still there, and
    the value that lived on node-a is rebuilt by lineage on a live node.
    """
    cluster = Cluster(redis_url, f"outlive-{os.getpid()}-{time.monotonic_ns()}", extra_args=FAST_HEARTBEATS)
    try:
        cluster.start_node("node-a", resources=SPARE)
        rt.init(address=redis_url, token=TOKEN, namespace=cluster.namespace)
        log = tmp_path / "runs.log"
        kept = rt.put({"kept": list(range(10))})
        one = first.remote(str(log))
        assert rt.wait([one], timeout=60)[0] == [one]
        assert runs_logged(log) == [("first", "node-a")]
        cluster.start_node("node-b", resources={**SPARE, "b": 1})
        tally = Tally.options(resources={"b": 1}).remote()
        assert rt.get(tally.add.remote(0), timeout=60) == (0, "node-b")
        cluster.nodes["node-a"].kill()

        values = rt.get(one, timeout=120)

        assert np.array_equal(values, np.arange(300_000, dtype=np.float64))
        assert runs_logged(log) == [("first", "node-a"), ("first", "node-b")]
        assert rt.get(square.remote(7), timeout=60) == (49, "node-b")
        assert rt.get([tally.add.remote(k) for k in (1, 2, 3)], timeout=60) == [(1, "node-b"), (3, "node-b"),
                                                                               (6, "node-b")]
        assert rt.get(kept, timeout=60) == {"kept": list(range(10))}
    finally:
        rt.shutdown()
        cluster.stop()


@rt.remote(resources=SPARE, max_restarts=1)
class Sequencer:
    def __init__(self):
        self.taken = []

    def take(self, i: int, started: str | None = None, gate: str | None = None) -> tuple[int, int]:
        if started:
            Path(started).touch()
            while not os.path.exists(gate):
                time.sleep(0.01)
        self.taken.append(i)
        return i, os.getpid()

    def pid(self) -> int:
        return os.getpid()


def kill_while_running(sequencer, behind: int, tmp_path: Path) -> tuple[int, object, list]:
    """SIGKILL the actor's worker while one call runs and `behind` more have been sent after it."""
    pid = rt.get(sequencer.pid.remote(), timeout=60)
    started, gate = tmp_path / "started", tmp_path / "gate"
    running = sequencer.take.remote(-1, str(started), str(gate))
    queued = [sequencer.take.remote(i) for i in range(behind)]
    until(started.exists, "the first call to start")
    os.kill(pid, signal.SIGKILL)
    return pid, running, queued


def test_direct_calls_survive_the_callee_worker_dying(cluster, tmp_path):
    """The actor's worker is SIGKILLed with one call running and fifty sent behind it.

    The running call fails with ActorDiedError (its effect is unknown); the ones
    it had not started run on the restarted actor, in the order they were made;
    nothing hangs.
    """
    pid, running, behind = kill_while_running(Sequencer.remote(), 50, tmp_path)

    with pytest.raises(rt.ActorDiedError, match="while the call was running"):
        rt.get(running, timeout=60)
    values = rt.get(behind, timeout=120)

    assert [i for i, _ in values] == list(range(50))
    assert {p for _, p in values} != {pid} and len({p for _, p in values}) == 1


def test_direct_calls_to_an_actor_out_of_restarts_fail_and_never_hang(cluster, tmp_path):
    sequencer = Sequencer.options(max_restarts=0).remote()
    _, running, behind = kill_while_running(sequencer, 20, tmp_path)

    for ref in [running, *behind]:
        with pytest.raises(rt.ActorDiedError):
            rt.get(ref, timeout=60)
    with pytest.raises(rt.ActorDiedError):
        rt.get(sequencer.take.remote(99), timeout=60)


def test_tasks_pushed_to_a_leased_worker_survive_its_death(cluster, tmp_path):
    """The driver pushes plain tasks straight to workers the nodes lend it; one such worker is SIGKILLed
    while it runs task 0 with more sent behind it: task 0 runs again, the others run once, nothing hangs."""
    log, gate = tmp_path / "runs.log", tmp_path / "gate"

    @rt.remote(max_retries=2)
    def step(i: int, log: str, gate: str) -> tuple[int, int]:
        with open(log, "a") as out:
            out.write(f"{i} {os.getpid()}\n")
        if i == 0:
            while not os.path.exists(gate):
                time.sleep(0.01)
        return i, os.getpid()

    refs = [step.remote(i, str(log), str(gate)) for i in range(30)]
    first = until(lambda: [p for i, p in runs_logged(log) if i == "0"], "task 0 to start")[0]
    os.kill(int(first), signal.SIGKILL)
    gate.touch()

    values = rt.get(refs, timeout=120)

    assert [i for i, _ in values] == list(range(30))
    runs = runs_logged(log)
    assert [i for i, _ in runs].count("0") == 2 and values[0][1] != int(first)
    assert all([i for i, _ in runs].count(str(k)) == 1 for k in range(1, 30))


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        for task in os.listdir(f"/proc/{current}/task"):
            with open(f"/proc/{current}/task/{task}/children") as children:
                stack.extend(int(child) for child in children.read().split())
    return found


@rt.remote(resources=SPARE, max_restarts=1)
class Sink:
    def __init__(self):
        self.taken = 0

    def take(self, payload: bytes) -> tuple[int, str]:
        self.taken += 1
        return self.taken, rt.current_node_id()


def test_a_node_that_stops_answering_stalls_nothing(cluster):
    """The node of an actor is frozen (SIGSTOP: a partition, as its peers see it) while the driver sends it
    more bytes than its sockets hold. The driver keeps working meanwhile; once the node is declared dead,
    the calls go to the actor restarted on the other node, in order."""
    sink = Sink.remote()
    _, victim = rt.get(sink.take.remote(b""), timeout=60)
    frozen = process_tree(cluster.nodes[victim].process.pid)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        calls = [sink.take.remote(b"x" * 1_000_000) for _ in range(40)]  # 40 MB: far more than a socket buffers
        assert rt.get(square.remote(6), timeout=60) == (36, ({"node-b", "node-c"} - {victim}).pop())

        values = rt.get(calls, timeout=120)

        assert values == [(i, ({"node-b", "node-c"} - {victim}).pop()) for i in range(1, 41)]
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGCONT)

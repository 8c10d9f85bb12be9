"""An actor checkpoint does not stall its actor: the state is captured between two calls, made durable on a
writer thread while the actor serves the next calls, and the call it answers gets its result only once durable.

The actor's `__checkpoint__` returns a `DeferredState` whose `build` blocks reading a FIFO the test holds: the
build is under way exactly while the test holds the FIFO's write end open (no sleeps, no timings). Run on a
local runtime (results through the node) and on a loopback cluster (the caller on another node: results on the
direct channel, after the node recorded the checkpoint).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest

import ringwatch.runtime as rt
from ringwatch.runtime.checkpoints import DeferredState, open_store
from runtime_cluster import TOKEN, Cluster, until

SPARE = {"spare": 1}


@rt.remote(resources=SPARE, max_restarts=1)
class Gated:
    """A list of items; its checkpoint's table is built only once the test lets the FIFO `gate` go."""

    def __init__(self, gate: str):
        self.gate = gate
        self.items: list[int] = []

    def add(self, item: int) -> int:
        self.items.append(item)
        return len(self.items)

    def state(self) -> tuple[list[int], int]:
        return list(self.items), os.getpid()

    def __checkpoint__(self) -> DeferredState:
        captured = list(self.items)  # the state of this moment: later calls change `self.items`, not this

        def build() -> pa.Table:
            with open(self.gate, "rb") as gate:  # opens once the test holds the write end, reads until it closes
                gate.read()
            return pa.table({"item": pa.array(captured, pa.int64())})

        return DeferredState(build)

    def __restore__(self, table: pa.Table) -> None:
        self.items = table.column("item").to_pylist()


@pytest.fixture(params=["local", "cluster"])
def runtime(request, redis_url) -> Iterator[None]:
    if request.param == "local":
        rt.init(num_workers=1, resources=SPARE)
        try:
            yield
        finally:
            rt.shutdown()
        return
    cluster = Cluster(redis_url, f"ckpt-{os.getpid()}-{time.monotonic_ns()}")
    cluster.start_node("node-a")
    rt.init(address=redis_url, token=TOKEN, namespace=cluster.namespace)  # the driver's node has no "spare"
    cluster.start_node("node-b", resources=SPARE)
    try:
        yield
    finally:
        rt.shutdown()
        cluster.stop()


class Gate:
    """The FIFO a checkpoint's build reads: `hold()` returns once a build has opened it; `release()` lets it go."""

    def __init__(self, path: Path, pool: ThreadPoolExecutor):
        self.path = str(path)
        os.mkfifo(self.path)
        self._pool = pool
        self._fd: int | None = None

    def hold(self) -> None:
        self._fd = self._pool.submit(os.open, self.path, os.O_WRONLY).result(timeout=120)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def unblock(self) -> None:
        """After a failure: let an opener of either end go (a reader of our own, closed at once)."""
        self.release()
        os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))


@pytest.fixture
def gate(tmp_path) -> Iterator[Gate]:
    with ThreadPoolExecutor(2) as pool:
        gate = Gate(tmp_path / "gate", pool)
        try:
            yield gate
        finally:
            gate.unblock()


def test_the_actor_serves_calls_while_its_checkpoint_is_written_and_the_id_comes_once_durable(runtime, gate, tmp_path):
    uri = f"file://{tmp_path / 'checkpoints'}"
    actor = Gated.options(checkpoint_uri=uri).remote(gate.path)
    assert [rt.get(actor.add.remote(i), timeout=60) for i in (1, 2)] == [1, 2]
    with ThreadPoolExecutor(1) as caller:
        checkpoint: Future = caller.submit(rt.checkpoint, actor, timeout=120)
        gate.hold()  # the state is captured and its build is under way

        assert rt.get(actor.add.remote(3), timeout=60) == 3  # served meanwhile
        assert rt.get(actor.state.remote(), timeout=60)[0] == [1, 2, 3]
        assert not checkpoint.done()  # not durable yet: no answer

        gate.release()
        checkpoint_id = checkpoint.result(timeout=120)

    assert open_store(uri).load(checkpoint_id).column("item").to_pylist() == [1, 2]  # as captured: 3 came later
    copy = Gated.options(checkpoint_uri=uri, restore_from=checkpoint_id).remote(gate.path)
    assert rt.get(copy.state.remote(), timeout=60)[0] == [1, 2]


def test_a_periodic_checkpoint_answers_the_call_it_covers_once_durable_and_a_restart_resumes_from_it(
        runtime, gate, tmp_path):
    actor = Gated.options(checkpoint_uri=f"file://{tmp_path / 'checkpoints'}", checkpoint_every=3).remote(gate.path)
    assert rt.get(actor.add.remote(1), timeout=60) == 1
    _, pid = rt.get(actor.state.remote(), timeout=60)
    covered = actor.add.remote(2)  # the third call: a checkpoint of [1, 2] follows it
    gate.hold()

    assert rt.get(actor.add.remote(3), timeout=60) == 3
    assert rt.wait([covered], timeout=0)[0] == []  # its checkpoint is not durable yet
    gate.release()
    assert rt.get(covered, timeout=120) == 2
    os.kill(pid, signal.SIGKILL)
    until(lambda: next(a for a in rt.actors() if a["actor_id"] == actor.actor_id)["restarts"] == 1,
          "the actor to be restarted")

    assert rt.get(actor.state.remote(), timeout=60)[0] == [1, 2]  # from the checkpoint; 3 came after it


def test_a_worker_killed_while_its_checkpoint_is_written_restarts_from_the_last_durable_one(runtime, gate, tmp_path):
    folder = tmp_path / "checkpoints"
    actor = Gated.options(checkpoint_uri=f"file://{folder}").remote(gate.path)
    rt.get(actor.add.remote(1), timeout=60)
    with ThreadPoolExecutor(1) as caller:
        first = caller.submit(rt.checkpoint, actor, timeout=120)
        gate.hold()
        gate.release()
        durable = first.result(timeout=120)
        rt.get(actor.add.remote(2), timeout=60)
        second = caller.submit(rt.checkpoint, actor, timeout=120)
        gate.hold()  # the second checkpoint's build is under way
        _, pid = rt.get(actor.state.remote(), timeout=60)
        os.kill(pid, signal.SIGKILL)
        gate.release()

        with pytest.raises(rt.ActorDiedError):
            second.result(timeout=120)
    until(lambda: next(a for a in rt.actors() if a["actor_id"] == actor.actor_id)["restarts"] == 1,
          "the actor to be restarted")

    assert rt.get(actor.state.remote(), timeout=60)[0] == [1]
    assert [f"{actor.actor_id}/{p.stem}" for p in (folder / actor.actor_id).glob("*.ckpt")] == [durable]


def test_a_periodic_checkpoint_due_while_one_is_written_waits_for_the_next_call(runtime, gate, tmp_path):
    folder = tmp_path / "checkpoints"
    actor = Gated.options(checkpoint_uri=f"file://{folder}", checkpoint_every=1).remote(gate.path)
    covered = actor.add.remote(1)  # a checkpoint of [1] follows every call
    gate.hold()

    assert rt.get(actor.add.remote(2), timeout=60) == 2  # no second checkpoint queued behind the first
    gate.release()
    assert rt.get(covered, timeout=120) == 1
    with ThreadPoolExecutor(1) as caller:
        following = caller.submit(rt.get, actor.add.remote(3), timeout=120)  # due again: [1, 2, 3]
        gate.hold()
        gate.release()
        assert following.result(timeout=120) == 3
    newest = f"{actor.actor_id}/{max((folder / actor.actor_id).glob('*.ckpt')).stem}"
    assert open_store(f"file://{folder}").load(newest).column("item").to_pylist() == [1, 2, 3]


@rt.remote(resources=SPARE)
class Unbuildable:
    """Its checkpoints fail on the writer thread."""

    def __init__(self):
        self.calls = 0

    def call(self) -> int:
        self.calls += 1
        return self.calls

    def __checkpoint__(self) -> DeferredState:
        def build() -> pa.Table:
            raise OSError("the disk is gone")

        return DeferredState(build)


def test_a_checkpoint_that_fails_on_the_writer_fails_its_call_and_the_actor_goes_on(runtime, tmp_path):
    actor = Unbuildable.options(checkpoint_uri=f"file://{tmp_path}", checkpoint_every=2).remote()
    assert rt.get(actor.call.remote(), timeout=60) == 1

    assert rt.get(actor.call.remote(), timeout=60) == 2  # a periodic checkpoint failed: logged, the result goes
    with pytest.raises(rt.TaskError, match="the disk is gone"):
        rt.checkpoint(actor, timeout=60)
    assert rt.get(actor.call.remote(), timeout=60) == 3

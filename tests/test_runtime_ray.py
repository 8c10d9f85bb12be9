"""The runtime API on a real Ray head (`init(backend="ray")`): tasks, actors, objects, errors, checkpoints."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ringwatch.runtime as rt
from services import RayHead

# Imported as the module is collected, before the `ray_head` fixture starts the head: Ray fixes its
# authentication settings on first import, so the session's token must be in the environment by then
# (tests/conftest.py puts it there as pytest loads it, whichever module imports Ray first).
ray = pytest.importorskip("ray")


def until(condition, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def on_ray(ray_head: RayHead) -> Iterator[RayHead]:
    rt.init(backend="ray", address=ray_head.address)
    try:
        yield ray_head
    finally:
        rt.shutdown()


@rt.remote
def square(x: int) -> int:
    return x * x


@rt.remote
def total(values: list) -> int:
    return sum(rt.get(values))  # nested refs stay refs; the task gets them through the API


@rt.remote
def fails() -> None:
    raise KeyError("no such account")


@rt.remote
def calls_actor(counter) -> int:
    return rt.get(counter.incr.remote())


@rt.remote(max_restarts=2, checkpoint_every=2)
class Counter:
    def __init__(self, start: int = 0):
        self.count = start

    def incr(self) -> int:
        self.count += 1
        return self.count

    def where(self) -> tuple[int, int]:
        return self.count, os.getpid()

    def fail(self) -> None:
        raise ValueError("bad input")


@rt.remote(max_restarts=1)
class Gated:
    """A counter whose construction waits while the file `gate` exists (touching `waiting`): a restart held open."""

    def __init__(self, gate: str, waiting: str):
        while Path(gate).exists():
            Path(waiting).touch()
            time.sleep(0.05)
        self.count = 0

    def incr(self) -> int:
        self.count += 1
        return self.count

    def pid(self) -> int:
        return os.getpid()

    def hold(self, marker: str) -> None:
        Path(marker).touch()
        time.sleep(600)  # running until the test kills this worker


def test_tasks_and_objects(on_ray):
    assert rt.is_initialized() and ray.is_initialized()  # this process joined the head, with its token
    assert rt.get([square.remote(i) for i in range(6)]) == [0, 1, 4, 9, 16, 25]
    stored = rt.put(7)
    assert rt.get(square.remote(stored)) == 49  # a top-level ref argument arrives as its value
    assert rt.get(total.remote([square.remote(2), square.remote(3)])) == 13
    refs = [square.remote(i) for i in range(4)]
    ready, pending = rt.wait(refs, num_returns=4, timeout=60)
    assert ready == refs and pending == []
    assert rt.nodes() and all(node["alive"] for node in rt.nodes())


def test_errors_surface_as_ringwatch_types(on_ray):
    with pytest.raises(rt.TaskError) as raised:
        rt.get(fails.remote())
    assert (raised.value.type_name, raised.value.task) == ("KeyError", "fails()")
    assert "no such account" in str(raised.value)

    @rt.remote
    def sleeps(seconds: float) -> None:
        """Works in short steps: Ray's cancel (not forced) interrupts Python code between them, but not a thread
        blocked in one long `time.sleep` (ray-project/ray#32954), and the cancel below may find the task running."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)

    with pytest.raises(rt.GetTimeoutError):
        rt.get(sleeps.remote(30), timeout=0.2)
    running = sleeps.remote(60)
    until(lambda: not rt.wait([running], timeout=0.5)[0], "the task to be running")
    assert rt.cancel(running) is True
    with pytest.raises(rt.TaskCancelledError):
        rt.get(running, timeout=60)
    assert rt.cancel(square.remote(1)) in (True, False)
    with pytest.raises(rt.SerializationError, match="serialize"):
        square.remote(threading.Lock())
    with pytest.raises(TypeError):
        rt.get("not a ref")


def test_actors_calls_names_and_kill(on_ray):
    counter = Counter.remote(10)
    assert [rt.get(counter.incr.remote()) for _ in range(3)] == [11, 12, 13]
    assert rt.get(calls_actor.remote(counter)) == 14  # a handle passed to a task calls the same actor
    with pytest.raises(rt.TaskError) as raised:
        rt.get(counter.fail.remote())
    assert (raised.value.type_name, raised.value.task) == ("ValueError", "Counter.fail()")
    with pytest.raises(AttributeError, match="no remote method"):
        counter.nothing

    named = Counter.options(name="ledger").remote()
    found = rt.get_actor("ledger")
    assert found.actor_id == named.actor_id and rt.get(found.incr.remote()) == 1
    assert any(record["name"] == "ledger" and record["state"] == "alive" for record in rt.actors())
    rt.kill(found)
    with pytest.raises(rt.ActorDiedError):
        rt.get(named.incr.remote(), timeout=60)
    with pytest.raises(ValueError, match="no live actor named 'ledger'"):
        rt.get_actor("ledger")


def test_a_killed_actor_worker_restarts_from_its_checkpoint(on_ray, tmp_path):
    counter = Counter.options(checkpoint_uri=f"file://{tmp_path}").remote()
    assert [rt.get(counter.incr.remote()) for _ in range(5)] == [1, 2, 3, 4, 5]  # checkpointed at 2 and 4
    assert rt.checkpoint(counter, timeout=60)  # 5 is durable now
    count, pid = rt.get(counter.where.remote())
    assert count == 5 and pid in on_ray.worker_pids("Counter")
    os.kill(pid, signal.SIGKILL)

    def after_restart():
        try:
            return rt.get(counter.where.remote(), timeout=60)
        except rt.ActorDiedError:  # calls that reached the dead worker fail; the next ones go to the new one
            return None

    count_after, pid_after = until(after_restart, "the actor to come back")
    assert count_after == 5 and pid_after != pid
    assert rt.get(counter.incr.remote()) == 6
    record = next(r for r in rt.actors() if r["actor_id"] == counter.actor_id)
    assert record["restarts"] == 1 and record["checkpoint"].startswith(counter.actor_id)

    saved = rt.checkpoint(counter, timeout=60)  # holds 6
    copy = Counter.options(checkpoint_uri=f"file://{tmp_path}", restore_from=saved).remote()
    assert rt.get(copy.where.remote())[0] == 6  # a new actor can start from a given checkpoint


def test_calls_made_while_a_killed_actor_restarts_wait_for_it(on_ray, tmp_path):
    """As on ringwatch's runtime: the call the dead worker was running fails (its effect is unknown); calls made
    while the actor restarts wait and run on the restarted actor (Ray alone fails them)."""
    gate, waiting, running = tmp_path / "gate", tmp_path / "waiting", tmp_path / "running"
    counter = Gated.options(checkpoint_uri=f"file://{tmp_path}").remote(str(gate), str(waiting))
    assert rt.get(counter.incr.remote()) == 1 and rt.checkpoint(counter, timeout=60)
    pid = rt.get(counter.pid.remote())
    held = counter.hold.remote(str(running))
    until(running.exists, "the call to be running")
    gate.touch()
    os.kill(pid, signal.SIGKILL)
    until(waiting.exists, "the restarted actor's construction")  # Ray knows: the actor is restarting

    made_meanwhile = [counter.incr.remote() for _ in range(3)]
    gate.unlink()
    assert rt.get(made_meanwhile, timeout=120) == [2, 3, 4]  # on the restarted actor, from the checkpoint (1)
    with pytest.raises(rt.ActorDiedError):
        rt.get(held, timeout=120)
    record = next(r for r in rt.actors() if r["actor_id"] == counter.actor_id)
    assert record["restarts"] == 1


def test_backend_is_chosen_by_environment_and_named_errors(ray_head, monkeypatch):
    monkeypatch.setenv("RINGWATCH_BACKEND", "ray")
    rt.init(address=ray_head.client_address)  # Ray Client, as a KubeRay user would connect
    try:
        assert rt.get(square.remote(12)) == 144
    finally:
        rt.shutdown()
    monkeypatch.setenv("RINGWATCH_BACKEND", "spark")
    with pytest.raises(ValueError, match="RINGWATCH_BACKEND='spark'"):
        rt.init()
    with pytest.raises(ValueError, match="token"):
        rt.init(backend="ray", address=ray_head.address, token="secret")
    assert not rt.is_initialized()


def test_key_value_store_in_rays_gcs(on_ray):
    assert rt.kv_put("claims/a1", b"engine-1", overwrite=False) is True
    assert rt.kv_put("claims/a1", b"engine-2", overwrite=False) is False  # claimed once
    assert rt.kv_get("claims/a1") == b"engine-1"
    assert rt.kv_put("claims/a2", b"x", ttl_s=0.001) is True
    until(lambda: rt.kv_get("claims/a2") is None, "the value to expire")
    assert rt.kv_put("claims/a2", b"y", overwrite=False) is True  # an expired claim can be taken again
    assert rt.kv_keys("claims/") == ["claims/a1", "claims/a2"]
    assert rt.kv_delete("claims/a1") is True and rt.kv_get("claims/a1") is None

"""The actors living on a node: each owns a worker process and runs its calls in submission order.

An actor with `max_restarts` is re-created when its worker dies, from its
original arguments and its latest checkpoint; calls queued meanwhile wait for
it. Calls that were running when it died fail with `ActorDiedError` (their
effect on the state is unknown) unless it allows `max_task_retries`. Used on
the node's dispatcher thread only.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from .errors import ActorDiedError, TaskCancelledError
from .object_store import unpack
from .objects import ObjectTable
from .protocol import ACTOR_CREATE, TaskResult, TaskSpec, new_id
from .scheduler import MAX_BATCH, REFILL_AT
from .workers import Worker, WorkerPool

logger = logging.getLogger(__name__)

MIN_REFILL = 8  # calls gathered before a busy actor's worker gets more


class ActorRecords(Protocol):
    """Where a cluster node records its actors (the GCS actor table)."""

    address: str

    def actor_placed(self, spec: TaskSpec) -> None: ...
    def actor_checkpointed(self, actor_id: str, checkpoint_id: str) -> None: ...
    def actor_ready(self, actor_id: str, direct: str) -> None: ...
    def actor_restarting(self, actor_id: str, restarts: int, address: str | None) -> None: ...
    def actor_gone(self, actor_id: str, name: str | None, reason: str) -> None: ...
    def actor_by_name(self, name: str) -> dict | None: ...


@dataclass
class Actor:
    actor_id: str
    name: str | None
    class_name: str
    methods: tuple[str, ...]
    create_spec: TaskSpec | None = None
    worker: Worker | None = None
    queue: deque[TaskSpec] = field(default_factory=deque)
    dead_reason: str | None = None
    restarts: int = 0
    checkpoint: str | None = None
    checkpointed_at: float | None = None


def restart_spec(spec: TaskSpec, restarts: int, checkpoint: str | None) -> TaskSpec:
    """The creation call of an actor's next incarnation, resuming from `checkpoint`."""
    return replace(spec, task_id=new_id(), restarts=restarts, restore_from=checkpoint, forwarded_by=None,
                   dep_locations={}, attempt=0, code=None)


class ActorManager:
    """The node's actors, their queues of calls and their worker processes."""

    def __init__(self, pool: WorkerPool, objects: ObjectTable, finish: Callable[[TaskResult], None],
                 records: ActorRecords | None, running: Callable[[], bool]):
        self._pool = pool
        self._objects = objects
        self._finish = finish
        self._records = records
        self._running = running
        self._actors: dict[str, Actor] = {}
        self._named: dict[str, str] = {}

    def __contains__(self, actor_id: str) -> bool:
        return actor_id in self._actors

    def alive(self) -> int:
        return sum(1 for a in self._actors.values() if not a.dead_reason)

    # ---- creating and calling ----------------------------------------------------------------

    def create(self, spec: TaskSpec) -> None:
        name = spec.actor_name
        if name and name in self._named and not self._actors[self._named[name]].dead_reason:
            self._finish(TaskResult(spec.task_id, None, ValueError(f"an actor named {name!r} already exists")))
            return
        if name and self._records is not None and self._records.actor_by_name(name) is not None:
            self._finish(TaskResult(spec.task_id, None, ValueError(f"an actor named {name!r} already exists")))
            return
        actor = Actor(spec.actor_id, name, spec.name, spec.methods, create_spec=spec, restarts=spec.restarts,
                      checkpoint=spec.restore_from)
        self._actors[spec.actor_id] = actor
        if spec.max_restarts:  # a restart constructs the actor again, from the same arguments
            for object_id in spec.deps:
                self._objects.pin(object_id)
        if self._records is not None:
            self._records.actor_placed(spec)
        if name:
            self._named[name] = spec.actor_id
        actor.worker = self._pool.start(actor_id=spec.actor_id)
        actor.queue.appendleft(spec)

    def call(self, spec: TaskSpec) -> None:
        """Queue a call on a local actor (or fail it, if the actor is gone)."""
        actor = self._actors.get(spec.actor_id)
        if actor is None or actor.dead_reason:
            reason = actor.dead_reason if actor else "no such actor"
            self._finish(TaskResult(spec.task_id, None, ActorDiedError(f"{spec.name}: {reason}")))
            return
        actor.queue.append(spec)
        for dep in spec.deps:
            self._objects.on_here(dep, _nothing)  # fetched here as soon as it is made, wherever that is

    def feed(self) -> None:
        """Hand each actor's worker the calls at the head of its queue whose inputs are here.

        An idle worker gets what is there; a busy one gets more once it is down to
        its last call and a batch has gathered, so a burst of calls reaches a busy
        actor in a few messages rather than one each (every message costs the
        worker a wake-up of its reader thread).
        """
        for actor in self._actors.values():
            worker = actor.worker
            if worker is None or worker.conn is None or not actor.queue:
                continue
            busy = len(worker.in_flight) - len(worker.parked)  # a parked call waits for its checkpoint, not the worker
            if busy and (busy > REFILL_AT or len(actor.queue) < MIN_REFILL):
                continue
            batch = []
            while actor.queue and len(batch) < MAX_BATCH and all(self._objects.is_here(d)
                                                                 for d in actor.queue[0].deps):
                spec = actor.queue.popleft()
                batch.append(self._pool.runnable(worker, spec))
                worker.in_flight.append(spec)
            if batch:
                self._pool.send(worker, ("run", batch))

    def cancel(self, spec: TaskSpec) -> bool:
        """Cancel a call still queued on its actor."""
        actor = self._actors.get(spec.actor_id or "")
        if actor is None or spec not in actor.queue:
            return False
        actor.queue.remove(spec)
        self._finish(TaskResult(spec.task_id, None, TaskCancelledError(spec.name)))
        return True

    # ---- results and deaths ------------------------------------------------------------------

    def completed(self, spec: TaskSpec, result: TaskResult) -> None:
        if spec.kind != ACTOR_CREATE:
            return
        actor = self._actors.get(spec.actor_id)
        if actor is None:
            return
        if result.error is not None:
            self.died(actor, f"the actor's constructor raised: {result.error}", restart=False)
            return
        info = unpack(result.blob) if result.blob is not None else None
        if self._records is not None and isinstance(info, dict) and info.get("direct"):
            self._records.actor_ready(actor.actor_id, info["direct"])  # callers on other nodes come straight

    def checkpointed(self, actor_id: str, checkpoint_id: str) -> None:
        actor = self._actors.get(actor_id)
        if actor is None:
            return
        actor.checkpoint, actor.checkpointed_at = checkpoint_id, time.time()
        if self._records is not None:  # recorded before the result of the call it covers is seen
            self._records.actor_checkpointed(actor.actor_id, checkpoint_id)

    def worker_died(self, worker: Worker) -> None:
        if not self._pool.remove(worker):
            return
        actor = self._actors.get(worker.actor_id)
        if actor is not None and not actor.dead_reason:
            self.died(actor, f"its worker process exited (code {worker.process.returncode})")

    def kill(self, actor_id: str) -> bool:
        """Stop a local actor now; False when it does not live here."""
        actor = self._actors.get(actor_id)
        if actor is None:
            return False
        if not actor.dead_reason:
            self.died(actor, "the actor was killed with kill()", restart=False)
        return True

    def died(self, actor: Actor, reason: str, *, restart: bool = True) -> None:
        in_flight: list[TaskSpec] = []
        if actor.worker is not None:
            worker, actor.worker = actor.worker, None
            in_flight, worker.in_flight = list(worker.in_flight), deque()
            self._pool.remove(worker)
        create = actor.create_spec
        if restart and self._running() and create is not None and actor.restarts < create.max_restarts:
            self._restart(actor, in_flight, reason)
            return
        if create is not None and create.max_restarts:
            reason = f"{reason}; no restarts left (max_restarts={create.max_restarts})"
        actor.dead_reason = reason
        if create is not None and create.max_restarts:
            for object_id in create.deps:
                self._objects.unpin(object_id)
        for spec in [*in_flight, *actor.queue]:
            self._finish(TaskResult(spec.task_id, None, ActorDiedError(f"{spec.name}: {reason}")))
        actor.queue.clear()
        if actor.name and self._named.get(actor.name) == actor.actor_id:
            del self._named[actor.name]
        if self._records is not None:
            self._records.actor_gone(actor.actor_id, actor.name, reason)

    def _restart(self, actor: Actor, in_flight: list[TaskSpec], reason: str) -> None:
        """Re-create the actor on this node from its latest checkpoint; queued calls wait for it."""
        actor.restarts += 1
        logger.warning("actor %s died (%s); restart %d of %d from checkpoint %s", actor.class_name, reason,
                       actor.restarts, actor.create_spec.max_restarts, actor.checkpoint)
        retried = []
        for spec in in_flight:
            if spec.kind == ACTOR_CREATE:
                continue
            if spec.attempt < actor.create_spec.max_task_retries:
                spec.attempt += 1
                retried.append(spec)
            else:
                self._finish(TaskResult(spec.task_id, None, ActorDiedError(
                    f"{spec.name}: the actor died while the call was running ({reason})")))
        actor.create_spec = restart_spec(actor.create_spec, actor.restarts, actor.checkpoint)
        actor.queue.extendleft(reversed([actor.create_spec, *retried]))
        actor.worker = self._pool.start(actor_id=actor.actor_id)
        if self._records is not None:
            self._records.actor_restarting(actor.actor_id, actor.restarts, self._records.address)

    # ---- looking up --------------------------------------------------------------------------

    def by_name(self, name: str) -> tuple[str, str, tuple[str, ...], str | None] | None:
        """(actor id, class name, methods, name) of the live local actor called `name`."""
        actor_id = self._named.get(name)
        actor = self._actors.get(actor_id) if actor_id else None
        if actor is None or actor.dead_reason:
            return None
        return actor.actor_id, actor.class_name, actor.methods, actor.name

    def records(self, node_id: str) -> list[dict]:
        now = time.time()
        return [{"actor_id": a.actor_id, "name": a.name, "class_name": a.class_name, "node": node_id,
                 "state": "dead" if a.dead_reason else "alive", "reason": a.dead_reason,
                 "restarts": a.restarts, "checkpoint": a.checkpoint,
                 "checkpoint_age_s": None if a.checkpointed_at is None else now - a.checkpointed_at}
                for a in self._actors.values()]


def _nothing() -> None:
    return None

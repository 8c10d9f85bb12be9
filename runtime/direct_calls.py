"""Calls from this node to actors living on other nodes, sent straight to the actor's worker.

The node that placed an actor only grants its place; it does not relay its
calls. A call to a remote actor waits here, in its actor's queue, until the
actor's worker address is known (the result of the actor's creation, or its
GCS record) and the call's inputs are here; then it goes down the direct
channel (`direct.py`) with its inputs' values, behind the calls made before
it — per-caller order is kept because one node has one channel per worker and
the worker runs each channel's calls in order. Results come back on the same
channel; a large one stays on the actor's node, kept for this one.

When the channel breaks (the worker or its node died, or the actor was
killed), the calls it had started (the worker says when it starts one; a
call whose result waits for a checkpoint stays started after later calls
began) fail with `ActorDiedError`, or go again first in line if the actor
allows `max_task_retries`; calls it had not started go again as they were; all wait
until the GCS names a new worker (a restart), or fail with the reason it gives
for the actor's death. Never a hang: an actor the GCS does not know fails after
`UNKNOWN_ACTOR_WAIT_S`. Used on the node's dispatcher thread only.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .direct import DirectClients
from .errors import ActorDiedError, AuthError, TaskCancelledError
from .object_store import Blob, to_wire, unpack
from .objects import After, ObjectTable
from .protocol import TaskResult, TaskSpec

logger = logging.getLogger(__name__)

LOOKUP_POLL_S = 0.2
UNKNOWN_ACTOR_WAIT_S = 30.0


class ActorDirectory(Protocol):
    """What direct calls need from the cluster link."""

    address: str

    def actor_record(self, actor_id: str) -> dict | None: ...
    def send(self, address: str, method: str, *args: Any) -> None: ...


@dataclass
class _RemoteActor:
    actor_id: str
    worker: str | None = None  # its worker's direct address, once known
    node: str | None = None  # the node it lives on
    task_retries: int = 0
    waiting: deque[TaskSpec] = field(default_factory=deque)  # not sent yet, in call order
    in_flight: dict[str, TaskSpec] = field(default_factory=dict)  # sent, result not back, in call order
    started: set[str] = field(default_factory=set)  # in-flight calls the worker said it started
    lost: set[str] = field(default_factory=set)  # worker addresses seen dead (GCS may still name them)
    lost_since: float | None = None  # when its worker was lost, until a new one is found
    unknown_since: float | None = None


def _nothing() -> None:
    return None


class DirectCalls:
    """This node's calls to actors on other nodes."""

    def __init__(self, directory: ActorDirectory, objects: ObjectTable, clients: DirectClients,
                 is_local_actor: Callable[[str], bool], run_here: Callable[[TaskSpec], None],
                 finish: Callable[[TaskResult], None], after: After):
        self._directory = directory
        self._objects = objects
        self._clients = clients
        self._is_local_actor = is_local_actor
        self._run_here = run_here
        self._finish = finish
        self._after = after
        self._actors: dict[str, _RemoteActor] = {}
        self._by_task: dict[str, _RemoteActor] = {}  # task id of a call in flight -> its actor
        self._to_send: set[str] = set()  # actors with calls waiting and a worker address
        self._to_look_up: set[str] = set()  # actors whose worker address is not known
        self._polling = False

    # ---- calls going out ---------------------------------------------------------------------

    def call(self, spec: TaskSpec) -> None:
        actor = self._actors.get(spec.actor_id)
        if actor is None:
            actor = self._actors[spec.actor_id] = _RemoteActor(spec.actor_id)
        actor.waiting.append(spec)
        for dep in spec.deps:
            self._objects.on_here(dep, _nothing)  # its value comes here to be sent with the call
        if actor.worker is not None:
            self._to_send.add(actor.actor_id)
        elif actor.actor_id not in self._to_look_up:
            self._to_look_up.add(actor.actor_id)
            self._look_up(actor)

    def created(self, actor_id: str, blob: Blob | None) -> None:
        """An actor this node placed elsewhere is constructed: its creation's value names its worker."""
        info = unpack(blob) if blob is not None else None
        if not isinstance(info, dict) or not info.get("direct"):
            return
        actor = self._actors.get(actor_id)
        if actor is None:
            actor = self._actors[actor_id] = _RemoteActor(actor_id)
        if actor.worker is None and info["direct"] not in actor.lost:
            self._found(actor, info["direct"], info.get("node"), actor.task_retries)

    def send_ready(self) -> None:
        """Send each actor the calls at the head of its queue whose inputs are here (every dispatcher turn)."""
        for actor_id in list(self._to_send):
            actor = self._actors[actor_id]
            batch = []
            while actor.waiting and all(self._objects.is_here(d) for d in actor.waiting[0].deps):
                spec = actor.waiting.popleft()
                actor.in_flight[spec.task_id] = spec
                self._by_task[spec.task_id] = actor
                batch.append((spec, {d: self._wire_value(d) for d in spec.deps},
                              {c: self._objects.location_of(c) for c in spec.contained}))
            if batch:
                self._clients.send(actor.worker, ("run", self._directory.address, batch))
            if not actor.waiting:
                self._to_send.discard(actor_id)

    def _wire_value(self, object_id: str) -> Blob | Exception:
        value = self._objects.value_of(object_id)
        return to_wire(value) if isinstance(value, Blob) else value

    def cancel(self, spec: TaskSpec) -> bool:
        """Cancel a call still waiting here (one already sent runs)."""
        actor = self._actors.get(spec.actor_id or "")
        if actor is None or spec not in actor.waiting:
            return False
        actor.waiting.remove(spec)
        self._finish(TaskResult(spec.task_id, None, TaskCancelledError(spec.name)))
        return True

    # ---- finding the actor's worker ----------------------------------------------------------

    def _look_up(self, actor: _RemoteActor) -> None:
        """Ask the GCS where the actor's worker is; keep asking while it is (re)starting."""
        try:
            record = self._directory.actor_record(actor.actor_id)
        except Exception as exc:  # the GCS is away: ask again at the next poll
            logger.warning("cannot look up actor %s: %s", actor.actor_id, exc)
            self._poll_later()
            return
        if record is None:
            now = time.monotonic()
            actor.unknown_since = actor.unknown_since or now
            if now - actor.unknown_since > UNKNOWN_ACTOR_WAIT_S:
                self._fail_waiting(actor, "no such actor")
            else:
                self._poll_later()
            return
        actor.unknown_since = None
        state, worker = record.get("state"), record.get("direct")
        if state == "dead":
            self._fail_waiting(actor, record.get("reason") or "the actor is dead")
        elif self._is_local_actor(actor.actor_id):  # it lives on this node now: the local queue runs it
            self._to_look_up.discard(actor.actor_id)
            del self._actors[actor.actor_id]
            for spec in [*actor.waiting]:
                self._run_here(spec)
        elif state == "alive" and worker and worker not in actor.lost:
            self._found(actor, worker, record.get("address"), record.get("max_task_retries", 0))
        elif actor.lost_since is not None and time.monotonic() - actor.lost_since > UNKNOWN_ACTOR_WAIT_S:
            self._fail_waiting(actor, f"its worker was lost {UNKNOWN_ACTOR_WAIT_S:.0f} s ago and no restart "
                                      f"has been recorded")
        else:
            self._poll_later()

    def _found(self, actor: _RemoteActor, worker: str, node: str | None, task_retries: int) -> None:
        actor.worker, actor.node, actor.task_retries = worker, node, task_retries
        actor.lost_since = None
        self._to_look_up.discard(actor.actor_id)
        if actor.waiting:
            self._to_send.add(actor.actor_id)

    def _fail_waiting(self, actor: _RemoteActor, reason: str) -> None:
        self._to_look_up.discard(actor.actor_id)
        self._to_send.discard(actor.actor_id)
        waiting, actor.waiting = list(actor.waiting), deque()
        for spec in waiting:
            self._finish(TaskResult(spec.task_id, None, ActorDiedError(f"{spec.name}: {reason}")))
        if not actor.in_flight:
            del self._actors[actor.actor_id]

    def _poll_later(self) -> None:
        if not self._polling:
            self._polling = True
            self._after(LOOKUP_POLL_S, self._poll)

    def _poll(self) -> None:
        self._polling = False
        for actor_id in list(self._to_look_up):
            actor = self._actors.get(actor_id)
            if actor is None or actor.worker is not None:
                self._to_look_up.discard(actor_id)
            elif actor.waiting:
                self._look_up(actor)
            else:
                self._to_look_up.discard(actor_id)  # nothing to send: look again at the next call

    # ---- results and losses ------------------------------------------------------------------

    def reply(self, worker: str, message: tuple) -> None:
        """A message from an actor's worker: a result, or a large result kept on its node."""
        task_id = message[1]
        if message[0] == "started":
            actor = self._by_task.get(task_id)
            if actor is not None:
                actor.started.add(task_id)
            return
        actor = self._by_task.pop(task_id, None)
        if actor is None:
            return  # a call already failed over when its channel broke
        actor.in_flight.pop(task_id, None)
        actor.started.discard(task_id)
        if message[0] == "held":
            _, _, node, size = message
            if self._objects.held_elsewhere(task_id, node, size) is None:
                self._directory.send(node, "release_held", task_id)
                return
            self._finish(TaskResult(task_id, None, None))
        else:
            _, _, blob, error, contained = message
            self._finish(TaskResult(task_id, blob, error, tuple(contained)))

    def lost(self, worker: str, reason: str, refused: bool) -> None:
        """The channel to `worker` broke: what it was running fails or goes again; the rest wait for a restart.

        `refused`: the worker failed the handshake (another cluster's key or CA): every call fails with AuthError.
        """
        for actor in list(self._actors.values()):
            if actor.worker != worker:
                continue
            if refused:
                self._refused(actor, reason)
                continue
            actor.lost.add(worker)
            actor.worker = None
            actor.lost_since = time.monotonic()
            again = []
            for spec in actor.in_flight.values():
                self._by_task.pop(spec.task_id, None)
                if spec.task_id not in actor.started:
                    again.append(spec)  # never started: it goes to the restarted actor as it was
                elif spec.attempt < actor.task_retries:
                    spec.attempt += 1
                    again.append(spec)
                else:
                    self._finish(TaskResult(spec.task_id, None, ActorDiedError(
                        f"{spec.name}: the actor's worker died while the call was running ({reason})")))
            actor.in_flight, actor.started = {}, set()
            actor.waiting.extendleft(reversed(again))
            self._to_send.discard(actor.actor_id)
            if actor.waiting:
                self._to_look_up.add(actor.actor_id)
                self._look_up(actor)
            else:
                self._to_look_up.discard(actor.actor_id)

    def _refused(self, actor: _RemoteActor, reason: str) -> None:
        for spec in [*actor.in_flight.values(), *actor.waiting]:
            self._by_task.pop(spec.task_id, None)
            self._finish(TaskResult(spec.task_id, None, AuthError(f"{spec.name}: {reason}")))
        self._to_send.discard(actor.actor_id)
        self._to_look_up.discard(actor.actor_id)
        del self._actors[actor.actor_id]

    def node_died(self, node: str) -> None:
        """Close the channels to the dead node's workers (a partition may leave them open)."""
        for actor in list(self._actors.values()):
            if actor.node == node and actor.worker is not None:
                self._clients.drop(actor.worker)

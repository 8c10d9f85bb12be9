"""Where a call runs in a cluster: here, on the node the cluster picks, or (an actor call) where its actor lives.

Scheduling is bottom-up, as in the Ray paper: a call runs on the node that
received it when it can and that node's queue is short; otherwise the cluster
link picks the feasible node with the lowest estimated wait. Actor calls follow
their actor; while it is restarting (or its node's death is being sorted out)
they are parked here, in order, and sent on once the GCS says where it lives.
Used on the node's dispatcher thread only.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from .errors import ActorDiedError, TaskCancelledError
from .objects import After, ObjectTable
from .protocol import ACTOR_CALL, ACTOR_CREATE, TASK, TaskResult, TaskSpec

logger = logging.getLogger(__name__)

PARK_POLL_S = 0.2
UNKNOWN_ACTOR_WAIT_S = 30.0


class Placement(Protocol):
    """What routing needs from the cluster link."""

    address: str

    def place(self, spec: TaskSpec, queued: int, sent: Mapping[str, int],
              known: Mapping[str, tuple[str, int]]) -> str | None: ...
    def forward(self, spec: TaskSpec, address: str) -> None: ...
    def actor_location(self, actor_id: str) -> tuple[str, str | None]: ...
    def reachable(self, address: str) -> bool: ...


class Router:
    """Sends calls to other nodes and keeps track of the actors it sent calls to."""

    def __init__(self, link: Placement, objects: ObjectTable, is_local_actor: Callable[[str], bool],
                 queued: Callable[[], int], run_here: Callable[[TaskSpec], None],
                 finish: Callable[[TaskResult], None], after: After):
        self._link = link
        self._objects = objects
        self._is_local_actor = is_local_actor
        self._queued = queued
        self._run_here = run_here
        self._finish = finish
        self._after = after
        self._remote_actors: dict[str, str] = {}  # actor id -> address of the node this one sent it to
        self._parked: dict[str, list[TaskSpec]] = {}  # actor id -> calls waiting for it to (re)appear
        self._parked_since: dict[str, float] = {}
        self._sent_to: dict[str, str] = {}  # task id -> address of the node running it
        self._sent = Counter()  # address -> tasks sent there and not finished
        self._awaiting: dict[str, TaskSpec] = {}  # task id -> a task waiting here for its inputs to be made

    def placed_elsewhere(self, spec: TaskSpec) -> bool:
        """Send the call to the node the cluster picks; True when it went elsewhere (or failed)."""
        try:
            if spec.kind == ACTOR_CALL:
                if self._is_local_actor(spec.actor_id):
                    return False
                target = self._remote_actors.get(spec.actor_id)
                if target is None:
                    self._route_to_actor(spec)
                    return True
            elif spec.forwarded_by:
                target = None
            elif self._await_inputs(spec):
                return True
            else:
                target = self._link.place(spec, self._queued(), self._sent, self._input_sizes(spec))
        except Exception as exc:  # no feasible node, or the GCS is unreachable: the caller's get says why
            self._finish(TaskResult(spec.task_id, None, exc))
            return True
        if target is None:
            return False
        if spec.kind == ACTOR_CREATE:
            self._remote_actors[spec.actor_id] = target  # its calls follow it, in order, before the GCS knows
        self._send(spec, target)
        return True

    def _await_inputs(self, spec: TaskSpec) -> bool:
        """Hold a task until its inputs are made, so it is placed where its large inputs are; True if held."""
        pending = [d for d in spec.deps if not self._objects.is_done(d)]
        if not pending:
            return False
        self._awaiting[spec.task_id] = spec
        count = {"left": len(set(pending))}

        def one_done() -> None:
            count["left"] -= 1
            if count["left"] == 0 and self._awaiting.pop(spec.task_id, None) is spec:
                self._run_here(spec)  # placed now, with every input's location known

        for dep in set(pending):
            self._objects.on_done(dep, one_done)
        return True

    def cancel(self, spec: TaskSpec) -> bool:
        """Cancel a task still waiting here for its inputs."""
        if self._awaiting.get(spec.task_id) is not spec:
            return False
        del self._awaiting[spec.task_id]
        self._finish(TaskResult(spec.task_id, None, TaskCancelledError(spec.name)))
        return True

    def _input_sizes(self, spec: TaskSpec) -> dict[str, tuple[str, int]]:
        """Where each input this node owns is and how big it is (the cluster link looks up the others)."""
        sizes = {}
        for dep in spec.deps:
            entry = self._objects.find(dep)
            if entry is None or not entry.ready:
                continue
            if entry.held_at is not None:
                sizes[dep] = (entry.held_at, entry.size)
            elif entry.remote is None:
                sizes[dep] = (self._link.address, entry.blob.size if entry.blob is not None else 0)
        return sizes

    def _send(self, spec: TaskSpec, address: str) -> None:
        if spec.kind == TASK:
            self.settled(spec.task_id)  # sent again (a retry): counted where it goes now
            self._sent_to[spec.task_id] = address
            self._sent[address] += 1
        spec.dep_locations = {d: self._objects.location_of(d) for d in spec.deps}
        spec.forwarded_by = self._link.address
        self._objects.entry(spec.task_id).remote = address
        self._link.forward(spec, address)

    def settled(self, task_id: str) -> None:
        """A task this node sent elsewhere is finished (or is to be placed again)."""
        address = self._sent_to.pop(task_id, None)
        if address is not None:
            self._sent[address] -= 1

    def _route_to_actor(self, spec: TaskSpec) -> None:
        """Forward a call to the node its actor lives on; park it while the actor is restarting."""
        if spec.actor_id in self._parked:
            self.park(spec)  # behind the calls already waiting, to keep their order
            return
        state, where = self._link.actor_location(spec.actor_id)
        if state == "alive" and where != self._link.address and self._link.reachable(where):
            self._forward_actor_call(spec, where)
        elif state == "dead":
            self._finish(TaskResult(spec.task_id, None, ActorDiedError(f"{spec.name}: {where}")))
        elif state == "alive" and where == self._link.address:  # the GCS says it lives here; it died here
            self._finish(TaskResult(spec.task_id, None, ActorDiedError(f"{spec.name}: no such actor")))
        else:
            self.park(spec)

    def _forward_actor_call(self, spec: TaskSpec, address: str) -> None:
        self._objects.entry(spec.task_id).delivered = False
        self._remote_actors[spec.actor_id] = address
        self._send(spec, address)

    def park(self, spec: TaskSpec) -> None:
        """Hold an actor call until its actor is alive again (or known to be gone for good)."""
        if not self._parked:
            self._after(PARK_POLL_S, self._resolve_parked)
        if spec.actor_id not in self._parked:
            self._parked[spec.actor_id] = []
            self._parked_since[spec.actor_id] = time.monotonic()
        self._parked[spec.actor_id].append(spec)

    def actor_unreachable(self, actor_id: str) -> None:
        """A call to the actor could not be handed over: the next ones ask the GCS where it lives."""
        self._remote_actors.pop(actor_id, None)

    def node_died(self, address: str) -> None:
        for actor_id, where in list(self._remote_actors.items()):
            if where == address:
                del self._remote_actors[actor_id]

    def _resolve_parked(self) -> None:
        """Send parked calls on, in order, once their actor is alive again; fail them if it never will be."""
        for actor_id, specs in list(self._parked.items()):
            try:
                state, where = self._link.actor_location(actor_id)
            except Exception as exc:  # the GCS is away: ask again at the next poll
                logger.warning("cannot look up actor %s: %s", actor_id, exc)
                continue
            waited = time.monotonic() - self._parked_since[actor_id]
            if state == "alive" and self._link.reachable(where):
                del self._parked[actor_id]
                self._parked_since.pop(actor_id)
                for spec in specs:
                    if where == self._link.address:
                        self._run_here(spec)
                    else:
                        self._forward_actor_call(spec, where)
            elif state == "dead" or (state == "unknown" and waited > UNKNOWN_ACTOR_WAIT_S):
                del self._parked[actor_id]
                self._parked_since.pop(actor_id)
                reason = where if state == "dead" else "no such actor"
                for spec in specs:
                    self._finish(TaskResult(spec.task_id, None, ActorDiedError(f"{spec.name}: {reason}")))
        if self._parked:
            self._after(PARK_POLL_S, self._resolve_parked)

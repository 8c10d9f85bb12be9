"""Where a call runs in a cluster: here, on the node the cluster picks, or (an actor call) where its actor lives.

Scheduling is bottom-up, as in the Ray paper: a task runs on the node that
received it when it can and that node's queue is short; otherwise the cluster
link picks a feasible node — the one with most of the task's large inputs,
else the one with the lowest estimated wait. A task waits here until its
inputs are made, so it is placed knowing where they are; a task that only
nodes with late heartbeats could run (the GCS was just away) waits for them to
beat again or be declared dead, up to `LATE_WAIT_S`; a plain task goes
straight to a worker that node lends this one (`leases.py`), others to the
node's queue. Actor calls to an actor on another node go straight to its
worker (`direct_calls.py`). Used on the node's dispatcher thread only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from .direct_calls import DirectCalls
from .leases import Leases, leasable
from .errors import NodesLateError, TaskCancelledError
from .objects import After, ObjectTable
from .protocol import ACTOR_CALL, TASK, TaskResult, TaskSpec

LATE_RETRY_S = 0.1
LATE_WAIT_S = 30.0


class Placement(Protocol):
    """What routing needs from the cluster link."""

    address: str

    def place(self, spec: TaskSpec, queued: int, sent: Mapping[str, int],
              known: Mapping[str, tuple[str, int]]) -> str | None: ...
    def forward(self, spec: TaskSpec, address: str) -> None: ...


class Router:
    """Sends tasks and actor creations to other nodes, and actor calls to remote actors' workers."""

    def __init__(self, link: Placement, objects: ObjectTable, direct: DirectCalls, leases: Leases,
                 is_local_actor: Callable[[str], bool], queued: Callable[[], int],
                 run_here: Callable[[TaskSpec], None], finish: Callable[[TaskResult], None], after: After):
        self._link = link
        self._objects = objects
        self._direct = direct
        self._leases = leases
        self._is_local_actor = is_local_actor
        self._queued = queued
        self._run_here = run_here
        self._finish = finish
        self._after = after
        self._late_since: dict[str, float] = {}  # task id -> when it first found only late nodes
        self._sent_to: dict[str, str] = {}  # task id -> address of the node running it
        self._sent: Counter[str] = Counter()  # address -> tasks sent there and not finished
        self._awaiting: dict[str, TaskSpec] = {}  # task id -> a task waiting here for its inputs to be made

    def placed_elsewhere(self, spec: TaskSpec) -> bool:
        """Send the call where it runs, unless that is here; True when it went (or failed, or waits)."""
        if spec.kind == ACTOR_CALL:
            if self._is_local_actor(spec.actor_id):
                return False
            self._direct.call(spec)
            return True
        if spec.forwarded_by:  # placed here by another node
            return False
        if self._await_inputs(spec):
            return True
        try:
            target = self._link.place(spec, self._queued(), self._sent, self._input_sizes(spec))
        except NodesLateError as exc:
            self._place_later(spec, exc)
            return True
        except Exception as exc:  # no feasible node, or the GCS is unreachable: the caller's get says why
            self._late_since.pop(spec.task_id, None)
            self._finish(TaskResult(spec.task_id, None, exc))
            return True
        self._late_since.pop(spec.task_id, None)
        if target is None:
            return False
        if leasable(spec):  # straight to a worker that node lends this one
            self._count(spec.task_id, target)
            self._leases.submit(spec, target)
        else:
            self.send_to(spec, target)
        return True

    def _await_inputs(self, spec: TaskSpec) -> bool:
        """Hold a task until its inputs are made, so it is placed where its large inputs are; True if held."""
        if spec.kind != TASK:
            return False
        pending = {d for d in spec.deps if not self._objects.is_done(d)}
        if not pending:
            return False
        self._awaiting[spec.task_id] = spec
        count = {"left": len(pending)}

        def one_done() -> None:
            count["left"] -= 1
            if count["left"] == 0 and self._awaiting.pop(spec.task_id, None) is spec:
                self._run_here(spec)  # placed now, with every input's location known

        for dep in pending:
            self._objects.on_done(dep, one_done)
        return True

    def _place_later(self, spec: TaskSpec, exc: NodesLateError) -> None:
        """Place `spec` again in a moment: the nodes that could run it are late, not (yet) dead."""
        since = self._late_since.setdefault(spec.task_id, time.monotonic())
        if time.monotonic() - since > LATE_WAIT_S:
            del self._late_since[spec.task_id]
            self._finish(TaskResult(spec.task_id, None, exc))
            return
        self._awaiting[spec.task_id] = spec

        def again() -> None:
            if self._awaiting.pop(spec.task_id, None) is spec:
                self._run_here(spec)

        self._after(LATE_RETRY_S, again)

    def cancel(self, spec: TaskSpec) -> bool:
        """Cancel a task still waiting here for its inputs, or an actor call not yet sent."""
        if self._awaiting.get(spec.task_id) is spec:
            del self._awaiting[spec.task_id]
            self._late_since.pop(spec.task_id, None)
            self._finish(TaskResult(spec.task_id, None, TaskCancelledError(spec.name)))
            return True
        return self._direct.cancel(spec) if spec.kind == ACTOR_CALL else self._leases.cancel(spec)

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

    def _count(self, task_id: str, address: str) -> None:
        self.settled(task_id)  # sent again (a retry): counted where it goes now
        self._sent_to[task_id] = address
        self._sent[address] += 1

    def send_to(self, spec: TaskSpec, address: str) -> None:
        """Hand the call to the node at `address` (its queue runs it); the result comes back here."""
        if spec.kind == TASK:
            self._count(spec.task_id, address)
        # Where its inputs (and refs inside its arguments) are: the node running it fetches them.
        spec.dep_locations = {d: self._objects.location_of(d) for d in (*spec.deps, *spec.contained)}
        spec.forwarded_by = self._link.address
        self._objects.entry(spec.task_id).remote = address
        self._link.forward(spec, address)

    def settled(self, task_id: str) -> None:
        """A task this node sent elsewhere is finished (or is to be placed again)."""
        address = self._sent_to.pop(task_id, None)
        if address is not None:
            self._sent[address] -= 1

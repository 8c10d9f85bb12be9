"""Tasks this node places on other nodes, pushed straight to workers those nodes lend it (leases).

As in Ray, the node a task is placed on grants a worker, not a relay: the
placing node asks it for a lease (`lease`), gets a worker's direct address, and
sends its tasks for that node down the direct channel to that worker, a few at
a time; results come back on the channel (a large one stays on the worker's
node, kept for this one, its lineage recorded). When this node has nothing
more for that node it gives the lease back (`return_lease`) after `LINGER_S`.
A node with work of its own queued, or no idle worker, refuses: the tasks then
go to its queue the usual way (`ClusterLink.forward`). A lease takes no new
tasks after `TERM_S`: it goes back once its tasks are done and is asked for
again, so a node's own queue cannot starve behind workers it lent.

Failures: when a leased worker's channel breaks, the task it had started is
run again while `max_retries` allow (else `TaskError` "WorkerDiedError"), and
the tasks it had not started are placed again as they were. A worker that
blocks in a nested `get` hands its not-started tasks back to be placed again.
Used on the node's dispatcher thread only.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .direct import DirectClients
from .errors import AuthError, TaskCancelledError, TaskError
from .object_store import Blob, to_wire
from .objects import After, ObjectTable
from .protocol import TASK, TaskResult, TaskSpec

logger = logging.getLogger(__name__)

DEPTH = 8  # tasks in flight on one leased worker (up to MAX_DEPTH when many are waiting)
MAX_DEPTH = 64
MAX_LEASES = 16  # leases held on one node at a time
LINGER_S = 0.05  # an idle lease goes back after this long without work
TERM_S = 1.0  # a lease takes no more tasks after this long: the node gets its worker back to choose again
REFUSED_S = 0.2  # after a refusal, tasks for that node go to its queue for this long


class LeaseLink(Protocol):
    """What leasing needs from the cluster link."""

    address: str

    def ask(self, address: str, method: str, *args: Any, then: Callable[[bool, Any], None]) -> None: ...
    def send(self, address: str, method: str, *args: Any) -> None: ...
    def record_lineage(self, object_id: str, spec: TaskSpec) -> None: ...


@dataclass
class _Lease:
    lease_id: str
    node: str
    worker: str  # the worker's direct address
    in_flight: dict[str, TaskSpec] = field(default_factory=dict)
    started: str | None = None  # the task the worker said it started
    code_sent: set[str] = field(default_factory=set)
    idle_since: float | None = None
    granted_at: float = field(default_factory=time.monotonic)

    def expired(self) -> bool:
        return time.monotonic() - self.granted_at > TERM_S


def leasable(spec: TaskSpec) -> bool:
    """A plain task that fits any pool worker (tasks asking for other resources queue at the node)."""
    return spec.kind == TASK and spec.num_cpus == 1.0 and not spec.resources


class Leases:
    """This node's leased workers on other nodes and the tasks waiting to go to them."""

    def __init__(self, link: LeaseLink, objects: ObjectTable, clients: DirectClients,
                 code_of: Callable[[str], bytes], finish: Callable[[TaskResult], None],
                 forward: Callable[[TaskSpec, str], None], place_again: Callable[[TaskSpec], None], after: After):
        self._link = link
        self._forward = forward  # to the node's own queue, the way calls go without a lease
        self._objects = objects
        self._clients = clients
        self._code_of = code_of
        self._finish = finish
        self._place_again = place_again
        self._after = after
        self._pending: dict[str, deque[TaskSpec]] = {}  # node -> tasks placed there, not sent yet
        self._leases: dict[str, list[_Lease]] = {}  # node -> leases held there
        self._by_worker: dict[str, _Lease] = {}
        self._by_task: dict[str, _Lease] = {}
        self._asking: set[str] = set()  # nodes a lease request is out to
        self._refused_until: dict[str, float] = {}
        self._returning = False

    def submit(self, spec: TaskSpec, node: str) -> None:
        """A task placed on `node`: it goes to a worker leased there (or to the node's queue) once each
        input is here or kept by that node."""
        missing = {d for d in spec.deps if not self._at_hand(d, node)}
        if not missing:
            self._pending.setdefault(node, deque()).append(spec)
            return
        count = {"left": len(missing)}

        def one_here() -> None:
            count["left"] -= 1
            if count["left"] == 0:
                self._pending.setdefault(node, deque()).append(spec)

        for dep in missing:
            self._objects.on_here(dep, one_here)  # its value comes here, to go with the task

    def _at_hand(self, object_id: str, node: str) -> bool:
        entry = self._objects.find(object_id)
        return self._objects.is_here(object_id) or (entry is not None and entry.ready and entry.held_at == node)

    def send_ready(self) -> None:
        """Push waiting tasks to leased workers with room; ask for leases when there is more (each turn).

        Without a lease on a node that refused one a moment ago, its tasks go to
        its own queue; with one, they wait for room on the leases held.
        """
        for node, pending in list(self._pending.items()):
            leases = self._leases.get(node, [])
            if pending and leases:
                depth = max(DEPTH, min(MAX_DEPTH, -(-len(pending) // (2 * len(leases)))))
                for lease in sorted(leases, key=lambda lease: len(lease.in_flight)):
                    self._push(lease, pending, depth)
            if pending and not leases and time.monotonic() < self._refused_until.get(node, 0.0):
                while pending:
                    self._forward(pending.popleft(), node)
            elif pending and node not in self._asking and len(leases) < MAX_LEASES \
                    and time.monotonic() >= self._refused_until.get(node, 0.0):
                self._asking.add(node)
                self._link.ask(node, "lease", self._link.address,
                               then=lambda ok, answer, node=node: self._answered(node, ok, answer))
            if not pending:
                del self._pending[node]
                for lease in leases:
                    self._maybe_idle(lease)

    def _push(self, lease: _Lease, pending: deque[TaskSpec], depth: int = DEPTH) -> None:
        if lease.expired():  # its term is over: it goes back when its tasks are done (see `_maybe_idle`)
            self._maybe_idle(lease)
            return
        batch = []
        while pending and len(lease.in_flight) < depth:
            spec = pending.popleft()
            lease.in_flight[spec.task_id] = spec
            self._by_task[spec.task_id] = lease
            batch.append(self._as_sent(lease, spec))
        if batch:
            lease.idle_since = None
            self._clients.send(lease.worker, ("run", self._link.address, batch))

    def _as_sent(self, lease: _Lease, spec: TaskSpec) -> tuple:
        """The task as its leased worker gets it: code the first time, inputs' values (None: the worker's
        node keeps it), where refs inside its arguments are."""
        sent = spec
        if spec.function_id not in lease.code_sent:
            sent = replace(spec, code=self._code_of(spec.function_id))
            lease.code_sent.add(spec.function_id)
        deps: dict[str, Blob | Exception | None] = {}
        for dep in spec.deps:
            if self._objects.is_here(dep):
                value = self._objects.value_of(dep)
                deps[dep] = to_wire(value) if isinstance(value, Blob) else value
            else:
                deps[dep] = None
        return sent, deps, {c: self._objects.location_of(c) for c in spec.contained}

    def _answered(self, node: str, ok: bool, answer: Any) -> None:
        self._asking.discard(node)
        if not ok or answer is None:
            if not ok:
                logger.warning("lease request to %s failed: %s", node, answer)
            self._refused_until[node] = time.monotonic() + REFUSED_S
            return
        lease_id, worker = answer
        lease = _Lease(lease_id, node, worker)
        self._leases.setdefault(node, []).append(lease)
        self._by_worker[worker] = lease
        pending = self._pending.get(node)
        if pending:
            self._push(lease, pending)
        self._maybe_idle(lease)

    def cancel(self, spec: TaskSpec) -> bool:
        """Cancel a task not yet sent to a leased worker."""
        for pending in self._pending.values():
            if spec in pending:
                pending.remove(spec)
                self._finish(TaskResult(spec.task_id, None, TaskCancelledError(spec.name)))
                return True
        return False

    # ---- what comes back ---------------------------------------------------------------------

    def handles(self, worker: str) -> bool:
        return worker in self._by_worker

    def reply(self, worker: str, message: tuple) -> None:
        lease = self._by_worker.get(worker)
        if lease is None:
            return
        kind = message[0]
        if kind == "started":
            lease.started = message[1]
            return
        if kind == "requeue":  # the worker blocked in a nested get: these go elsewhere
            for task_id in message[1]:
                spec = lease.in_flight.pop(task_id, None)
                self._by_task.pop(task_id, None)
                if spec is not None:
                    self._place_again(spec)
            self._maybe_idle(lease)
            return
        task_id = message[1]
        spec = lease.in_flight.pop(task_id, None)
        self._by_task.pop(task_id, None)
        self._maybe_idle(lease)
        if spec is None:
            return
        if kind == "held":
            _, _, node, size = message
            entry = self._objects.held_elsewhere(task_id, node, size)
            if entry is None:
                self._link.send(node, "release_held", task_id)
                return
            self._link.record_lineage(task_id, spec)  # to make it again if `node` dies
            self._finish(TaskResult(task_id, None, None))
            return
        _, _, blob, error, contained = message
        if error is not None and spec.retry_exceptions and spec.attempt < spec.max_retries:
            spec.attempt += 1
            self._place_again(spec)
            return
        self._finish(TaskResult(task_id, blob, error, tuple(contained)))

    def lost(self, worker: str, reason: str, refused: bool) -> None:
        """A leased worker's channel broke: its started task is retried, the others are placed again."""
        lease = self._by_worker.pop(worker, None)
        if lease is None:
            return
        self._leases[lease.node].remove(lease)
        for spec in lease.in_flight.values():
            self._by_task.pop(spec.task_id, None)
            if refused:
                self._finish(TaskResult(spec.task_id, None, AuthError(f"{spec.name}: {reason}")))
            elif spec.task_id != lease.started:
                self._place_again(spec)
            elif spec.attempt < spec.max_retries:
                spec.attempt += 1
                self._place_again(spec)
            else:
                self._finish(TaskResult(spec.task_id, None, TaskError(
                    "WorkerDiedError", f"the worker running it died {spec.attempt + 1} times ({reason})", "",
                    spec.name)))
        lease.in_flight = {}

    def node_died(self, node: str) -> None:
        """Close the channels to the dead node's leased workers; tasks waiting for it are placed again."""
        for lease in list(self._leases.get(node, [])):
            self._clients.drop(lease.worker)
        for spec in self._pending.pop(node, deque()):
            self._place_again(spec)

    # ---- giving leases back ------------------------------------------------------------------

    def _maybe_idle(self, lease: _Lease) -> None:
        if lease.in_flight or lease.idle_since is not None or (self._pending.get(lease.node)
                                                               and not lease.expired()):
            return
        lease.idle_since = time.monotonic()
        if not self._returning:
            self._returning = True
            self._after(LINGER_S, self._return_idle)

    def _return_idle(self) -> None:
        self._returning = False
        now, waiting = time.monotonic(), False
        for node, leases in self._leases.items():
            for lease in list(leases):
                if lease.idle_since is None or lease.in_flight:
                    continue
                if lease.expired() or (now - lease.idle_since >= LINGER_S and not self._pending.get(node)):
                    leases.remove(lease)
                    self._by_worker.pop(lease.worker, None)
                    self._link.send(node, "return_lease", lease.lease_id)
                else:
                    waiting = True
        if waiting:
            self._returning = True
            self._after(LINGER_S, self._return_idle)

"""A node: worker processes, the objects they make, and the scheduler that feeds them.

All node state is owned by one dispatcher thread. Clients — the driver in
this process, the node's workers over their pipes, remote peers over gRPC —
post requests `(method, args, reply)` to it; `reply(ok, value)` is called when
the answer is known (at once, or when the objects a `get` waits for are
ready). One thread owning the state means no locks on the hot path and a
simple ordering rule: requests from one client are handled in the order sent.

Objects are counted: a process that holds refs to an object counts once
(`hold`/`release`), and every pending call that uses it pins it. An object
nobody holds or pins is freed, with its shared-memory segment and its lineage.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, Listener, wait
from typing import Any

from .errors import (
    ActorDiedError,
    GetTimeoutError,
    ObjectLostError,
    ResourceUnavailableError,
    TaskCancelledError,
    TaskError,
)
from .object_store import SHARED_THRESHOLD, Blob, free, from_wire, to_wire
from .protocol import ACTOR_CALL, ACTOR_CREATE, TASK, TaskResult, TaskSpec, new_id
from .recovery import FailureHandling

logger = logging.getLogger(__name__)

Reply = Callable[[bool, Any], None]


class NodeStoppedError(RuntimeError):
    """The node shut down while a request to it was waiting."""
_MAX_BATCH = 64


@dataclass
class _Entry:
    """One object id: its value once ready, who holds it, and the call that makes it."""

    blob: Blob | None = None
    error: Exception | None = None
    ready: bool = False
    holders: int = 0
    pins: int = 0
    spec: TaskSpec | None = None
    contained: tuple[str, ...] = ()
    waiters: list[Callable[[], None]] = field(default_factory=list)
    remote: str | None = None  # address of the node that makes or holds it, when not this one
    held_at: str | None = None  # ready, but the value stays on that node until someone here needs it
    copy_at: str | None = None  # a node keeping a copy for this one until this entry is freed
    delivered: bool = False  # an actor call forwarded to `remote` has reached it
    fetching: bool = False


@dataclass
class _Worker:
    worker_id: str
    process: subprocess.Popen
    conn: Connection | None = None
    actor_id: str | None = None
    in_flight: deque = field(default_factory=deque)
    known_functions: set[str] = field(default_factory=set)
    blocked: bool = False


@dataclass
class _Actor:
    actor_id: str
    name: str | None
    class_name: str
    methods: tuple[str, ...]
    create_spec: TaskSpec | None = None
    worker: _Worker | None = None
    queue: deque = field(default_factory=deque)
    dead_reason: str | None = None
    restarts: int = 0
    checkpoint: str | None = None
    checkpointed_at: float | None = None


class Node(FailureHandling):
    """One node's scheduler, object table and worker pool, driven by its dispatcher thread."""

    def __init__(self, num_workers: int, resources: dict[str, float] | None = None, *, node_id: str = "local",
                 log_level: int = logging.WARNING, cluster: Any = None):
        self.node_id = node_id
        self.cluster = cluster  # a ClusterLink when this node is part of a multi-node cluster
        self.num_workers = max(1, num_workers)
        self.resources = {"CPU": float(self.num_workers), **(resources or {})}
        self._in_use: dict[str, float] = defaultdict(float)
        self._log_level = log_level
        # Workers connect back on a private Unix socket, authenticated with a per-node key.
        self._socket_dir = tempfile.mkdtemp(prefix="ringwatch-node-")
        self._key = secrets.token_bytes(32)
        self._listener = Listener(os.path.join(self._socket_dir, "workers.sock"), family="AF_UNIX", authkey=self._key)
        self._connecting: dict[str, _Worker] = {}
        self._events: deque = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._entries: dict[str, _Entry] = {}
        self._functions: dict[str, bytes] = {}
        self._ready: deque[TaskSpec] = deque()
        self._waiting_on: dict[str, list[TaskSpec]] = defaultdict(list)
        self._workers: list[_Worker] = []
        self._actors: dict[str, _Actor] = {}
        self._remote_actors: dict[str, str] = {}  # actor id -> address of the node this one placed it on
        self._parked: dict[str, list[TaskSpec]] = {}  # actor id -> calls waiting for it to (re)appear
        self._parked_since: dict[str, float] = {}
        self._wanted_here: set[str] = set()  # not yet made; a call queued here for a local actor needs it
        self._dead_addresses: set[str] = set()
        self._named: dict[str, str] = {}
        self._deadlines: list[tuple[float, Callable[[], None]]] = []
        self._running = True
        self.stats = {"tasks_done": 0, "workers_started": 0}
        for _ in range(self.num_workers):
            self._start_worker()
        self._acceptor = threading.Thread(target=self._accept_workers, name="ringwatch-node-accept", daemon=True)
        self._acceptor.start()
        self._thread = threading.Thread(target=self._loop, name=f"ringwatch-node-{node_id}", daemon=True)
        self._thread.start()

    # ---- client side: any thread -------------------------------------------------------------

    def post(self, method: str, args: tuple, reply: Reply | None = None) -> None:
        """Hand a request to the dispatcher thread; `reply` gets the answer there."""
        self._events.append((method, args, reply))
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Post a request and wait for its answer (for threads other than the dispatcher)."""
        done = threading.Event()
        box: list = []

        def reply(ok: bool, value: Any) -> None:
            box.append((ok, value))
            done.set()

        self.post(method, args, reply)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.wait(0.5):
            if not self._running:
                raise NodeStoppedError(f"node {self.node_id} stopped before answering {method}")
            if deadline is not None and time.monotonic() > deadline:
                raise GetTimeoutError(f"the node did not answer {method} within {timeout} s")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def check_feasible(self, spec: TaskSpec) -> None:
        needs = {"CPU": spec.num_cpus if spec.kind != ACTOR_CALL else 0.0, **spec.resources}
        missing = {k: v for k, v in needs.items() if v > self.resources.get(k, 0.0)}
        if missing:
            raise ResourceUnavailableError(
                f"{spec.name} needs {missing} but no node has that much (this node has {self.resources})")

    def shutdown(self) -> None:
        if not self._running:
            return
        self.post("stop", ())
        self._thread.join(timeout=10)
        for worker in [*self._workers, *self._connecting.values()]:
            _stop_process(worker)
        for entry in self._entries.values():
            if entry.blob is not None:
                free(entry.blob)
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---- the dispatcher thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while self._running:
            try:
                self._turn()
            except Exception:  # the dispatcher must outlive any one bad request or message
                logger.exception("node %s dispatcher error", self.node_id)

    def _turn(self) -> None:
        timeout = self._next_timeout()
        conns = [w.conn for w in self._workers if w.conn is not None]
        try:
            ready = wait([self._wake_r, *conns], timeout)
        except OSError:
            ready = []
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        while self._events:
            method, args, reply = self._events.popleft()
            self._handle(method, args, reply)
        for worker in list(self._workers):
            if worker.conn is not None and worker.conn in ready:
                self._read_worker(worker)
        self._reap_unconnected()
        self._fire_deadlines()
        self._schedule()

    def _handle(self, method: str, args: tuple, reply: Reply | None) -> None:
        try:
            handler = getattr(self, f"_op_{method}")
        except AttributeError:
            if reply:
                reply(False, ValueError(f"unknown runtime request {method!r}"))
            return
        try:
            handler(reply or _ignore, *args)
        except Exception as exc:  # a bad request must not stop the node
            logger.exception("request %s failed", method)
            if reply:
                reply(False, exc)

    def _next_timeout(self) -> float | None:
        if not self._deadlines:
            return 1.0
        return max(0.0, min(d for d, _ in self._deadlines) - time.monotonic())

    def _fire_deadlines(self) -> None:
        if not self._deadlines:
            return
        now = time.monotonic()
        due = [cb for d, cb in self._deadlines if d <= now]
        self._deadlines = [(d, cb) for d, cb in self._deadlines if d > now]
        for callback in due:
            callback()

    # ---- requests ----------------------------------------------------------------------------

    def _op_stop(self, reply: Reply) -> None:
        self._running = False
        reply(True, None)

    def _op_hold(self, reply: Reply, object_id: str) -> None:
        self._entries.setdefault(object_id, _Entry()).holders += 1

    def _op_release(self, reply: Reply, object_id: str) -> None:
        entry = self._entries.get(object_id)
        if entry is not None:
            entry.holders -= 1
            self._free_if_unused(object_id, entry)

    def _op_register_function(self, reply: Reply, function_id: str, code: bytes) -> None:
        if function_id not in self._functions and self.cluster is not None:
            self.cluster.function_registered(function_id, code)
        self._functions[function_id] = code
        reply(True, None)

    def _code_of(self, function_id: str) -> bytes:
        code = self._functions.get(function_id)
        if code is None and self.cluster is not None:  # a call forwarded from a node that knew it
            code = self.cluster.gcs.get_function(function_id)
            if code is not None:
                self._functions[function_id] = code
        if code is None:
            raise ObjectLostError(f"the code of function {function_id} is not registered anywhere")
        return code

    def _op_submit(self, reply: Reply, spec: TaskSpec) -> None:
        entry = self._entries.setdefault(spec.task_id, _Entry())
        entry.spec = spec
        if spec.forwarded_by:
            entry.holders += 1  # the forwarding node holds it until it has fetched the result
        if spec.code is not None:  # sent along with the first call of a function forwarded here
            self._functions.setdefault(spec.function_id, spec.code)
            spec.code = None
        for object_id in (*spec.deps, *spec.contained):
            self._entries.setdefault(object_id, _Entry()).pins += 1
        reply(True, None)
        self._dispatch(spec)

    def _dispatch(self, spec: TaskSpec) -> None:
        """Send a submitted call on its way: to another node, an actor's queue, or this node's queue."""
        if self.cluster is not None and self._placed_elsewhere(spec):
            return
        for dep, address in spec.dep_locations.items():
            self._fetch_if_missing(dep, address)
        if spec.kind == ACTOR_CREATE:
            self._create_actor(spec)
        elif spec.kind == ACTOR_CALL:
            actor = self._actors.get(spec.actor_id)
            if actor is None or actor.dead_reason:
                reason = actor.dead_reason if actor else "no such actor"
                self._finish(TaskResult(spec.task_id, None, ActorDiedError(f"{spec.name}: {reason}")))
            else:
                actor.queue.append(spec)
                for dep in spec.deps:
                    self._bring_here(dep)
                    if not self._is_done(dep):
                        self._wanted_here.add(dep)
        else:
            unready = [d for d in spec.deps if not self._is_ready(d)]
            for dep in unready:
                self._bring_here(dep)
            if unready:
                for dep in unready:
                    self._waiting_on[dep].append(spec)
            else:
                self._ready.append(spec)

    def _placed_elsewhere(self, spec: TaskSpec) -> bool:
        """Send the call to the node the cluster picks; True when it went elsewhere."""
        try:
            if spec.kind == ACTOR_CALL:
                if spec.actor_id in self._actors:
                    return False
                target = self._remote_actors.get(spec.actor_id)
                if target is None:
                    return self._route_to_actor(spec)
            elif spec.forwarded_by:
                target = None
            else:
                target = self.cluster.place(spec, self)
        except Exception as exc:  # no feasible node, or the GCS is unreachable: the caller's get says why
            self._finish(TaskResult(spec.task_id, None, exc))
            return True
        if target is None:
            return False
        if spec.kind == ACTOR_CREATE:
            self._remote_actors[spec.actor_id] = target  # its calls follow it, in order, before the GCS knows
        spec.dep_locations = {d: self._location_of(d) for d in spec.deps}
        spec.forwarded_by = self.cluster.address
        self._entries[spec.task_id].remote = target
        self.cluster.forward(spec, target)
        return True

    def _location_of(self, object_id: str) -> str:
        entry = self._entries.get(object_id)
        return entry.remote if entry is not None and entry.remote else self.cluster.address

    def _fetch_if_missing(self, object_id: str, address: str) -> None:
        entry = self._entries.setdefault(object_id, _Entry())
        if entry.ready or entry.remote or entry.spec is not None or address == self.cluster.address:
            return
        entry.remote = address
        self.cluster.fetch(object_id, address)

    def _op_remote_ready(self, reply: Reply, object_id: str, blob: Blob | None, error: Exception | None) -> None:
        """A value made or held by another node has arrived here."""
        entry = self._entries.get(object_id)
        if entry is not None and isinstance(error, ConnectionError) and not self._is_ready(object_id):
            # The holder is unreachable: fetch again later, unless its death is declared first (which
            # rebuilds the object) or the object is being made again already.
            entry.fetching = False
            self._deadlines.append((time.monotonic() + 1.0, lambda: self._fetch_again(object_id)))
        elif entry is not None and entry.held_at is not None:
            entry.blob, entry.error, entry.held_at, entry.fetching = blob, error, None, False
            self._arrived(object_id, entry)
            self._free_if_unused(object_id, entry)
        else:
            self._finish(TaskResult(object_id, blob, error))

    def _fetch_again(self, object_id: str) -> None:
        entry = self._entries.get(object_id)
        if entry is None or self._is_ready(object_id):
            return
        if entry.held_at is not None:
            self._bring_here(object_id)
        elif entry.remote is not None and entry.spec is None:
            self.cluster.fetch(object_id, entry.remote)

    def _op_result(self, reply: Reply, object_id: str, blob: Blob | None, error: Exception | None) -> None:
        """The result of a call this node forwarded, sent by the node that ran it."""
        reply(True, None)
        self._op_remote_ready(_ignore, object_id, None if blob is None else from_wire(blob), error)

    def _op_held_elsewhere(self, reply: Reply, object_id: str, address: str) -> None:
        """A large value another node made for this one is ready there; it moves only when needed here."""
        reply(True, None)
        entry = self._entries.get(object_id)
        if entry is None or entry.ready:
            self.cluster.send(address, "release", object_id)
            return
        entry.held_at = entry.copy_at = address
        if entry.spec is not None and entry.spec.kind == TASK:
            self.cluster.record_lineage(object_id, entry.spec)  # to re-make it if `address` dies
        self._finish(TaskResult(object_id, None, None))

    def _bring_here(self, object_id: str) -> None:
        entry = self._entries.get(object_id)
        if entry is not None and entry.held_at is not None and not entry.fetching:
            entry.fetching = True
            self.cluster.fetch(object_id, entry.held_at)

    def _op_put(self, reply: Reply, object_id: str, blob: Blob) -> None:
        entry = self._entries.setdefault(object_id, _Entry())
        entry.blob, entry.ready = blob, True  # laid into shared memory when a worker first needs it
        if self.cluster is not None:
            self.cluster.object_made(object_id, entry.blob.size)
        reply(True, None)

    def _op_get(self, reply: Reply, object_ids: list[str], timeout: float | None) -> None:
        """Answer with each object's Blob (or error) once all are ready, or GetTimeoutError."""
        self._when_ready(object_ids, len(object_ids), timeout, reply,
                         lambda: [self._value_of(i) for i in object_ids],
                         lambda: GetTimeoutError(f"get timed out after {timeout} s waiting for "
                                                 f"{sum(not self._is_ready(i) for i in object_ids)} of "
                                                 f"{len(object_ids)} objects"), here=True)

    def _op_get_for_worker(self, reply: Reply, object_ids: list[str], timeout: float | None) -> None:
        """`get` from a worker: the values go through shared memory, not the pipe."""
        def answer(ok: bool, value: Any) -> None:
            reply(ok, [self._value_for_worker(i) for i in object_ids] if ok else value)
        self._op_get(answer, object_ids, timeout)

    def _op_wait(self, reply: Reply, object_ids: list[str], num_returns: int, timeout: float | None) -> None:
        """Answer with the ids ready once `num_returns` are (or all ready ones at the timeout)."""
        ready_ids = lambda: [i for i in object_ids if self._is_done(i)]  # noqa: E731
        self._when_ready(object_ids, num_returns, timeout, reply, ready_ids, None, here=False)

    def _op_cancel(self, reply: Reply, object_id: str) -> None:
        entry = self._entries.get(object_id)
        if entry is None or entry.ready or entry.spec is None:
            reply(True, False)
            return
        spec = entry.spec
        for queue in (self._ready, *self._waiting_on.values(), *(a.queue for a in self._actors.values())):
            if spec in queue:
                queue.remove(spec)
                self._finish(TaskResult(spec.task_id, None, TaskCancelledError(spec.name)))
                reply(True, True)
                return
        for worker in self._workers:
            if worker.actor_id is None and any(s.task_id == object_id for s in worker.in_flight):
                spec.cancelled = True
                worker.process.kill()
                reply(True, True)
                return
        reply(True, False)

    def _op_get_actor(self, reply: Reply, name: str) -> None:
        actor_id = self._named.get(name)
        actor = self._actors.get(actor_id) if actor_id else None
        if actor is not None and not actor.dead_reason:
            reply(True, (actor.actor_id, actor.class_name, actor.methods, actor.name))
            return
        record = self.cluster.actor_by_name(name) if self.cluster is not None else None
        if record is None:
            reply(False, ValueError(f"no live actor named {name!r}"))
            return
        reply(True, (record["actor_id"], record["class_name"], tuple(record["methods"]), record["name"]))

    def _op_kill(self, reply: Reply, actor_id: str) -> None:
        actor = self._actors.get(actor_id)
        if actor is not None and not actor.dead_reason:
            self._actor_died(actor, "the actor was killed with kill()", restart=False)
        elif actor is None and self.cluster is not None:
            address = self.cluster.actor_address(actor_id)
            if address is not None:
                self.cluster.send(address, "kill", actor_id)
        reply(True, None)

    def _op_nodes(self, reply: Reply) -> None:
        reply(True, self.cluster.nodes() if self.cluster is not None else [self.describe()])

    def _op_object_count(self, reply: Reply) -> None:
        reply(True, {"objects": len(self._entries), "functions": len(self._functions),
                     "waiting": sum(len(v) for v in self._waiting_on.values()),
                     "shared_bytes": self._shared_bytes()})

    def _op_export(self, reply: Reply, object_id: str) -> None:
        """The value of a ready object (or its error), for another node fetching it."""
        entry = self._entries.get(object_id)
        if entry is None or not entry.ready:
            reply(False, ObjectLostError(f"object {object_id} is not held on node {self.node_id}"))
            return
        self._when_ready([object_id], 1, None, reply, lambda: self._value_of(object_id), None, here=True)

    def describe(self) -> dict:
        return {"node_id": self.node_id, "alive": True, "resources": dict(self.resources),
                "queued": len(self._ready), "workers": len([w for w in self._workers if w.actor_id is None]),
                "actors": len([a for a in self._actors.values() if not a.dead_reason]),
                "objects": len(self._entries),
                "shared_bytes": self._shared_bytes()}

    # ---- objects -----------------------------------------------------------------------------

    def _shared_bytes(self) -> int:
        return sum(e.blob.size for e in self._entries.values() if e.blob and e.blob.shared)

    def _entry(self, object_id: str) -> _Entry:
        return self._entries.setdefault(object_id, _Entry())

    def _is_done(self, object_id: str) -> bool:
        """Ready, here or on the node that made it."""
        entry = self._entries.get(object_id)
        return entry is not None and entry.ready

    def _is_ready(self, object_id: str) -> bool:
        """Ready with its value on this node."""
        entry = self._entries.get(object_id)
        return entry is not None and entry.ready and entry.held_at is None

    def _value_of(self, object_id: str) -> Blob | Exception:
        entry = self._entries.get(object_id)
        if entry is None or not entry.ready:
            return ObjectLostError(f"object {object_id} is not held by anyone any more")
        return entry.error if entry.error is not None else entry.blob

    def _value_for_worker(self, object_id: str) -> Blob | Exception:
        """The value as a worker reads it: a large one still in this process's heap is laid into shared memory once."""
        entry = self._entries.get(object_id)
        if entry is not None and entry.blob is not None and not entry.blob.shared \
                and entry.blob.size > SHARED_THRESHOLD:
            entry.blob = from_wire(entry.blob)
        return self._value_of(object_id)

    def _when_ready(self, object_ids, count, timeout, reply, answer, on_timeout, *, here: bool) -> None:
        """Reply with `answer()` once `count` of the objects are ready (`here`: with their values on this node)."""
        is_ready = self._is_ready if here else self._is_done
        if here:
            for object_id in object_ids:
                self._bring_here(object_id)
        pending = {i for i in object_ids if not is_ready(i)}
        needed = count - (len(set(object_ids)) - len(pending))
        if needed <= 0 or not pending:
            reply(True, answer())
            return
        state = {"done": False, "needed": needed}

        def one_ready(object_id: str) -> None:
            if state["done"]:
                return
            if not is_ready(object_id):  # ready on another node: it is on its way here
                self._entries[object_id].waiters.append(lambda: one_ready(object_id))
                self._bring_here(object_id)
                return
            state["needed"] -= 1
            if state["needed"] <= 0:
                state["done"] = True
                reply(True, answer())

        def expired() -> None:
            if not state["done"]:
                state["done"] = True
                if on_timeout is None:
                    reply(True, answer())
                else:
                    reply(False, on_timeout())

        for object_id in pending:
            self._entries.setdefault(object_id, _Entry()).waiters.append(lambda i=object_id: one_ready(i))
        if timeout is not None:
            self._deadlines.append((time.monotonic() + timeout, expired))

    def _finish(self, result: TaskResult) -> None:
        entry = self._entries.setdefault(result.task_id, _Entry())
        if entry.ready:
            return
        entry.blob, entry.error, entry.ready = result.blob, result.error, True
        if self.cluster is not None and result.blob is not None and not entry.remote:
            self.cluster.object_made(result.task_id, result.blob.size)
        entry.contained = result.contained
        for object_id in result.contained:
            self._entries.setdefault(object_id, _Entry()).pins += 1
        spec = entry.spec
        if spec is not None and spec.forwarded_by and spec.forwarded_by != self.cluster.address:
            self._report_to_forwarder(spec, entry)
        if spec is not None:
            for object_id in (*spec.deps, *spec.contained):
                self._unpin(object_id)
            entry.spec = spec if spec.kind == ACTOR_CREATE else None
        self._arrived(result.task_id, entry)
        self._free_if_unused(result.task_id, entry)

    def _report_to_forwarder(self, spec: TaskSpec, entry: _Entry) -> None:
        """Tell the node that forwarded `spec` here that its result is ready.

        Small values and errors travel with the news, and this node's copy goes;
        a large value stays here, held for the forwarder, until someone needs it
        there (or a task that needs it is placed here).
        """
        if entry.blob is not None and entry.blob.size > SHARED_THRESHOLD:
            self.cluster.send(spec.forwarded_by, "held_elsewhere", spec.task_id, self.cluster.address)
            return
        self.cluster.send(spec.forwarded_by, "result", spec.task_id,
                          None if entry.blob is None else to_wire(entry.blob), entry.error)
        entry.holders -= 1

    def _arrived(self, object_id: str, entry: _Entry) -> None:
        """Wake whoever waits for the object; if its value is elsewhere and wanted here, send for it."""
        wanted = object_id in self._wanted_here
        self._wanted_here.discard(object_id)
        if entry.held_at is not None and (wanted or self._waiting_on.get(object_id)):
            self._bring_here(object_id)
        waiters, entry.waiters = entry.waiters, []
        for waiter in waiters:
            waiter()
        if entry.held_at is None:
            for dependent in self._waiting_on.pop(object_id, ()):
                if all(self._is_ready(d) for d in dependent.deps):
                    self._ready.append(dependent)

    def _unpin(self, object_id: str) -> None:
        entry = self._entries.get(object_id)
        if entry is not None:
            entry.pins -= 1
            self._free_if_unused(object_id, entry)

    def _free_if_unused(self, object_id: str, entry: _Entry) -> None:
        if entry.holders > 0 or entry.pins > 0 or not entry.ready or entry.waiters:
            return
        del self._entries[object_id]
        if entry.blob is not None:
            free(entry.blob)
        if self.cluster is not None:
            if entry.copy_at is not None:
                self.cluster.send(entry.copy_at, "release", object_id)
            self.cluster.object_freed(object_id, entry.remote)
        for inner in entry.contained:
            self._unpin(inner)

    # ---- workers -----------------------------------------------------------------------------

    def _start_worker(self, actor_id: str | None = None) -> _Worker:
        """Launch a worker process; it becomes usable when it has connected back (`_op_connected`)."""
        worker_id = new_id()
        info = {"address": self._listener.address, "worker_id": worker_id, "node_id": self.node_id,
                "log_level": self._log_level}
        # Workers see the driver's import path, so functions pickled by reference import there too.
        env = {**os.environ, "RINGWATCH_WORKER_INFO": json.dumps(info), "RINGWATCH_WORKER_KEY": self._key.hex(),
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        process = subprocess.Popen([sys.executable, "-c", "from ringwatch.runtime.worker import main; main()"],
                                   env=env, stdin=subprocess.DEVNULL)
        worker = _Worker(worker_id, process, None, actor_id)
        self._workers.append(worker)
        self._connecting[worker_id] = worker
        self.stats["workers_started"] += 1
        return worker

    def _accept_workers(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
                hello = conn.recv()
            except (OSError, EOFError):
                if not self._running:
                    return
                continue
            if isinstance(hello, tuple) and hello[:1] == ("hello",):
                self.post("connected", (hello[1], conn))
            else:
                conn.close()

    def _op_connected(self, reply: Reply, worker_id: str, conn: Connection) -> None:
        worker = self._connecting.pop(worker_id, None)
        if worker is None:
            conn.close()
            return
        worker.conn = conn

    def _reap_unconnected(self) -> None:
        for worker in list(self._connecting.values()):
            if worker.process.poll() is not None:
                del self._connecting[worker.worker_id]
                logger.error("worker process exited with code %s before connecting", worker.process.returncode)
                self._worker_died(worker)

    def _read_worker(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                self._on_worker_message(worker, worker.conn.recv())
        except (EOFError, OSError, ConnectionResetError):
            self._worker_died(worker)

    def _on_worker_message(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "done":
            _, result, held, released = message
            self._apply_ref_changes(held, released)
            self._complete(worker, result)
        elif kind == "call":
            _, request_id, method, args, held, released = message
            self._apply_ref_changes(held, released)
            if request_id is None:
                self._handle(method, args, None)
                return
            if method in ("get", "wait"):
                worker.blocked = True
            if method == "get":
                method = "get_for_worker"
            self._handle(method, args, self._reply_to_worker(worker, request_id))
        elif kind == "checkpointed":
            self._actor_checkpointed(worker, message[1])
        elif kind == "requeue":
            returned = set(message[1])
            kept = deque()
            for spec in worker.in_flight:
                (self._ready.appendleft if spec.task_id in returned else kept.append)(spec)
            worker.in_flight = kept

    def _reply_to_worker(self, worker: _Worker, request_id: str) -> Reply:
        def reply(ok: bool, value: Any) -> None:
            worker.blocked = False
            try:
                worker.conn.send(("reply", request_id, ok, value))
            except (OSError, EOFError):
                pass
        return reply

    def _apply_ref_changes(self, held: list[str], released: list[str]) -> None:
        for object_id in held:
            self._op_hold(_ignore, object_id)
        for object_id in released:
            self._op_release(_ignore, object_id)

    def _complete(self, worker: _Worker, result: TaskResult) -> None:
        spec = None
        for index, candidate in enumerate(worker.in_flight):
            if candidate.task_id == result.task_id:
                spec = candidate
                del worker.in_flight[index]
                break
        if spec is not None:
            for key, amount in spec.resources.items():
                self._in_use[key] -= amount
            if result.error is not None and spec.retry_exceptions and spec.attempt < spec.max_retries:
                spec.attempt += 1
                self._ready.append(spec)
                return
            if spec.kind == ACTOR_CREATE and result.error is not None:
                actor = self._actors.get(spec.actor_id)
                if actor is not None:
                    self._actor_died(actor, f"the actor's constructor raised: {result.error}", restart=False)
        self.stats["tasks_done"] += 1
        self._finish(result)

    def _worker_died(self, worker: _Worker) -> None:
        if worker not in self._workers:
            return
        self._workers.remove(worker)
        _stop_process(worker)
        if worker.actor_id is not None:
            actor = self._actors.get(worker.actor_id)
            if actor is not None and not actor.dead_reason:
                self._actor_died(actor, f"its worker process exited (code {worker.process.returncode})")
            return
        for spec in worker.in_flight:
            for key, amount in spec.resources.items():
                self._in_use[key] -= amount
            if spec.cancelled:
                self._finish(TaskResult(spec.task_id, None, TaskCancelledError(spec.name)))
            elif spec.attempt < spec.max_retries:
                spec.attempt += 1
                self._ready.append(spec)
            else:
                self._finish(TaskResult(spec.task_id, None, TaskError(
                    "WorkerDiedError", f"the worker running it died {spec.attempt + 1} times", "", spec.name)))
        if self._running:
            self._start_worker()

    # ---- actors ------------------------------------------------------------------------------

    def _create_actor(self, spec: TaskSpec) -> None:
        name = spec.actor_name
        if name and name in self._named and not self._actors[self._named[name]].dead_reason:
            self._finish(TaskResult(spec.task_id, None, ValueError(f"an actor named {name!r} already exists")))
            return
        if name and self.cluster is not None and self.cluster.actor_by_name(name) is not None:
            self._finish(TaskResult(spec.task_id, None, ValueError(f"an actor named {name!r} already exists")))
            return
        actor = _Actor(spec.actor_id, name, spec.name, spec.methods, create_spec=spec, restarts=spec.restarts,
                       checkpoint=spec.restore_from)
        self._actors[spec.actor_id] = actor
        if spec.max_restarts:  # a restart constructs the actor again, from the same arguments
            for object_id in spec.deps:
                self._entry(object_id).pins += 1
        if self.cluster is not None:
            self.cluster.actor_placed(spec)
        if name:
            self._named[name] = spec.actor_id
        actor.worker = self._start_worker(actor_id=spec.actor_id)
        actor.queue.appendleft(spec)

    def _actor_checkpointed(self, worker: _Worker, checkpoint_id: str) -> None:
        actor = self._actors.get(worker.actor_id or "")
        if actor is None:
            return
        actor.checkpoint, actor.checkpointed_at = checkpoint_id, time.time()
        if self.cluster is not None:  # recorded before the result of the call it covers is seen
            self.cluster.actor_checkpointed(actor.actor_id, checkpoint_id)

    def _actor_died(self, actor: _Actor, reason: str, *, restart: bool = True) -> None:
        in_flight: list[TaskSpec] = []
        if actor.worker is not None:
            worker, actor.worker = actor.worker, None
            in_flight, worker.in_flight = list(worker.in_flight), deque()
            if worker in self._workers:
                self._workers.remove(worker)
            _stop_process(worker)
        create = actor.create_spec
        if restart and self._running and create is not None and actor.restarts < create.max_restarts:
            self._restart_actor(actor, in_flight, reason)
            return
        if create is not None and create.max_restarts:
            reason = f"{reason}; no restarts left (max_restarts={create.max_restarts})"
        actor.dead_reason = reason
        if create is not None and create.max_restarts:
            for object_id in create.deps:
                self._unpin(object_id)
        for spec in [*in_flight, *actor.queue]:
            self._finish(TaskResult(spec.task_id, None, ActorDiedError(f"{spec.name}: {reason}")))
        actor.queue.clear()
        if actor.name and self._named.get(actor.name) == actor.actor_id:
            del self._named[actor.name]
        if self.cluster is not None:
            self.cluster.actor_gone(actor.actor_id, actor.name, reason)

    def _restart_actor(self, actor: _Actor, in_flight: list[TaskSpec], reason: str) -> None:
        """Re-create the actor on this node from its latest checkpoint; queued calls wait for it.

        Calls that were running when it died fail (their effect on the state is
        unknown), unless the actor allows `max_task_retries`.
        """
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
        actor.create_spec = self._restart_spec(actor.create_spec, actor.restarts, actor.checkpoint)
        actor.queue.extendleft(reversed([actor.create_spec, *retried]))
        actor.worker = self._start_worker(actor_id=actor.actor_id)
        if self.cluster is not None:
            self.cluster.actor_restarting(actor.actor_id, actor.restarts, self.cluster.address)

    @staticmethod
    def _restart_spec(spec: TaskSpec, restarts: int, checkpoint: str | None) -> TaskSpec:
        return replace(spec, task_id=new_id(), restarts=restarts, restore_from=checkpoint, forwarded_by=None,
                       dep_locations={}, attempt=0, code=None)

    def _op_actors(self, reply: Reply) -> None:
        if self.cluster is not None:
            reply(True, self.cluster.actors())
            return
        now = time.time()
        reply(True, [{"actor_id": a.actor_id, "name": a.name, "class_name": a.class_name, "node": self.node_id,
                      "state": "dead" if a.dead_reason else "alive", "reason": a.dead_reason,
                      "restarts": a.restarts, "checkpoint": a.checkpoint,
                      "checkpoint_age_s": None if a.checkpointed_at is None else now - a.checkpointed_at}
                     for a in self._actors.values()])

    # ---- scheduling --------------------------------------------------------------------------

    def _schedule(self) -> None:
        for actor in self._actors.values():
            self._feed_actor(actor)
        if not self._ready:
            return
        idle = [w for w in self._workers if w.actor_id is None and w.conn is not None and not w.blocked
                and len(w.in_flight) < _MAX_BATCH]
        blocked = sum(1 for w in self._workers if w.actor_id is None and w.blocked)
        pool = sum(1 for w in self._workers if w.actor_id is None)
        if blocked and pool - blocked < self.num_workers:
            self._start_worker()  # a worker waiting in get does not count against the pool
        # A small backlog goes one task per free worker, so nothing waits behind a long task;
        # a large one is handed out in batches, which is what makes many small tasks cheap.
        backlog = len(self._ready) > 4 * max(pool, 1)
        idle.sort(key=lambda w: len(w.in_flight))
        for worker in idle:
            if not self._ready:
                break
            if not backlog:
                if not worker.in_flight:
                    self._send_batch(worker, 1)
                continue
            share = max(1, min(_MAX_BATCH - len(worker.in_flight), -(-len(self._ready) // (2 * len(idle)))))
            self._send_batch(worker, share)

    def _send_batch(self, worker: _Worker, count: int) -> None:
        batch = []
        skipped: list[TaskSpec] = []
        while self._ready and len(batch) < count:
            spec = self._ready.popleft()
            if spec.resources and not self._reserve(spec):
                skipped.append(spec)
                continue
            try:
                batch.append(self._runnable(worker, spec))
            except ObjectLostError as exc:
                self._finish(TaskResult(spec.task_id, None, exc))
                continue
            worker.in_flight.append(spec)
        self._ready.extendleft(reversed(skipped))
        if batch:
            self._send(worker, batch)

    def _reserve(self, spec: TaskSpec) -> bool:
        if any(self._in_use[k] + v > self.resources.get(k, 0.0) for k, v in spec.resources.items()):
            return False
        for key, amount in spec.resources.items():
            self._in_use[key] += amount
        return True

    def _feed_actor(self, actor: _Actor) -> None:
        worker = actor.worker
        if worker is None or worker.conn is None or not actor.queue:
            return
        batch = []
        while actor.queue and all(self._is_ready(d) for d in actor.queue[0].deps):
            spec = actor.queue.popleft()
            batch.append(self._runnable(worker, spec))
            worker.in_flight.append(spec)
        if batch:
            self._send(worker, batch)

    def _runnable(self, worker: _Worker, spec: TaskSpec) -> tuple:
        code = None
        if spec.function_id is not None and spec.function_id not in worker.known_functions:
            code = self._code_of(spec.function_id)
            worker.known_functions.add(spec.function_id)
        return spec, code, {d: self._value_for_worker(d) for d in spec.deps}

    def _send(self, worker: _Worker, batch: list) -> None:
        try:
            worker.conn.send(("run", batch))
        except (OSError, EOFError):
            self._worker_died(worker)


def _ignore(ok: bool, value: Any) -> None:
    return None


def _stop_process(worker: _Worker) -> None:
    if worker.conn is not None:
        try:
            worker.conn.send(("exit",))
        except (OSError, EOFError, ValueError):
            pass
    try:
        worker.process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait(timeout=5)
    if worker.conn is not None:
        worker.conn.close()

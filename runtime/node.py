"""A node: one dispatcher thread that owns the node's parts and serves requests posted to it.

The parts, each owning its own state:
- `ObjectTable` (objects.py): every object the node knows, counted, and where its value is;
- `WorkerPool` (workers.py) and `Scheduler` (scheduler.py): worker processes and the task queue;
- `ActorManager` (actor_manager.py): the actors living here and their queues of calls;
- `Router` (routing.py) and `Recovery` (recovery.py), in a cluster: where calls run, and what to
  do when another node dies.

Clients — the driver in this process, the node's workers over their pipes,
remote peers over gRPC, the heartbeat thread — post requests `(method, args,
reply)`; `reply(ok, value)` is called on the dispatcher thread when the answer
is known (at once, or when the objects a `get` waits for are ready). Only the
dispatcher thread touches the parts: no locks on the hot path, and requests
from one client are handled in the order sent.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .actor_manager import ActorManager
from .direct import DirectClients
from .direct_calls import DirectCalls
from .leases import Leases
from .errors import GetTimeoutError, NodeStoppedError, ObjectLostError, ResourceUnavailableError
from .functions import FunctionTable
from .gcs import InMemoryGcs, kv_request
from .object_store import SHARED_THRESHOLD, Blob, from_wire, to_wire
from .objects import ObjectEntry, ObjectTable
from .protocol import ACTOR_CALL, ACTOR_CREATE, TASK, TaskResult, TaskSpec
from .recovery import Recovery
from .routing import Router
from .scheduler import Scheduler
from .workers import Worker, WorkerPool

logger = logging.getLogger(__name__)

Reply = Callable[[bool, Any], None]

STOP_WAIT_S = 10.0  # how long `shutdown` waits for the dispatcher to finish the request it is serving
IDLE_WAIT_S = 1.0  # the longest the dispatcher waits for news: requests posted with `post_later` wait at most this


def _ignore(ok: bool, value: Any) -> None:
    return None


class Node:
    """One node: its parts, driven by its dispatcher thread."""

    def __init__(self, num_workers: int, resources: dict[str, float] | None = None, *, node_id: str = "local",
                 log_level: int = logging.WARNING, cluster: Any = None):
        self.node_id = node_id
        self.num_workers = num_workers  # 0 for a driver's light node, which places everything elsewhere
        self.resources = {"CPU": float(self.num_workers), **(resources or {})}
        self._cluster = cluster  # a ClusterLink when this node is part of a multi-node cluster
        self._events: deque = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._wake_pending = False
        self._selector = selectors.DefaultSelector()  # the wake-up pipe and every worker's pipe
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._watched: dict[int, Worker] = {}
        self._writing: set[int] = set()  # watched worker pipes with messages their socket has not taken yet
        self._watched_version = -1
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_order = itertools.count()
        self._running = True
        self._loop_done = threading.Event()  # the dispatcher has served its last request
        self.stats = {"tasks_done": 0}
        self._functions = FunctionTable(*((cluster.function_code, cluster.function_registered) if cluster else ()))
        self._objects = ObjectTable(cluster, self._after)
        direct = cluster.direct_settings() if cluster is not None else None
        self._pool = WorkerPool(node_id, log_level, self.post, self._functions, self._objects, direct)
        self._scheduler = Scheduler(self._pool, self._objects, self.resources, self.num_workers, self._finish,
                                    self._is_running)
        self._actors = ActorManager(self._pool, self._objects, self._finish, cluster, self._is_running)
        self._router: Router | None = None
        self._recovery: Recovery | None = None
        self._direct: DirectCalls | None = None
        self._leases: Leases | None = None
        self._clients: DirectClients | None = None
        self._kv = cluster.gcs if cluster is not None else InMemoryGcs()  # what `rt.kv_*` reads and writes
        if cluster is not None:
            cluster.attach(self.post, self._functions.code_of, self.resources)
            self._clients = DirectClients(direct.key, self.post, direct.client_tls())
            self._direct = DirectCalls(cluster, self._objects, self._clients, self._actors.__contains__,
                                       self._dispatch, self._finish, self._after)
            self._leases = Leases(cluster, self._objects, self._clients, self._functions.code_of, self._finish,
                                  lambda spec, address: self._router.send_to(spec, address), self._place_again,
                                  self._after)
            self._router = Router(cluster, self._objects, self._direct, self._leases, self._actors.__contains__,
                                  self._scheduler.queued, self._dispatch, self._finish, self._after)
            self._recovery = Recovery(cluster, self._objects, self._direct, self._submit, self._dispatch,
                                      self._finish)
        self._ops: dict[str, Callable[..., None]] = {
            name[len("_op_"):]: getattr(self, name) for name in dir(self) if name.startswith("_op_")}
        for _ in range(self.num_workers):
            self._pool.start()
        self._thread = threading.Thread(target=self._loop, name=f"ringwatch-node-{node_id}", daemon=True)
        self._thread.start()

    # ---- client side: any thread -------------------------------------------------------------

    def post(self, method: str, args: tuple, reply: Reply | None = None) -> None:
        """Hand a request to the dispatcher thread; `reply` gets the answer there.

        The wake-up pipe is written only when no wake-up is pending yet: a burst
        of posts costs one system call, not one each.
        """
        self._events.append((method, args, reply))
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def post_later(self, method: str, args: tuple) -> None:
        """A request that can wait for the dispatcher's next turn: queued in order, without waking it.

        For what nobody waits on (a driver's ref released): it costs no wake-up of
        its own, and runs before anything posted after it, at the latest when the
        dispatcher's idle wait ends (`IDLE_WAIT_S`).
        """
        self._events.append((method, args, None))

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Post a request and wait for its answer (for threads other than the dispatcher)."""
        done = threading.Lock()  # released by the answer: cheaper than an Event on this hot path
        done.acquire()
        box: list = []

        def reply(ok: bool, value: Any) -> None:
            if not box:
                box.append((ok, value))
                done.release()

        self.post(method, args, reply)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.acquire(timeout=0.5):
            if not self._running:
                raise NodeStoppedError(f"node {self.node_id} stopped before answering {method}")
            if deadline is not None and time.monotonic() > deadline:
                raise GetTimeoutError(f"the node did not answer {method} within {timeout} s")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def check_feasible(self, spec: TaskSpec) -> None:
        """Fail at submit a call that asks for more than this (one-node) runtime has."""
        if not spec.resources and (spec.kind == ACTOR_CALL or spec.num_cpus <= self.resources["CPU"]):
            return  # the common call: nothing to build
        needs = {"CPU": spec.num_cpus if spec.kind != ACTOR_CALL else 0.0, **spec.resources}
        missing = {k: v for k, v in needs.items() if v > self.resources.get(k, 0.0)}
        if missing:
            raise ResourceUnavailableError(
                f"{spec.name} needs {missing} but no node has that much (this node has {self.resources})")

    def shutdown(self) -> None:
        """Stop the dispatcher; on its way out it stops the workers and frees what the node holds.

        The parts are let go on the dispatcher thread, which owns them: a
        dispatcher still busy after `STOP_WAIT_S` (a request stuck in a call to
        another process) is left to finish, and to clean up then.
        """
        if not self._running:
            return
        self.post("stop", ())
        if not self._loop_done.wait(STOP_WAIT_S):
            logger.warning("node %s: the dispatcher did not stop within %s s; it stops the workers when it does",
                           self.node_id, STOP_WAIT_S)
            return
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---- the dispatcher thread ---------------------------------------------------------------

    def _is_running(self) -> bool:
        return self._running

    def _after(self, delay: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_order), callback))

    def _loop(self) -> None:
        while self._running:
            try:
                self._turn()
            except Exception:  # the dispatcher must outlive any one bad request or message
                logger.exception("node %s dispatcher error", self.node_id)
        self._loop_done.set()
        self._pool.shutdown()
        if self._clients is not None:
            self._clients.close()
        self._objects.free_all()
        self._selector.close()

    def _turn(self) -> None:
        timeout = min(IDLE_WAIT_S, max(0.0, self._timers[0][0] - time.monotonic())) if self._timers else IDLE_WAIT_S
        if self._events:
            timeout = 0.0
        self._watch_workers()
        ready = [key.data for key, _ in self._selector.select(timeout)]
        if None in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        self._wake_pending = False  # before draining: a post after this point writes the pipe again
        while self._events:
            method, args, reply = self._events.popleft()
            self._handle(method, args, reply)
        for worker in ready:
            if worker is None or worker.conn is None:
                continue
            messages, alive = self._pool.drain(worker)
            for message in messages:
                self._on_worker_message(worker, message)
            if not alive:
                self._worker_died(worker)
        for worker in self._pool.exited_before_connecting():
            self._worker_died(worker)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            heapq.heappop(self._timers)[2]()
        self._actors.feed()
        if self._direct is not None:
            self._direct.send_ready()
            self._leases.send_ready()
        self._scheduler.schedule()
        self._flush_workers()

    def _watch_workers(self) -> None:
        """Keep the selector's set of worker pipes equal to the pool's connected workers."""
        if self._pool.version == self._watched_version:
            return
        self._watched_version = self._pool.version
        connected = {w.conn.fileno(): w for w in self._pool.workers if w.conn is not None and not w.conn.closed}
        for fd in list(self._watched):
            self._selector.unregister(fd)
        self._watched = connected
        self._writing = {fd for fd, worker in connected.items() if worker.pipe is not None and worker.pipe.pending}
        for fd, worker in connected.items():
            self._selector.register(fd, selectors.EVENT_READ | (selectors.EVENT_WRITE if fd in self._writing else 0),
                                    worker)

    def _flush_workers(self) -> None:
        """Write what this turn queued for workers; wait for the sockets of those that did not take it all."""
        for worker in self._pool.flush():
            self._worker_died(worker)
        unflushed = self._pool.unflushed()
        if not unflushed and not self._writing:
            return
        # Only pipes still open and watched (a worker connected this turn is watched from the next one).
        live = {fd for fd, w in self._watched.items() if w.conn is not None and not w.conn.closed}
        writing = {w.conn.fileno() for w in unflushed if w.conn is not None and not w.conn.closed} & live
        for fd in (writing ^ self._writing) & live:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if fd in writing else 0)
            self._selector.modify(fd, events, self._watched[fd])
        self._writing = writing

    def _handle(self, method: str, args: tuple, reply: Reply | None) -> None:
        handler = self._ops.get(method)
        if handler is None:
            if reply:
                reply(False, ValueError(f"unknown runtime request {method!r}"))
            return
        try:
            handler(reply or _ignore, *args)
        except Exception as exc:  # a bad request must not stop the node
            logger.exception("request %s failed", method)
            if reply:
                reply(False, exc)

    # ---- submitting and placing --------------------------------------------------------------

    def _op_submit(self, reply: Reply, spec: TaskSpec) -> None:
        reply(True, None)
        self._submit(spec)

    def _op_submit_held(self, reply: Reply, spec: TaskSpec) -> None:
        """A call from this node's driver or one of its workers, which holds the ref to its result."""
        self._objects.hold(spec.task_id)
        self._submit(spec)

    def _submit(self, spec: TaskSpec) -> None:
        self._objects.entry(spec.task_id).spec = spec
        if spec.forwarded_by:  # kept for the forwarding node until it has the result
            self._objects.hold_for(spec.task_id, spec.forwarded_by)
        if spec.code is not None:  # sent along with the first call of a function forwarded here
            self._functions.add(spec.function_id, spec.code)
            spec.code = None
        for object_id in (*spec.deps, *spec.contained):
            self._objects.pin(object_id)
        self._dispatch(spec)

    def _dispatch(self, spec: TaskSpec) -> None:
        """Send a submitted call on its way: to another node, an actor's queue, or this node's queue."""
        if self._router is not None and self._router.placed_elsewhere(spec):
            return
        for dep, address in spec.dep_locations.items():
            self._objects.fetch_if_missing(dep, address)
        if spec.kind == ACTOR_CREATE:
            self._actors.create(spec)
        elif spec.kind == ACTOR_CALL:
            self._actors.call(spec)
        else:
            self._scheduler.enqueue(spec)

    def _finish(self, result: TaskResult) -> None:
        """A call's result (or error) is known: make its object ready, report it, let its inputs go."""
        entry = self._objects.finish(result.task_id, result.blob, result.error, result.contained)
        if entry is None:
            return
        if self._router is not None:
            self._router.settled(result.task_id)
        spec = entry.spec
        if spec is not None and spec.kind == ACTOR_CREATE and entry.remote is not None:
            self._direct.created(spec.actor_id, result.blob)  # made elsewhere: its calls can go straight there
        if spec is not None and spec.forwarded_by and spec.forwarded_by != self._cluster.address:
            self._report_to_forwarder(spec, entry)
        if spec is not None:
            for object_id in (*spec.deps, *spec.contained):
                self._objects.unpin(object_id)
        self._objects.settle(result.task_id, entry)

    def _report_to_forwarder(self, spec: TaskSpec, entry: ObjectEntry) -> None:
        """Tell the node that forwarded `spec` here that its result is ready.

        Small values and errors travel with the news, and this node's copy goes;
        a large value stays here, held for the forwarder, until someone needs it
        there (or a task that needs it is placed here). Nothing is kept for a
        forwarder that is gone.
        """
        gone = self._recovery.is_gone(spec.forwarded_by)
        if not gone and entry.blob is not None and entry.blob.size > SHARED_THRESHOLD:
            self._cluster.send(spec.forwarded_by, "held_elsewhere", spec.task_id, self._cluster.address,
                               entry.blob.size)
            return
        if not gone:
            self._cluster.send(spec.forwarded_by, "result", spec.task_id,
                               None if entry.blob is None else to_wire(entry.blob), entry.error)
        if entry.held_for is not None:  # the forwarder's hold; `settle` frees the entry once nobody waits for it
            entry.holders -= 1
            entry.held_for = None

    # ---- requests: objects -------------------------------------------------------------------

    def _op_stop(self, reply: Reply) -> None:
        self._running = False
        reply(True, None)

    def _op_hold(self, reply: Reply, object_id: str) -> None:
        self._objects.hold(object_id)

    def _op_release(self, reply: Reply, object_id: str) -> None:
        self._objects.release(object_id)

    def _op_release_held(self, reply: Reply, object_id: str) -> None:
        self._objects.release_held(object_id)

    def _op_register_function(self, reply: Reply, function_id: str, code: bytes) -> None:
        self._functions.register(function_id, code)
        reply(True, None)

    def _op_put(self, reply: Reply, object_id: str, blob: Blob) -> None:
        self._objects.put(object_id, blob)
        reply(True, None)

    def _op_get(self, reply: Reply, object_ids: list[str], timeout: float | None) -> None:
        """Answer with each object's Blob (or error) once all are ready, or GetTimeoutError."""
        self._objects.get_values(object_ids, timeout, reply)

    def _op_get_for_worker(self, reply: Reply, object_ids: list[str], timeout: float | None) -> None:
        """`get` from a worker: the values go through shared memory, not the pipe."""
        self._objects.get_values(object_ids, timeout, reply, self._objects.value_for_worker)

    def _op_wait(self, reply: Reply, object_ids: list[str], num_returns: int, timeout: float | None) -> None:
        """Answer with the ids ready once `num_returns` are (or all ready ones at the timeout)."""
        self._objects.when_ready(object_ids, num_returns, timeout, reply,
                                 lambda: [i for i in object_ids if self._objects.is_done(i)], None, here=False)

    def _op_cancel(self, reply: Reply, object_id: str) -> None:
        entry = self._objects.find(object_id)
        if entry is None or entry.ready or entry.spec is None:
            reply(True, False)
        elif self._scheduler.cancel(entry.spec) or self._actors.cancel(entry.spec) \
                or (self._router is not None and self._router.cancel(entry.spec)):
            reply(True, True)
        elif entry.remote is not None:  # sent to another node: it cancels it there and sends the error back
            self._cluster.ask(entry.remote, "cancel", object_id, then=reply)
        else:
            reply(True, False)

    def _op_answered(self, reply: Reply, then: Reply, ok: bool, answer: Any) -> None:
        """The answer to a question this node asked another node (`ClusterLink.ask`)."""
        then(ok, answer)

    def _op_object_count(self, reply: Reply) -> None:
        reply(True, {"objects": len(self._objects), "functions": len(self._functions),
                     "waiting": self._scheduler.waiting(), "shared_bytes": self._objects.shared_bytes()})

    def _op_describe(self, reply: Reply) -> None:
        reply(True, self._describe())

    def _describe(self) -> dict:
        return {"node_id": self.node_id, "alive": True, "resources": dict(self.resources),
                "queued": self._scheduler.queued(), "workers": len(self._pool.task_workers()),
                "actors": self._actors.alive(), "objects": len(self._objects),
                "shared_bytes": self._objects.shared_bytes()}

    # ---- requests: actors and the cluster ----------------------------------------------------

    def _op_get_actor(self, reply: Reply, name: str) -> None:
        local = self._actors.by_name(name)
        if local is not None:
            reply(True, local)
            return
        record = self._cluster.actor_by_name(name) if self._cluster is not None else None
        if record is None:
            reply(False, ValueError(f"no live actor named {name!r}"))
            return
        reply(True, (record["actor_id"], record["class_name"], tuple(record["methods"]), record["name"]))

    def _op_kill(self, reply: Reply, actor_id: str) -> None:
        if not self._actors.kill(actor_id) and self._cluster is not None:
            address = self._cluster.actor_address(actor_id)
            if address is not None:
                self._cluster.send(address, "kill", actor_id)
        reply(True, None)

    def _op_actors(self, reply: Reply) -> None:
        reply(True, self._cluster.actors() if self._cluster is not None else self._actors.records(self.node_id))

    def _op_kv(self, reply: Reply, op: str, *args: Any) -> None:
        reply(True, kv_request(self._kv, op, *args))

    def _op_nodes(self, reply: Reply) -> None:
        reply(True, self._cluster.nodes() if self._cluster is not None else [self._describe()])

    def _op_export(self, reply: Reply, object_id: str) -> None:
        """The value of a ready object (or its error), for another node fetching it."""
        if not self._objects.is_done(object_id):
            reply(False, ObjectLostError(f"object {object_id} is not held on node {self.node_id}"))
            return
        self._objects.when_ready([object_id], 1, None, reply, lambda: self._objects.value_of(object_id), None,
                                 here=True)

    def _op_remote_ready(self, reply: Reply, object_id: str, blob: Blob | None, error: Exception | None) -> None:
        """A value made or held by another node has arrived here (or could not be fetched)."""
        if isinstance(error, ConnectionError) and self._objects.fetch_failed(object_id):
            return  # the holder is unreachable: fetched again later, unless its death is declared first
        if not self._objects.arrived_from(object_id, blob, error):
            self._finish(TaskResult(object_id, blob, error))

    def _op_result(self, reply: Reply, object_id: str, blob: Blob | None, error: Exception | None) -> None:
        """The result of a call this node forwarded, sent by the node that ran it."""
        reply(True, None)
        self._op_remote_ready(_ignore, object_id, None if blob is None else from_wire(blob), error)

    def _op_held_elsewhere(self, reply: Reply, object_id: str, address: str, size: int) -> None:
        """A large value another node made for this one is ready there; it moves only when needed here."""
        reply(True, None)
        entry = self._objects.held_elsewhere(object_id, address, size)
        if entry is None:
            self._cluster.send(address, "release_held", object_id)
            return
        if entry.spec is not None and entry.spec.kind == TASK:
            self._cluster.record_lineage(object_id, entry.spec)  # to re-make it if `address` dies
        self._finish(TaskResult(object_id, None, None))

    def _op_node_dead(self, reply: Reply, node_id: str, address: str, declared_here: bool) -> None:
        self._scheduler.end_leases_of(address)
        self._leases.node_died(address)
        self._recovery.node_dead(node_id, address, declared_here)

    def _op_lease(self, reply: Reply, owner: str) -> None:
        """Lend an idle worker to the node at `owner` (see `Scheduler.lease`)."""
        reply(True, None if self._recovery.is_gone(owner) else self._scheduler.lease(owner))

    def _op_return_lease(self, reply: Reply, lease_id: str) -> None:
        self._scheduler.end_lease(lease_id)
        reply(True, None)

    def _op_get_kept(self, reply: Reply, object_ids: list[str]) -> None:
        """Inputs of a leased task that this node keeps for the lessee (ready here: no waiting)."""
        self._objects.get_values(object_ids, None, reply, self._objects.value_for_worker)

    def _op_locate(self, reply: Reply, locations: dict[str, str]) -> None:
        """Refs inside a direct call's arguments: fetch each from the node that has it."""
        for object_id, address in locations.items():
            self._objects.fetch_if_missing(object_id, address)

    def _op_keep(self, reply: Reply, object_id: str, blob: Blob, contained: tuple[str, ...], owner: str) -> None:
        """A large result of a direct call, made by a worker here: kept for the caller's node until it lets go."""
        entry = self._objects.finish(object_id, blob, None, tuple(contained))
        if entry is not None:
            if not self._recovery.is_gone(owner):
                self._objects.hold_for(object_id, owner)
            self._objects.settle(object_id, entry)
        reply(True, self._cluster.address)

    def _op_direct_reply(self, reply: Reply, worker: str, message: tuple) -> None:
        if self._leases.handles(worker):
            self._leases.reply(worker, message)
        else:
            self._direct.reply(worker, message)

    def _op_direct_lost(self, reply: Reply, worker: str, reason: str, refused: bool) -> None:
        self._leases.lost(worker, reason, refused)
        self._direct.lost(worker, reason, refused)

    def _place_again(self, spec: TaskSpec) -> None:
        """A task sent to another node's worker did not run there: place it again."""
        spec.forwarded_by = None
        self._dispatch(spec)

    def _op_actor_checkpointed(self, reply: Reply, actor_id: str, checkpoint_id: str) -> None:
        """An actor's worker wrote a checkpoint: recorded (in the GCS too) before the covered result goes."""
        self._actors.checkpointed(actor_id, checkpoint_id)
        reply(True, None)

    def _op_forward_failed(self, reply: Reply, spec: TaskSpec, address: str, error: Exception) -> None:
        self._recovery.forward_failed(spec, address, error)

    # ---- workers -----------------------------------------------------------------------------

    def _op_connected(self, reply: Reply, worker_id: str, conn: Connection, direct: str | None) -> None:
        self._pool.connected(worker_id, conn, direct)

    def _on_worker_message(self, worker: Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "done":
            for task_id, blob, error, contained, held, released in message[1]:
                if held or released:
                    self._apply_ref_changes(held, released)
                self._completed(worker, TaskResult(task_id, None if blob is None else Blob(*blob), error, contained))
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
        elif kind == "refs":
            self._apply_ref_changes(message[1], message[2])
        elif kind == "parked":  # an actor's call whose result waits for its checkpoint: the worker serves others
            worker.parked.add(message[1])
        elif kind == "requeue":
            self._scheduler.requeue(worker, message[1])

    def _reply_to_worker(self, worker: Worker, request_id: str) -> Reply:
        def reply(ok: bool, value: Any) -> None:
            worker.blocked = False
            self._pool.send(worker, ("reply", request_id, ok, value))
        return reply

    def _apply_ref_changes(self, held: list[str], released: list[str]) -> None:
        for object_id in held:
            self._objects.hold(object_id)
        for object_id in released:
            self._objects.release(object_id)

    def _completed(self, worker: Worker, result: TaskResult) -> None:
        spec = worker.take(result.task_id)
        if spec is not None:
            if worker.actor_id is not None:
                self._actors.completed(spec, result)
            elif self._scheduler.completed(spec, result):
                return  # run again
        self.stats["tasks_done"] += 1
        self._finish(result)

    def _worker_died(self, worker: Worker) -> None:
        if worker.actor_id is not None:
            self._actors.worker_died(worker)
        else:
            self._scheduler.worker_died(worker)

"""A worker process: runs the tasks (or the one actor) its node hands it, one at a time.

Messages on the pipe to the node, node -> worker:
  ("run", [(spec, code or None, {dep_id: Blob or error}), ...])   calls to make, in order
  ("reply", request_id, ok, value)                                 answer to a runtime call
  ("exit",)
worker -> node:
  ("done", [(task_id, Blob.fields() or None, error, contained_ids, held_ids, released_ids), ...])
                                                                   results, in the order the calls ran
  ("call", request_id, method, args, held_ids, released_ids)       nested runtime API use (request_id None:
                                                                   no answer wanted); an actor's checkpoint
                                                                   is recorded this way before the result
                                                                   of the call it covers is sent
  ("refs", held_ids, released_ids)                                 after a direct call
  ("parked", task_id)                                              the call ran; its result goes once its
                                                                   checkpoint is durable (the worker is free)
  ("requeue", [task_id, ...])                                      calls handed over but not started

In a cluster, an actor's worker also serves direct calls (`direct.py`): other
nodes send `("run", owner_address, [(spec, {dep_id: Blob or error},
{contained_id: address}), ...])` on a channel of their own and get back
`("started", task_id)` when a call begins, then `("done", task_id, Blob or None,
error, contained)` or, for a large value kept by this worker's node,
`("held", task_id, node_address, size)`. Calls from every
channel and from the node run one at a time, each channel's in its order.

A task that blocks in `get` first hands its not-yet-started calls back to the
node, so they can run elsewhere: nothing waits behind a blocked worker. An
actor never does: its calls run in order.

An actor's checkpoints are written by a thread of their own (`_ActorBox`,
`checkpoints.CheckpointWriter`): the main thread captures the state between
two calls and serves the next ones; the writer leaves the answer (record the
checkpoint with the node, then send the result it holds back) for the main
thread, which runs it between two calls.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import selectors
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection
from typing import Any

import cloudpickle

from . import api
from .checkpoints import ActorCheckpoints, CheckpointWriter, open_store
from .cpu_slice import ask_for_long_slices
from .direct import Channel, DirectServer, direct_tls
from .errors import ActorDiedError, TaskError
from .object_store import pack, unpack
from .outbox import Outbox
from .protocol import ACTOR_CALL, ACTOR_CREATE, CHECKPOINT_METHOD, RefMarker, TaskResult, TaskSpec, new_id
from .refs import capture_refs, set_ref_listeners
from .scheduler import REFILL_AT
from .serialization import is_plain

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DirectReply:
    """Where the result of a direct call goes: back on its channel; a large value is kept for `owner`."""

    channel: Channel
    owner: str


class Inbox:
    """What the worker's main thread waits for, read on that thread: no hand-off per message.

    The node's pipe is read here directly (the node never blocks writing to a
    worker busy in a long call: it keeps what the pipe does not take yet). In a
    cluster, calls also arrive on direct channels, whose reader threads hand
    them over through a deque and a wake-up pipe, waited on together with the
    node's pipe (so is an actor's checkpoint writer's answer). Both are waited
    on with one selector made once: `multiprocessing.connection.wait` makes a
    selector per wait (10.7 us against 1.7 here), and a worker with a wake-up
    pipe (in a cluster; an actor once it has checkpointed) waits once per
    synchronous call.
    """

    def __init__(self, conn: Connection, *, direct: bool):
        self._conn = conn
        self._handed: deque = deque()
        self._wake_r = self._wake_w = -1
        self._ready: selectors.BaseSelector | None = None  # the node's pipe (data True) and the wake-up pipe
        if direct:
            self.wakeable()

    def wakeable(self) -> None:
        """Let other threads wake the main thread (`hand`, `wake`); called on the main thread, before they start."""
        if self._wake_r < 0:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_w, False)
            self._ready = selectors.DefaultSelector()
            self._ready.register(self._conn.fileno(), selectors.EVENT_READ, True)
            self._ready.register(self._wake_r, selectors.EVENT_READ, False)

    def hand(self, message: tuple) -> None:
        """A direct channel's reader thread hands over a message (any thread)."""
        self._handed.append(message)
        self.wake()

    def wake(self) -> None:
        """Make a waiting `get` return (("wake",) if nothing was handed): work was left for the main thread."""
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:  # the pipe is full of wake-ups: one more is not needed
            pass

    def get(self) -> tuple:
        """The next message: ("exit",) once the node's pipe is closed, ("wake",) after a bare `wake`."""
        while True:
            if self._handed:
                if self._conn.poll(0):  # the node's messages first: a busy direct channel must not starve them
                    return self._recv()  # (a checkpoint's answer waits for the node's "recorded")
                return self._handed.popleft()
            if self._ready is None or any(key.data for key, _ in self._ready.select()):
                return self._recv()
            os.read(self._wake_r, 4096)
            if not self._handed:
                return ("wake",)

    def _recv(self) -> tuple:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            return ("exit",)
        except Exception:  # a message that cannot be read: exit, so the node retries the calls elsewhere
            logger.exception("worker could not read a message from its node")
            return ("exit",)


class WorkerLink:
    """The runtime API as seen from inside a worker: every call goes to the node over the pipe.

    The main thread reads its messages itself (`Inbox`): between calls, and
    while it waits for the answer to a runtime call of its own.
    """

    def __init__(self, conn: Connection, queue: deque, *, is_actor: bool, direct: bool):
        self.conn = conn
        self.queue = queue  # (spec, code, deps, DirectReply or None), in the order they run
        self.is_actor = is_actor
        self.inbox = Inbox(conn, direct=direct)
        self.outbox = Outbox(conn)
        self.held: list[str] = []
        self.released: list[str] = []
        self.code: dict[str, bytes] = {}  # function id -> pickled code, as the node first sent it
        self.later: deque[Callable[[], None]] = deque()  # work other threads leave for the main thread
        self.awaited: dict[str, Callable[[], None]] = {}  # request id -> what its answer lets the main thread do

    def send(self, message: tuple) -> None:
        """To the node, now, after any results held (the node reads frames without `Connection`)."""
        self.outbox.send(message)

    def direct_message(self, channel: Channel, message: Any) -> None:
        """A direct channel's reader thread hands over what it read."""
        if isinstance(message, tuple) and message[:1] == ("run",):
            self.inbox.hand(("direct", channel, message))

    def take(self, message: tuple) -> None:
        """Queue the calls of a `run` (from the node) or `direct` (from a channel) message."""
        if message[0] == "run":  # keep code even for calls handed back: the node sends it once
            self.code.update((spec.function_id, code) for spec, code, _ in message[1] if code is not None)
            self.queue.extend((spec, code, deps, None) for spec, code, deps in message[1])
        else:
            _, channel, (_, owner, calls) = message
            reply = DirectReply(channel, owner)
            for spec, deps, contained in calls:
                if spec.code is not None:  # a leased task brings its code the first time
                    self.code[spec.function_id] = spec.code
                if contained:  # refs inside the arguments: this node fetches them from where they are
                    self.post("locate", (contained,))
                self.queue.append((spec, None, deps, reply))

    def hold(self, object_id: str) -> None:
        self.held.append(object_id)

    def release(self, object_id: str) -> None:
        self.released.append(object_id)

    def take_ref_changes(self) -> tuple[list[str] | tuple, list[str] | tuple]:
        held, released = self.held, self.released
        if not held and not released:  # the common case: nothing to allocate
            return (), ()
        self.held, self.released = [], []
        return held, released

    def post(self, method: str, args: tuple) -> None:
        """A request that needs no answer (submit, hold, release), sent in order with the rest."""
        self.send(("call", None, method, args, *self.take_ref_changes()))

    def call(self, method: str, *args: Any) -> Any:
        blocking = method in ("get", "wait") and not self.is_actor
        if blocking and self.queue:
            self._hand_back(list(self.queue))
        request_id = new_id()
        self.send(("call", request_id, method, args, *self.take_ref_changes()))
        while True:
            message = self.inbox.get()
            if message[0] == "reply" and message[1] == request_id:
                _, _, ok, value = message
                if not ok:
                    raise value
                return value
            if message[0] == "reply":
                self.answered(message)
            elif message[0] in ("run", "direct"):
                self.take(message)
                if blocking:  # nothing may wait behind a blocked worker
                    self._hand_back(list(self.queue))
            elif message[0] == "exit":
                raise SystemExit(0)

    def leave(self, work: Callable[[], None]) -> None:
        """Leave `work` for the main thread, which runs it between two calls (any thread)."""
        self.later.append(work)
        self.inbox.wake()

    def run_later(self) -> None:
        """Run what other threads left (main thread)."""
        while self.later:
            self.later.popleft()()

    def ask(self, method: str, args: tuple, then: Callable[[], None]) -> None:
        """A runtime request whose answer the main thread does not wait for: `then` runs once it came (main thread)."""
        request_id = new_id()
        self.awaited[request_id] = then
        self.send(("call", request_id, method, args, *self.take_ref_changes()))

    def answered(self, message: tuple) -> None:
        """The node's answer to an `ask`: its `then` is left for the main thread (a failed request is logged)."""
        _, request_id, ok, value = message
        then = self.awaited.pop(request_id, None)
        if then is None:
            return
        if not ok:
            logger.error("runtime request %s failed: %s", request_id, value)
        self.leave(then)

    def _hand_back(self, entries: list) -> None:
        """Give calls not started back to whoever sent them: the node, or a leasing node's channel."""
        self.queue.clear()
        by_channel: dict[Any, list[str]] = {}
        for spec, _, _, reply in entries:
            by_channel.setdefault(reply.channel if reply else None, []).append(spec.task_id)
        for channel, task_ids in by_channel.items():
            if channel is None:
                self.send(("requeue", task_ids))
            else:
                try:
                    channel.send(("requeue", task_ids))
                except OSError:
                    pass

    @staticmethod
    def starting(spec: TaskSpec, reply: DirectReply | None) -> None:
        """Tell a direct caller its call has started: if this worker dies, only that one may have run."""
        if reply is not None:
            try:
                reply.channel.send(("started", spec.task_id))
            except OSError:
                pass

    def send_result(self, result: TaskResult, reply: DirectReply | None, *, may_hold: bool = True) -> None:
        """The result goes to the node, or back on the direct channel it came from.

        A result for the node waits for the next write while more calls than
        the node's refill mark are queued here (`outbox.py`): the node then
        reads several in one turn, and still sees in time that this worker
        needs more. A call that took a checkpoint (`may_hold` False) sends at
        once: a restart resumes from that checkpoint, so its result must not be
        lost with the worker.
        """
        if reply is None:
            blob = None if result.blob is None else result.blob.fields()
            self.outbox.result((result.task_id, blob, result.error, result.contained, *self.take_ref_changes()),
                               hold=may_hold and len(self.queue) > REFILL_AT)
            return
        if result.blob is not None and result.blob.shared:  # large: the node keeps it for the caller's node
            node = self.call("keep", result.task_id, result.blob, result.contained, reply.owner)
            message = ("held", result.task_id, node, result.blob.size)
        else:
            message = ("done", result.task_id, result.blob, result.error, result.contained)
        try:
            reply.channel.send(message)
        except OSError:  # the caller is gone; its node's death releases what was kept for it
            pass
        held, released = self.take_ref_changes()
        if held or released:
            self.send(("refs", held, released))


def main() -> None:
    """Entry point of a worker process started by its node: connect back, then serve."""
    info = json.loads(os.environ["RINGWATCH_WORKER_INFO"])
    conn = Client(info["address"], family="AF_UNIX", authkey=bytes.fromhex(os.environ["RINGWATCH_WORKER_KEY"]))
    worker_main(conn, info)


@dataclass
class _ActorBox:
    """The actor this worker hosts, its checkpoint policy (None without a store) and its checkpoint writer.

    A checkpoint stalls the actor only while its state is captured
    (`ActorCheckpoints.capture`, on this thread, between two calls); the
    writer thread makes it durable while the actor serves the calls behind it.
    The call it answers — the checkpoint call itself, or the call a periodic
    checkpoint covers — gets its result once the checkpoint is durable and the
    node has recorded it as the actor's latest (a restart resumes from it), so
    a caller holding the result of a covered call, or a checkpoint id, holds
    what a restart gives back. A failed periodic checkpoint is logged and the
    covered result goes anyway; a failed checkpoint call fails. A periodic
    checkpoint that falls due while the previous one is still being written
    waits for the first call after it (captured states never pile up).
    """

    instance: Any
    spec: TaskSpec
    checkpoints: ActorCheckpoints | None
    writer: CheckpointWriter | None = None
    writing: int = 0  # checkpoints captured, not answered yet (main thread only)

    def checkpoint(self, link: WorkerLink, spec: TaskSpec, reply: DirectReply | None,
                   covered: TaskResult | None) -> None:
        """Capture the state now and queue it for the writer; `spec`'s result (`covered`, or the id) goes later."""
        def written(checkpoint_id: str | None, error: Exception | None) -> None:  # on the writer thread
            link.leave(lambda: self._answer(link, spec, reply, covered, checkpoint_id, error))

        link.inbox.wakeable()  # the writer hands its answers back to this thread (actors never checkpointed: no pipe)
        self.writing += 1
        try:
            captured = self.checkpoints.capture(self.instance)
        except Exception as exc:  # noqa: BLE001 - answered like a failed write
            self._answer(link, spec, reply, covered, None, exc)
            return
        self.writer.submit(captured, written)
        if reply is None:  # the node feeds a worker whose calls are all parked as an idle one
            link.send(("parked", spec.task_id))

    def _answer(self, link: WorkerLink, spec: TaskSpec, reply: DirectReply | None, covered: TaskResult | None,
                checkpoint_id: str | None, error: Exception | None) -> None:
        """On the main thread: record a durable checkpoint with the node, then send the result it holds back."""
        self.writing -= 1
        if error is not None:
            if covered is None:
                link.send_result(TaskResult(spec.task_id, None, _as_task_error(error, spec)), reply, may_hold=False)
                return
            logger.error("checkpoint of actor %s failed: %s", spec.name, error, exc_info=error)
            link.send_result(covered, reply)  # the actor keeps serving; a restart resumes from an older checkpoint
            return
        result = covered if covered is not None else TaskResult(spec.task_id, pack(checkpoint_id), None)
        args = (self.spec.actor_id, checkpoint_id)
        if reply is None:  # the node reads the record before the result, from the same pipe
            link.post("actor_checkpointed", args)
            link.send_result(result, None, may_hold=False)
        else:  # the result goes on the caller's channel: only once the node has recorded it
            link.ask("actor_checkpointed", args, lambda: link.send_result(result, reply, may_hold=False))


def _checkpoint_after(actor: list, spec: TaskSpec, result: TaskResult, reply: DirectReply | None,
                      link: WorkerLink) -> bool:
    """A checkpoint call, or a periodic checkpoint the actor's options call for now: True if it took one (the
    call's result then goes once the checkpoint is durable, `_ActorBox`)."""
    if not actor or spec.kind != ACTOR_CALL:
        return False
    box = actor[0]
    if spec.method == CHECKPOINT_METHOD:
        if result.error is not None:  # the actor has no checkpoint store
            return False
        box.checkpoint(link, spec, reply, None)
        return True
    if box.checkpoints is None or not box.checkpoints.call_done() or box.writing:
        return False
    box.checkpoint(link, spec, reply, result)
    return True


def worker_main(conn: Connection, node_info: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ask_for_long_slices()  # workers often outnumber cores: fewer switches between them (cpu_slice.py)
    logging.basicConfig(level=node_info.get("log_level", logging.WARNING))
    queue: deque = deque()
    link = WorkerLink(conn, queue, is_actor=bool(node_info.get("actor_id")), direct=bool(node_info.get("direct")))
    server = _serve_direct_calls(link, node_info.get("direct"))
    conn.send(("hello", node_info["worker_id"], server.address if server else None))
    api.attach_worker_link(link, node_info)
    set_ref_listeners(link.hold, link.release)
    functions: dict[str, Any] = {}
    actor: list[Any] = []
    # What the worker has set up (the runtime's modules, its pipe) lives as long as the process: out of
    # every later collection. Each collection of the young generations walked it again: ~1.2 ms, ~5 us
    # per 1 ms call with 8 actors on 2 cores.
    gc.freeze()
    try:
        while True:
            if link.later:  # checkpoints made durable: their answers
                link.run_later()
            if not queue:
                link.outbox.flush()
                message = link.inbox.get()
                if message[0] == "exit":
                    return
                if message[0] in ("run", "direct"):
                    link.take(message)
                elif message[0] == "reply":
                    link.answered(message)
                continue
            link.outbox.flush(due_only=True)
            spec, _, deps, reply = queue.popleft()
            if reply is not None:
                link.starting(spec, reply)
            if deps:
                kept = [d for d, value in deps.items() if value is None]
                if kept:  # inputs this worker's node keeps for the caller: through shared memory
                    deps = {**deps, **dict(zip(kept, link.call("get_kept", kept)))}
            result = _run(spec, link, functions, deps, actor, node_info)
            if not _checkpoint_after(actor, spec, result, reply, link):
                link.send_result(result, reply)
    except (EOFError, OSError, KeyboardInterrupt):
        return
    finally:
        os._exit(0)


def _run(spec: TaskSpec, link: WorkerLink, functions: dict[str, Any], deps: dict,
         actor: list[_ActorBox], node_info: dict) -> TaskResult:
    try:
        if spec.function_id is not None and spec.function_id not in functions:
            functions[spec.function_id] = cloudpickle.loads(link.code[spec.function_id])
        args, kwargs = _resolve_args(spec, deps)
        if spec.kind == ACTOR_CREATE:
            actor.append(_create_actor(functions[spec.function_id], spec, args, kwargs, link))
            direct = node_info.get("direct")  # in a cluster its creation's value says where to call it
            value = {"direct": direct["address"], "node": direct["node"]} if direct else None
        elif spec.kind == ACTOR_CALL:
            if not actor:
                raise ActorDiedError(f"{spec.name}: the actor was not created")
            if spec.method == CHECKPOINT_METHOD:
                if actor[0].checkpoints is None:
                    raise ValueError("this actor has no checkpoint store")
                value = None  # taken right after (`_checkpoint_after`), answered with its id once durable
            else:
                value = getattr(actor[0].instance, spec.method)(*args, **kwargs)
        else:
            value = functions[spec.function_id](*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - everything a task raises goes back to the caller
        if isinstance(exc, (SystemExit, KeyboardInterrupt)) and spec.kind != ACTOR_CALL:
            raise
        return TaskResult(spec.task_id, None, _as_task_error(exc, spec))
    if is_plain(value):  # builtin scalars: no ref inside, nothing that fails to pickle
        return TaskResult(spec.task_id, pack(value), None)
    try:
        with capture_refs() as contained:
            blob = pack(value, what=f"the return value of {spec.name}")
    except Exception as exc:  # noqa: BLE001
        return TaskResult(spec.task_id, None, _as_task_error(exc, spec))
    return TaskResult(spec.task_id, blob, None, tuple(contained))


def _create_actor(cls: type, spec: TaskSpec, args: list, kwargs: dict, link: WorkerLink) -> _ActorBox:
    """Construct the actor; a restarted one then takes the state of its latest checkpoint."""
    checkpoints = writer = None
    if spec.checkpoint_uri:
        checkpoints = ActorCheckpoints(open_store(spec.checkpoint_uri), spec.actor_id, spec.checkpoint_every,
                                       spec.checkpoint_interval_s)
        writer = CheckpointWriter(checkpoints)
    box = _ActorBox(cls(*args, **kwargs), spec, checkpoints, writer)
    if spec.restore_from and checkpoints is not None:
        checkpoints.restore(box.instance, spec.restore_from)
    return box


def _serve_direct_calls(link: WorkerLink, direct: dict | None) -> DirectServer | None:
    """In a cluster, listen for direct calls: an actor's callers, or the node that leased this worker."""
    if not direct:
        return None
    tls = direct_tls(direct.get("tls"))
    server = DirectServer(direct["host"], bytes.fromhex(os.environ["RINGWATCH_DIRECT_KEY"]),
                          link.direct_message, _ignore_closed, tls[0] if tls else None)
    direct["address"] = server.address
    return server


def _ignore_closed(channel: Channel) -> None:
    return None


def _resolve_args(spec: TaskSpec, deps: dict) -> tuple[list, dict]:
    args, kwargs = unpack(spec.args)
    if not spec.deps:  # no ref among the arguments: nothing to replace
        return args, kwargs

    def value_of(item: Any) -> Any:
        if isinstance(item, RefMarker):
            dep = deps[item.object_id]
            if isinstance(dep, BaseException):
                raise dep
            return unpack(dep)
        return item

    return [value_of(a) for a in args], {k: value_of(v) for k, v in kwargs.items()}


def _as_task_error(exc: BaseException, spec: TaskSpec) -> Exception:
    return TaskError.from_exception(exc, spec.name)

"""The public runtime API: `init`, `@remote`, `get`, `put`, `wait`, actors.

Every call goes through a node link: to the node living in this process
(local mode, with its workers; or, for a driver that joined a cluster with
`init(address=...)`, a light node without workers that owns what the driver
submits and places it on the cluster), or to the node a worker belongs to
(inside tasks and actors). `init(backend="ray")` sends every public call to a
`RuntimeBackend` instead (`runtime/backend.py`): the same API on an existing
Ray cluster.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.metadata
import inspect
import logging
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import cloudpickle

from .backend import RuntimeBackend, backend_name, open_backend
from .errors import NotInitializedError, SerializationError
from .object_store import SHARED_THRESHOLD, Blob, pack, unpack
from .checkpoints import default_uri
from .protocol import ACTOR_CALL, ACTOR_CREATE, CHECKPOINT_METHOD, TASK, RefMarker, TaskSpec, new_id
from .refs import ObjectRef, capture_refs, set_ref_listeners, submitted_ref
from .serialization import dumps_inline, is_plain

if TYPE_CHECKING:  # grpc is imported only by a driver that joins a cluster
    from .tls import TlsFiles

logger = logging.getLogger(__name__)

_NO_THRESHOLD = 2**62


class NodeLink(Protocol):
    """How this process reaches its node: a request without an answer, and one waited for."""

    def post(self, method: str, args: tuple) -> None: ...
    def call(self, method: str, *args: Any) -> Any: ...


@dataclass
class _Runtime:
    link: NodeLink
    namespace: str
    node: Any = None  # local mode: the node with this process's workers
    driver: Any = None  # a driver in a cluster: its light ClusterNode
    registered: set[str] = field(default_factory=set)
    info: dict = field(default_factory=dict)


_runtime: _Runtime | None = None
_external: RuntimeBackend | None = None  # set by init(backend="ray"); then every public call goes there
_init_lock = threading.Lock()


class _InProcessLink:
    """The driver side of a node that lives in this process."""

    # A put stays in this process's heap (one memcpy) until a worker needs it; laying 10 MB into a
    # fresh shared-memory segment costs ten times that, and a driver's put is often only read back.
    pack_threshold = _NO_THRESHOLD

    def __init__(self, node: Any):
        self.node = node

    def post(self, method: str, args: tuple) -> None:
        self.node.post(method, args)

    def post_later(self, method: str, args: tuple) -> None:
        self.node.post_later(method, args)

    def call(self, method: str, *args: Any) -> Any:
        return self.node.call(method, *args)


def init(address: str | None = None, *, num_workers: int | None = None, resources: dict[str, float] | None = None,
         token: str | None = None, namespace: str = "default", backend: str | None = None,
         host: str = "127.0.0.1", tls: TlsFiles | None = None) -> None:
    """Start a local cluster (`address=None`) or join the cluster whose GCS is at `address` as a driver.

    A driver runs a light node in this process (no workers) that owns what it
    submits and puts, so it survives the death of any cluster node; the nodes
    send results back to it on `host` (loopback by default: give an interface
    they can reach when they run on other machines). `token` defaults to
    RINGWATCH_TOKEN; it is never sent: calls are signed with keys derived from
    it. `tls` (default: RINGWATCH_TLS_CERT/KEY/CA) is needed when the cluster's
    nodes run with TLS.

    `backend="ray"` (default: RINGWATCH_BACKEND, else ringwatch's own) runs the API on Ray instead:
    `address` is then a Ray address (`auto`, `ray://host:10001`, host:port; None starts Ray locally),
    and named actors live in the Ray namespace `ringwatch-<namespace>`.
    """
    global _runtime, _external
    with _init_lock:
        if _runtime is not None or _external is not None:
            raise RuntimeError("ringwatch.runtime is already initialized; call shutdown() first")
        chosen = backend_name(backend, os.environ)
        if chosen != "ringwatch":
            if token is not None or tls is not None:
                raise ValueError(f"token, tls: backend={chosen!r} does not use ringwatch's cluster token or TLS; "
                                 "configure the cluster's own authentication instead")
            _external = open_backend(chosen, address, namespace=namespace, num_workers=num_workers,
                                     resources=resources)
            return
        if address is None:
            from .node import Node
            node = Node(max(1, num_workers or os.cpu_count() or 1), resources, log_level=logging.getLogger().level)
            _runtime = _Runtime(_InProcessLink(node), namespace, node=node)
        else:
            from .cluster import join_as_driver
            driver = join_as_driver(address, token=token, namespace=namespace, host=host, tls=tls)
            _runtime = _Runtime(_InProcessLink(driver.node), namespace, driver=driver)
        _listen_for_refs(_runtime.link)


def attach_external(backend: RuntimeBackend) -> None:
    """Called in a process an external backend started (a Ray worker): runtime calls go to it."""
    global _external
    _external = backend


def attach_worker_link(link: NodeLink, info: dict) -> None:
    """Called in a worker process: runtime calls made by tasks go to the worker's node."""
    global _runtime
    _runtime = _Runtime(link, "default", info=info)


def _listen_for_refs(link: _InProcessLink) -> None:
    """A ref's first hold goes at once (before the submit that may use it); its release goes with the next request."""
    set_ref_listeners(lambda object_id: link.post("hold", (object_id,)),
                      lambda object_id: link.post_later("release", (object_id,)))


def is_initialized() -> bool:
    return _runtime is not None or _external is not None


def shutdown() -> None:
    """Stop the local cluster (or leave the cluster); `init` may be called again afterwards."""
    global _runtime, _external
    with _init_lock:
        runtime, _runtime = _runtime, None
        external, _external = _external, None
        if external is not None:
            external.shutdown()
        set_ref_listeners(None, None)
        if runtime is None:
            return
        if runtime.node is not None:
            runtime.node.shutdown()
        elif runtime.driver is not None:
            runtime.driver.stop()


atexit.register(shutdown)


def _current() -> _Runtime:
    if _runtime is None:
        raise NotInitializedError("the runtime is not started: call ringwatch.runtime.init() first")
    return _runtime


@dataclass(frozen=True)
class Code:
    """A function or class pickled for the workers, and its id (the hash of the pickle), made once per remote."""

    pickled: bytes
    function_id: str


def _pickle_code(target: Any, what: str) -> Code:
    """Pickle a function or class for the workers.

    A driver that joined a cluster pickles code from modules that are not
    installed packages (its scripts, its tests) by value: the nodes were started
    elsewhere and could not import them.
    """
    runtime = _current()
    module = uninstalled_module(target)
    if runtime.driver is not None and module is not None:
        cloudpickle.register_pickle_by_value(module)
    pickled = dumps_inline(target, what=what)
    return Code(pickled, hashlib.sha1(pickled).hexdigest())


def uninstalled_module(target: Any) -> Any:
    """The module of `target` when it is no installed package (a script, a test), else None.

    Its code must travel by value to processes started elsewhere, which could not import it.
    """
    module = sys.modules.get(getattr(target, "__module__", "") or "")
    if module is None:
        return None
    top = module.__name__.split(".")[0]
    installed = top in sys.stdlib_module_names or top in importlib.metadata.packages_distributions()
    return None if installed else module


def _register(code: Code) -> str:
    function_id = code.function_id
    runtime = _current()
    if function_id not in runtime.registered:
        runtime.link.post("register_function", (function_id, code.pickled))
        runtime.registered.add(function_id)
    return function_id


def _pack_call(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[Blob, tuple[str, ...], tuple[str, ...]]:
    """Pickle a call's arguments; top-level refs become markers the worker replaces by their values."""
    if is_plain(args) and is_plain(kwargs):  # builtin scalars only: no ref to mark or capture
        return pack(([*args], kwargs), threshold=_NO_THRESHOLD), (), ()
    deps: list[str] = []

    def mark(value: Any) -> Any:
        if isinstance(value, ObjectRef):
            deps.append(value.id)
            return RefMarker(value.id)
        return value

    marked = ([mark(a) for a in args], {k: mark(v) for k, v in kwargs.items()})
    try:
        with capture_refs() as contained:
            blob = pack(marked, what=f"the arguments of {name}", threshold=_NO_THRESHOLD)
    except SerializationError:
        _raise_for_culprit(name, args, kwargs)
        raise
    return blob, tuple(dict.fromkeys(deps)), tuple(dict.fromkeys(contained))


def _raise_for_culprit(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    labelled = [(f"argument {i}", a) for i, a in enumerate(args)] + [(f"argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in labelled:
        try:
            cloudpickle.dumps(value)
        except Exception as exc:  # noqa: BLE001 - any pickling failure names the argument
            raise SerializationError(f"cannot pickle {label} of {name} ({type(value).__name__}): {exc}") from exc


def _submit(spec: TaskSpec) -> ObjectRef:
    runtime = _current()
    if runtime.node is not None:
        runtime.node.check_feasible(spec)
    ref = submitted_ref(spec.task_id)  # held by the submission itself, so the result cannot be freed early
    runtime.link.post("submit_held", (spec,))
    return ref


@dataclass(frozen=True)
class RemoteOptions:
    """How a task or actor is run: `@remote(...)` and `.options(...)` set these."""

    num_cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)
    max_retries: int = 3
    retry_exceptions: bool = False
    name: str | None = None
    max_restarts: int = 0
    max_task_retries: int = 0
    checkpoint_interval_s: float | None = None
    checkpoint_every: int | None = None
    checkpoint_uri: str | None = None  # default: checkpoints.default_uri()
    restore_from: str | None = None  # an actor starts with the state of this checkpoint (from checkpoint_uri)


_OPTION_NAMES = set(RemoteOptions.__dataclass_fields__)


def _options(**kwargs: Any) -> RemoteOptions:
    unknown = set(kwargs) - _OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown remote option(s) {sorted(unknown)}; known: {sorted(_OPTION_NAMES)}")
    return RemoteOptions(**kwargs)


class RemoteFunction:
    """A function that runs as a task: `f.remote(*args)` returns an `ObjectRef`."""

    def __init__(self, function: Any, options: RemoteOptions):
        self._function = function
        self._options = options
        self._code: Code | None = None
        self._submitter: tuple[RuntimeBackend, Any] | None = None  # built once per external backend
        self.__name__ = getattr(function, "__name__", "task")
        self.__doc__ = getattr(function, "__doc__", None)

    def options(self, **kwargs: Any) -> "RemoteFunction":
        return RemoteFunction(self._function, replace(self._options, **kwargs))

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef:
        if _external is not None:
            if self._submitter is None or self._submitter[0] is not _external:
                self._submitter = (_external, _external.remote_function(self._function, self._options))
            return self._submitter[1](*args, **kwargs)
        name = f"{self.__name__}()"
        if self._code is None:
            self._code = _pickle_code(self._function, f"the function {self.__name__}")
        blob, deps, contained = _pack_call(name, args, kwargs)
        options = self._options
        spec = TaskSpec(new_id(), TASK, name, _register(self._code), blob, deps, contained,
                        num_cpus=options.num_cpus, resources=dict(options.resources),
                        max_retries=options.max_retries, retry_exceptions=options.retry_exceptions)
        return _submit(spec)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"remote function {self.__name__} is called with {self.__name__}.remote(...)")


def public_methods(cls: type) -> tuple[str, ...]:
    return tuple(name for name, member in inspect.getmembers(cls, callable) if not name.startswith("_"))


class ActorClass:
    """A class whose instances live in their own worker process: `Cls.remote(*args)` returns a handle."""

    def __init__(self, cls: type, options: RemoteOptions):
        self._cls = cls
        self._options = options
        self._code: Code | None = None
        self._creator: tuple[RuntimeBackend, Any] | None = None  # built once per external backend
        self.__name__ = cls.__name__

    def options(self, **kwargs: Any) -> "ActorClass":
        return ActorClass(self._cls, replace(self._options, **kwargs))

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        if _external is not None:
            if self._creator is None or self._creator[0] is not _external:
                self._creator = (_external, _external.actor_class(self._cls, self._options))
            return self._creator[1](*args, **kwargs)
        if self._code is None:
            self._code = _pickle_code(self._cls, f"the class {self.__name__}")
        blob, deps, contained = _pack_call(f"{self.__name__}()", args, kwargs)
        options = self._options
        actor_id = new_id()
        methods = public_methods(self._cls)
        spec = TaskSpec(new_id(), ACTOR_CREATE, self.__name__, _register(self._code), blob, deps, contained,
                        actor_id=actor_id, actor_name=options.name, methods=methods,
                        num_cpus=0.0, resources=dict(options.resources), max_retries=0,
                        max_restarts=options.max_restarts, max_task_retries=options.max_task_retries,
                        checkpoint_uri=options.checkpoint_uri or default_uri(),
                        checkpoint_every=options.checkpoint_every,
                        checkpoint_interval_s=options.checkpoint_interval_s,
                        restore_from=options.restore_from)
        _submit(spec)
        return ActorHandle(actor_id, self.__name__, methods, options.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self.__name__} is instantiated with {self.__name__}.remote(...)")


class ActorMethod:
    def __init__(self, handle: "ActorHandle", method: str):
        self._handle = handle
        self._method = method
        self._name = f"{handle.class_name}.{method.strip('_')}()"

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef:
        name = self._name
        blob, deps, contained = _pack_call(name, args, kwargs)
        spec = TaskSpec(new_id(), ACTOR_CALL, name, None, blob, deps, contained,
                        actor_id=self._handle.actor_id, method=self._method, num_cpus=0.0, max_retries=0)
        return _submit(spec)


class ActorHandle:
    """A reference to a live actor; picklable, so it can be passed to tasks and other actors."""

    def __init__(self, actor_id: str, class_name: str, methods: tuple[str, ...], name: str | None = None):
        self.actor_id = actor_id
        self.class_name = class_name
        self.methods = tuple(methods)
        self.name = name

    def __getattr__(self, method: str) -> ActorMethod:
        """The remote method, made once per handle (kept on it, so later lookups do not come here)."""
        if method.startswith("_") or method not in self.methods:
            raise AttributeError(f"actor {self.class_name} has no remote method {method!r}")
        bound = self.__dict__[method] = ActorMethod(self, method)
        return bound

    def __reduce__(self):
        return (ActorHandle, (self.actor_id, self.class_name, self.methods, self.name))

    def __repr__(self) -> str:
        return f"ActorHandle({self.class_name}, {self.name or self.actor_id[:12]})"


def remote(*args: Any, **kwargs: Any) -> Any:
    """`@remote` or `@remote(num_cpus=..., resources=..., max_retries=..., max_restarts=...)`."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], RemoteOptions())
    options = _options(**kwargs)
    return lambda target: _make_remote(target, options)


def _make_remote(target: Any, options: RemoteOptions) -> Any:
    if inspect.isclass(target):
        return ActorClass(target, options)
    return RemoteFunction(target, options)


def get(refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """The values of `refs` (one ref or a list), waiting up to `timeout` seconds."""
    if _external is not None:
        return _external.get(refs, timeout)
    single = isinstance(refs, ObjectRef)
    ref_list = [refs] if single else list(refs)
    for ref in ref_list:
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"get() takes ObjectRefs, got {type(ref).__name__}")
    if not ref_list:
        return []
    blobs = _current().link.call("get", [r.id for r in ref_list], timeout)
    values = []
    for blob in blobs:
        if isinstance(blob, BaseException):
            raise blob
        values.append(unpack(blob))
    return values[0] if single else values


def put(value: Any) -> ObjectRef:
    """Store `value` in the object store; the ref can be passed to many tasks without re-sending it."""
    if _external is not None:
        return _external.put(value)
    link = _current().link
    blob = pack(value, what="the value given to put()", threshold=getattr(link, "pack_threshold", SHARED_THRESHOLD))
    ref = ObjectRef(new_id())
    link.post("put", (ref.id, blob))
    return ref


def wait(refs: Sequence[ObjectRef], *, num_returns: int = 1,
         timeout: float | None = None) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split `refs` into (ready, not ready) once `num_returns` are ready or `timeout` passes."""
    ref_list = list(refs)
    if num_returns > len(ref_list):
        raise ValueError(f"num_returns={num_returns} is more than the {len(ref_list)} refs given")
    if _external is not None:
        return _external.wait(ref_list, num_returns, timeout)
    ready_ids = set(_current().link.call("wait", [r.id for r in ref_list], num_returns, timeout))
    ready = [r for r in ref_list if r.id in ready_ids][:max(num_returns, 0) or None]
    chosen = {r.id for r in ready}
    return ready, [r for r in ref_list if r.id not in chosen]


def checkpoint(handle: ActorHandle, *, timeout: float | None = None) -> str:
    """Checkpoint the actor now, after the calls already sent to it; returns once the checkpoint is durable."""
    if _external is not None:
        return _external.checkpoint(handle, timeout)
    return get(ActorMethod(handle, CHECKPOINT_METHOD).remote(), timeout=timeout)


def actors() -> list[dict]:
    """Every actor the cluster knows: state, node, restarts, latest checkpoint and its age."""
    if _external is not None:
        return _external.actors()
    return _current().link.call("actors")


def kill(handle: ActorHandle) -> None:
    """Stop the actor now; calls still queued fail with ActorDiedError."""
    if _external is not None:
        return _external.kill(handle)
    _current().link.call("kill", handle.actor_id)


def cancel(ref: ObjectRef) -> bool:
    """Cancel the task that makes `ref`: `get` then raises TaskCancelledError. False if already done."""
    if _external is not None:
        return _external.cancel(ref)
    return bool(_current().link.call("cancel", ref.id))


def get_actor(name: str) -> ActorHandle:
    """The handle of the live actor created with `.options(name=name)`."""
    if _external is not None:
        return _external.get_actor(name)
    actor_id, class_name, methods, actor_name = _current().link.call("get_actor", name)
    return ActorHandle(actor_id, class_name, methods, actor_name)


def kv_put(key: str, value: bytes, *, overwrite: bool = True, ttl_s: float | None = None) -> bool:
    """Store `value` under `key` in the cluster's key-value table (the GCS); False if not stored.

    With `overwrite=False` the put is an atomic claim: exactly one of several
    callers racing for an absent key gets True. `ttl_s` lets the key expire.
    Values are sealed with the cluster key like every GCS record: a value written
    to Redis without the token reads as absent. In local mode the table lives in
    this process and ends with it.
    """
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"kv_put stores bytes, got {type(value).__name__}")
    if _external is not None:
        return _external.kv_put(key, bytes(value), overwrite, ttl_s)
    return bool(_current().link.call("kv", "put", key, bytes(value), overwrite, ttl_s))


def kv_get(key: str) -> bytes | None:
    """The value stored under `key`, or None."""
    if _external is not None:
        return _external.kv_get(key)
    return _current().link.call("kv", "get", key)


def kv_delete(key: str) -> bool:
    """Remove `key`; True if it was there."""
    if _external is not None:
        return _external.kv_delete(key)
    return bool(_current().link.call("kv", "delete", key))


def kv_keys(prefix: str = "") -> list[str]:
    """The keys that start with `prefix`, sorted."""
    if _external is not None:
        return _external.kv_keys(prefix)
    return list(_current().link.call("kv", "keys", prefix))


def current_node_id() -> str | None:
    """The id of the node running this code (None in a driver)."""
    if _external is not None:
        return _external.current_node_id()
    return _current().info.get("node_id")


def nodes() -> list[dict]:
    """Every node of the cluster: id, liveness, resources, load."""
    if _external is not None:
        return _external.nodes()
    return _current().link.call("nodes")


def object_store_stats() -> dict:
    """Counts of the objects and functions the node holds (for operators and memory tests)."""
    if _external is not None:
        return _external.object_store_stats()
    return _current().link.call("object_count")

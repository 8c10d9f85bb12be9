"""`RayBackend`: the public runtime API mapped onto Ray (see `runtime/backend.py`).

| ringwatch                         | Ray                                                        |
| --------------------------------- | ---------------------------------------------------------- |
| `@remote` function, `.remote()`   | a Ray task (num_cpus, resources, max_retries, retry_exceptions) |
| `@remote` class, `.remote()`      | a Ray actor hosting the instance (`ActorHost`), 0 CPUs, SPREAD |
| `.options(name=...)`              | a detached named actor in the namespace `ringwatch-<namespace>` |
| `max_restarts`                    | Ray's, plus a restore from the latest ringwatch checkpoint  |
| `max_task_retries`                | calls wait through a restart; the host refuses re-sent ones beyond it |
| `get`, `put`, `wait`, `cancel`    | `ray.get`, `ray.put`, `ray.wait`, `ray.cancel`             |
| `kill`, `get_actor`, `nodes`      | `ray.kill(no_restart=True)`, `ray.get_actor`, `ray.nodes`  |
"""

from __future__ import annotations

import contextlib
import logging
import signal
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

try:
    import ray
    from ray.experimental import internal_kv
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("backend='ray' needs Ray: pip install 'ringwatch[ray]'") from exc

from ..api import RemoteOptions, public_methods, uninstalled_module
from ..checkpoints import default_uri
from ..errors import ActorDiedError
from ..protocol import new_id
from .errors import translated
from .hosting import RayActorRecords, ActorSpec, RayActorHandle, host_class, task_body

logger = logging.getLogger(__name__)

NAMESPACE_PREFIX = "ringwatch-"
IDENTITY_TIMEOUT_S = 60.0
_KV_PREFIX = "ringwatch:kv:"  # rt.kv_* keys, apart from the actor records
_KV_EXPIRY = struct.Struct("<d")  # each value starts with its expiry (epoch seconds; 0 = never)


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Keep this process's SIGTERM/SIGINT handlers: Ray's driver installs a crash handler over them, and
    `ringwatch run` stops after a final checkpoint on SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


class RayBackend:
    """The runtime API of one process (driver or Ray worker) on Ray."""

    name = "ray"

    def __init__(self, namespace: str, *, owns_ray: bool, in_worker: bool = False):
        self.namespace = namespace
        self._owns_ray = owns_ray
        self._in_worker = in_worker
        self._created: weakref.WeakValueDictionary[str, RayActorHandle] = weakref.WeakValueDictionary()

    @classmethod
    def connect(cls, address: str | None, *, namespace: str = "default", num_cpus: int | None = None,
                resources: dict[str, float] | None = None) -> "RayBackend":
        """Join the Ray cluster at `address` (`auto`, `ray://host:10001`, host:port), or start Ray locally.

        A process that already called `ray.init` keeps its Ray connection, which `shutdown` then leaves open.
        """
        ray_namespace = NAMESPACE_PREFIX + namespace
        if ray.is_initialized():
            current = ray.get_runtime_context().namespace
            if current != ray_namespace:
                raise ValueError(f"namespace: Ray is already initialized in namespace {current!r}, not "
                                 f"{ray_namespace!r}; call ray.init(namespace={ray_namespace!r}) or ray.shutdown()")
            return cls(ray_namespace, owns_ray=False)
        options: dict[str, Any] = {"address": address, "namespace": ray_namespace, "logging_level": logging.WARNING,
                                   "log_to_driver": True}
        if address is None:
            options.update(include_dashboard=False, num_cpus=num_cpus, resources=resources)
        elif num_cpus is not None or resources:
            raise ValueError("num_workers/resources: they size a Ray cluster started here; a cluster joined at "
                             f"{address!r} has its own")
        with _signal_handlers_kept(), translated():
            ray.init(**options)
        return cls(ray_namespace, owns_ray=True)

    # ---- tasks and actors --------------------------------------------------------------------

    def _ship(self, target: Any) -> None:
        """Code from a driver's scripts and tests travels by value: Ray's workers could not import it."""
        module = uninstalled_module(target)
        if module is not None and not self._in_worker:
            ray.cloudpickle.register_pickle_by_value(module)

    def remote_function(self, function: Callable, options: RemoteOptions) -> Callable[..., Any]:
        self._ship(function)
        task = ray.remote(task_body(function)).options(
            num_cpus=options.num_cpus, resources=dict(options.resources) or None,
            max_retries=options.max_retries, retry_exceptions=options.retry_exceptions)

        def submit(*args: Any, **kwargs: Any) -> ray.ObjectRef:
            with translated():
                return task.remote(*args, **kwargs)

        return submit

    def actor_class(self, cls: type, options: RemoteOptions) -> Callable[..., RayActorHandle]:
        self._ship(cls)
        host = ray.remote(host_class(cls))
        methods = public_methods(cls)
        checkpoint_uri = options.checkpoint_uri or default_uri()
        ray_options: dict[str, Any] = {
            "num_cpus": 0, "resources": dict(options.resources) or None, "max_restarts": options.max_restarts,
            # Ray holds calls through a restart only when it may re-send them; the host applies ours (hosting.py).
            "max_task_retries": -1 if options.max_restarts else options.max_task_retries,
            "scheduling_strategy": "SPREAD"}
        if options.name:  # shared by name, so it outlives the process that made it (as on ringwatch's runtime)
            ray_options.update(name=options.name, namespace=self.namespace, lifetime="detached")

        def create(*args: Any, **kwargs: Any) -> RayActorHandle:
            spec = ActorSpec(new_id(), cls.__name__, methods, options.name, checkpoint_uri,
                             options.checkpoint_every, options.checkpoint_interval_s, options.restore_from,
                             options.max_task_retries)
            with translated():
                actor = host.options(**ray_options).remote(cls, spec, args, kwargs)
            handle = RayActorHandle(actor, spec.actor_id, spec.class_name, methods, spec.name)
            self._created[spec.actor_id] = handle
            return handle

        return create

    # ---- objects -----------------------------------------------------------------------------

    def get(self, refs: Any, timeout: float | None) -> Any:
        single = isinstance(refs, ray.ObjectRef)
        ref_list = [refs] if single else list(refs)
        for ref in ref_list:
            if not isinstance(ref, ray.ObjectRef):
                raise TypeError(f"get() takes the ObjectRefs of the ray backend, got {type(ref).__name__}")
        if not ref_list:
            return []
        with translated():
            values = ray.get(ref_list, timeout=timeout)
        return values[0] if single else values

    def put(self, value: Any) -> ray.ObjectRef:
        with translated():
            return ray.put(value)

    def wait(self, refs: Sequence[Any], num_returns: int, timeout: float | None) -> tuple[list, list]:
        unique = list(dict.fromkeys(refs))
        if num_returns <= 0:  # what is ready now
            num_returns, timeout = len(unique), 0
        with translated():
            ready, _ = ray.wait(unique, num_returns=min(num_returns, len(unique)), timeout=timeout,
                               fetch_local=False)
        chosen = set(ready)
        return [r for r in refs if r in chosen], [r for r in refs if r not in chosen]

    def cancel(self, ref: Any) -> bool:
        with translated():
            done, _ = ray.wait([ref], timeout=0, fetch_local=False)
            if done:
                return False
            ray.cancel(ref)
        return True

    # ---- actors ------------------------------------------------------------------------------

    def kill(self, handle: RayActorHandle) -> None:
        with translated():
            ray.kill(handle.actor, no_restart=True)
            RayActorRecords.forget(self.namespace, handle.actor_id)

    def get_actor(self, name: str) -> RayActorHandle:
        try:
            actor = ray.get_actor(name, namespace=self.namespace)
            with translated():
                record = ray.get(actor.identity.remote(), timeout=IDENTITY_TIMEOUT_S)
        except (ValueError, ActorDiedError):
            raise ValueError(f"no live actor named {name!r} in the Ray namespace {self.namespace!r}") from None
        return RayActorHandle(actor, record["actor_id"], record["class_name"], tuple(record["methods"]),
                              record["name"])

    def checkpoint(self, handle: RayActorHandle, timeout: float | None) -> str:
        with translated():
            return ray.get(handle.actor.take_checkpoint.remote(), timeout=timeout)

    def actors(self) -> list[dict]:
        """The records of the actors in this namespace, as their hosts last wrote them (no actor is called)."""
        now = time.time()
        records = []
        with translated():
            keys = internal_kv._internal_kv_list(RayActorRecords.PREFIX, namespace=self.namespace)
        for key in keys:
            record = RayActorRecords.read(self.namespace, key.decode()[len(RayActorRecords.PREFIX):])
            if record is not None:
                at = record.pop("checkpointed_at", None)
                records.append({**record, "state": "alive", "reason": None,
                                "checkpoint_age_s": None if at is None else now - at})
        return records

    # ---- key-value store (Ray's GCS) -----------------------------------------------------------

    def kv_put(self, key: str, value: bytes, overwrite: bool, ttl_s: float | None) -> bool:
        """Store under `key`; False when `overwrite=False` and a live value is there (claims are atomic)."""
        entry = _KV_EXPIRY.pack(time.time() + ttl_s if ttl_s else 0.0) + value
        with translated():
            existed = internal_kv._internal_kv_put(_KV_PREFIX + key, entry, overwrite, namespace=self.namespace)
            if existed and not overwrite:
                if self.kv_get(key) is not None:
                    return False
                internal_kv._internal_kv_del(_KV_PREFIX + key, namespace=self.namespace)  # it had expired
                return not internal_kv._internal_kv_put(_KV_PREFIX + key, entry, False, namespace=self.namespace)
        return True

    def kv_get(self, key: str) -> bytes | None:
        with translated():
            entry = internal_kv._internal_kv_get(_KV_PREFIX + key, namespace=self.namespace)
        if entry is None:
            return None
        (expires,) = _KV_EXPIRY.unpack_from(entry)
        return None if expires and expires < time.time() else entry[_KV_EXPIRY.size:]

    def kv_delete(self, key: str) -> bool:
        with translated():
            return bool(internal_kv._internal_kv_del(_KV_PREFIX + key, namespace=self.namespace))

    def kv_keys(self, prefix: str) -> list[str]:
        with translated():
            keys = internal_kv._internal_kv_list(_KV_PREFIX + prefix, namespace=self.namespace)
        names = [k.decode()[len(_KV_PREFIX):] for k in keys]
        return sorted(name for name in names if self.kv_get(name) is not None)

    # ---- cluster -----------------------------------------------------------------------------

    def nodes(self) -> list[dict]:
        with translated():
            return [{"node_id": n["NodeID"], "alive": n["Alive"], "address": n["NodeManagerAddress"],
                     "resources": dict(n.get("Resources", {}))} for n in ray.nodes()]

    def current_node_id(self) -> str | None:
        return ray.get_runtime_context().get_node_id() if self._in_worker else None

    def object_store_stats(self) -> dict:
        with translated():
            total, available = ray.cluster_resources(), ray.available_resources()
        memory = total.get("object_store_memory", 0.0)
        return {"backend": "ray", "object_store_bytes": memory,
                "object_store_used_bytes": memory - available.get("object_store_memory", memory)}

    def shutdown(self) -> None:
        """Leave Ray (stop it, if this process started it); unnamed actors die with their driver: forget them."""
        if not ray.is_initialized():
            return
        if not self._in_worker:
            for handle in list(self._created.values()):
                if handle.name is None:
                    RayActorRecords.forget(self.namespace, handle.actor_id)
        if self._owns_ray:
            ray.shutdown()

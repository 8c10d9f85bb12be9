"""ringwatch tasks and actors as Ray runs them, and the handles a caller holds.

Inside a Ray worker, a ringwatch task or actor first points that process's
`ringwatch.runtime` at Ray (`attach`), so the runtime calls it makes (a search
task calling shard actors) go to Ray too. Errors leave as ringwatch's
`TaskError`, named like ringwatch names them (`f()`, `Cls.method()`).

An actor is hosted by an `ActorHost`: the host constructs it, gives it the
latest checkpoint when Ray restarts it (`max_restarts`), and checkpoints it
after calls as `checkpoint_every` / `checkpoint_interval_s` ask, before the
result of the call a checkpoint covers goes back. The whole checkpoint (a
`DeferredState` built too) runs on the actor's thread here: a Ray actor of
this kind answers a call by returning from it, so the writer thread of
ringwatch's workers (`runtime/worker.py`) has no counterpart on Ray.

Calls keep ringwatch's semantics through a restart. Ray fails every call made
while an actor restarts unless it may re-send calls (at most once), so hosts run
with Ray's `max_task_retries=-1`: calls made meanwhile wait for the restarted
actor, as on ringwatch's runtime, and a call the dead worker held comes again,
which the host refuses with `ActorDiedError` (its effect on the state is
unknown) beyond the actor's own `max_task_retries`, without running it.

The latest checkpoint id lives in Ray's GCS (`RayActorRecords`), as it lives in
ringwatch's sealed GCS on ringwatch's runtime, never only in the store: a
restart loads only an id a cluster member wrote, and the store's bytes must
match the SHA-256 in that id. Its Ray class carries the hosted class's name,
so Ray's dashboard and `ray list actors` show `GraphShard`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.experimental import internal_kv

from .. import api
from ..checkpoints import ActorCheckpoints, open_store
from ..errors import ActorDiedError, TaskError

logger = logging.getLogger(__name__)


class RayActorRecords:
    """Each hosted actor's record — restarts, latest checkpoint id — in the key-value store of Ray's GCS.

    It plays the part of the actor table in ringwatch's GCS: `actors()` reads it
    without calling the actors, and a restarted actor loads only the checkpoint id
    recorded here. Ray has no public API for its GCS key-value store;
    `ray.experimental.internal_kv` is what Ray's own libraries use, and the `ray`
    extra pins the versions it was tested with.
    """

    PREFIX = "ringwatch:actor:"

    @classmethod
    def write(cls, namespace: str, record: dict) -> None:
        internal_kv._internal_kv_put(cls.PREFIX + record["actor_id"], json.dumps(record), overwrite=True,
                                     namespace=namespace)

    @classmethod
    def read(cls, namespace: str, actor_id: str) -> dict | None:
        value = internal_kv._internal_kv_get(cls.PREFIX + actor_id, namespace=namespace)
        return None if value is None else json.loads(value)

    @classmethod
    def forget(cls, namespace: str, actor_id: str) -> None:
        internal_kv._internal_kv_del(cls.PREFIX + actor_id, namespace=namespace)


def attach() -> None:
    """Make `ringwatch.runtime` in this Ray worker use Ray (once per process)."""
    if not api.is_initialized():
        from .backend import RayBackend

        api.attach_external(RayBackend(ray.get_runtime_context().namespace, owns_ray=False, in_worker=True))


def task_body(function: Callable) -> Callable:
    """`function` as a Ray task runs it: with the runtime attached, errors as ringwatch's."""
    name = f"{getattr(function, '__name__', 'task')}()"

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        attach()
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - everything a task raises goes back to the caller
            raise TaskError.from_exception(exc, name) from None

    return run


@dataclass(frozen=True)
class ActorSpec:
    """Who a hosted actor is and how it is checkpointed; the same on every restart."""

    actor_id: str
    class_name: str
    methods: tuple[str, ...]
    name: str | None
    checkpoint_uri: str | None
    checkpoint_every: int | None
    checkpoint_interval_s: float | None
    restore_from: str | None = None  # a new actor starts with this checkpoint's state
    max_task_retries: int = 0  # deliveries of a call beyond the first that may run (see the module docstring)


class ActorHost:
    """The Ray actor that hosts one ringwatch actor (see the module docstring)."""

    def __init__(self, cls: type, spec: ActorSpec, args: tuple, kwargs: dict):
        attach()
        self._spec = spec
        self._namespace = ray.get_runtime_context().namespace
        self._instance = cls(*args, **kwargs)
        self._checkpoints: ActorCheckpoints | None = None
        if spec.checkpoint_uri:
            self._checkpoints = ActorCheckpoints(open_store(spec.checkpoint_uri), spec.actor_id,
                                                 spec.checkpoint_every, spec.checkpoint_interval_s)
        previous = RayActorRecords.read(self._namespace, spec.actor_id) if _reconstructed() else None
        restarts = previous["restarts"] + 1 if previous else 0
        checkpoint_id = (previous or {}).get("checkpoint") or spec.restore_from
        if checkpoint_id and self._checkpoints is not None:
            self._checkpoints.restore(self._instance, checkpoint_id)
        if restarts:
            logger.warning("actor %s restarted (restart %d) from checkpoint %s", spec.class_name, restarts,
                           checkpoint_id)
        context = ray.get_runtime_context()
        self._record = {"actor_id": spec.actor_id, "name": spec.name, "class_name": spec.class_name,
                        "node": context.get_node_id(), "pid": os.getpid(), "restarts": restarts,
                        "checkpoint": checkpoint_id, "checkpointed_at": (previous or {}).get("checkpointed_at"),
                        "methods": list(spec.methods)}
        RayActorRecords.write(self._namespace, self._record)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._refuse_redelivery(method)
        try:
            return getattr(self._instance, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - everything a method raises goes back to the caller
            raise TaskError.from_exception(exc, f"{self._spec.class_name}.{method}()") from None
        finally:
            if self._checkpoints is not None and self._checkpoints.call_done():
                try:
                    self._take()
                except Exception:  # the actor keeps serving; a restart resumes from an older checkpoint
                    logger.exception("checkpoint of actor %s failed", self._spec.class_name)

    def take_checkpoint(self) -> str:
        """`ringwatch.runtime.checkpoint(handle)`: checkpoint now, after the calls sent before this one."""
        if self._checkpoints is None:
            raise TaskError.from_exception(ValueError("this actor has no checkpoint store"),
                                           f"{self._spec.class_name}.checkpoint()")
        self._refuse_redelivery("checkpoint")
        return self._take()

    def _refuse_redelivery(self, method: str) -> None:
        """A call the dead worker held, re-sent by Ray, runs only if `max_task_retries` allows it."""
        if _delivery() > self._spec.max_task_retries:
            raise ActorDiedError(f"{self._spec.class_name}.{method}(): the actor's worker died holding this call; "
                                 "the actor restarted from its latest checkpoint")

    def _take(self) -> str:
        checkpoint_id = self._checkpoints.take(self._instance)
        self._record.update(checkpoint=checkpoint_id, checkpointed_at=time.time())
        RayActorRecords.write(self._namespace, self._record)
        return checkpoint_id

    def identity(self) -> dict:
        """This actor's record (for `get_actor`)."""
        return self._record


def _reconstructed() -> bool:
    """Whether Ray restarted this actor (its property warns about an API it uses inside Ray itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return ray.get_runtime_context().was_current_actor_reconstructed


def _delivery() -> int:
    """How many times Ray sent the running call before (0: first delivery).

    Ray has no public API for it; its core worker's is what its task events use,
    and the `ray` extra pins the versions it was tested with.
    """
    return ray._private.worker.global_worker.core_worker.get_current_task_attempt_number()


def host_class(cls: type) -> type:
    """An `ActorHost` subclass named after `cls`, so Ray shows the hosted class's name."""
    return type(cls.__name__, (ActorHost,), {"__qualname__": cls.__qualname__, "__doc__": cls.__doc__})


class RayActorMethod:
    __slots__ = ("_call", "_method")

    def __init__(self, call: Any, method: str):
        self._call = call
        self._method = method

    def remote(self, *args: Any, **kwargs: Any) -> ray.ObjectRef:
        return self._call.remote(self._method, *args, **kwargs)


class RayActorHandle:
    """A ringwatch actor on Ray: `handle.method.remote(...)` returns a Ray ObjectRef; picklable.

    `actor` is the Ray handle of its `ActorHost`, for code that wants Ray's own API.
    """

    def __init__(self, actor: Any, actor_id: str, class_name: str, methods: tuple[str, ...],
                 name: str | None = None):
        self.actor = actor
        self.actor_id = actor_id
        self.class_name = class_name
        self.methods = tuple(methods)
        self.name = name
        self._call = actor.call

    def __getattr__(self, method: str) -> RayActorMethod:
        if method.startswith("_") or method not in self.methods:
            raise AttributeError(f"actor {self.class_name} has no remote method {method!r}")
        return RayActorMethod(self._call, method)

    def __reduce__(self):
        return (RayActorHandle, (self.actor, self.actor_id, self.class_name, self.methods, self.name))

    def __repr__(self) -> str:
        return f"RayActorHandle({self.class_name}, {self.name or self.actor_id[:12]})"

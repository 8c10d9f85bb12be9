"""ringwatch tasks and actors as Ray runs them, and the handles a caller holds.

Inside a Ray worker, a ringwatch task or actor first points that process's
`ringwatch.runtime` at Ray (`attach`), so the runtime calls it makes (a search
task calling shard actors) go to Ray too. Errors leave as ringwatch's
`TaskError`, named like ringwatch names them (`f()`, `Cls.method()`).

An actor is hosted by an `ActorHost`: the host constructs it, gives it the
latest checkpoint when Ray restarts it (`max_restarts`), and checkpoints it
after calls as `checkpoint_every` / `checkpoint_interval_s` ask, before the
result of the call a checkpoint covers goes back. The latest checkpoint id
lives in Ray's GCS (`CheckpointIndex`), as it lives in ringwatch's sealed GCS on
ringwatch's runtime, never only in the store: a restart loads only an id a
cluster member wrote, and the store's bytes must match the SHA-256 in that id. Its Ray class carries the
hosted class's name, so Ray's dashboard and `ray list actors` show `GraphShard`.
"""

from __future__ import annotations

import functools
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
from ..errors import TaskError

logger = logging.getLogger(__name__)


class CheckpointIndex:
    """The latest checkpoint id of each hosted actor, in the key-value store of Ray's GCS.

    Ray has no public API for it; `ray.experimental.internal_kv` is what Ray's own
    libraries use, and the `ray` extra pins the versions it was tested with.
    """

    @staticmethod
    def _key(actor_id: str) -> str:
        return f"ringwatch:checkpoint:{actor_id}"

    @classmethod
    def record(cls, namespace: str, actor_id: str, checkpoint_id: str) -> None:
        internal_kv._internal_kv_put(cls._key(actor_id), checkpoint_id, overwrite=True, namespace=namespace)

    @classmethod
    def latest(cls, namespace: str, actor_id: str) -> str | None:
        value = internal_kv._internal_kv_get(cls._key(actor_id), namespace=namespace)
        return None if value is None else value.decode()

    @classmethod
    def forget(cls, namespace: str, actor_id: str) -> None:
        internal_kv._internal_kv_del(cls._key(actor_id), namespace=namespace)


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


class ActorHost:
    """The Ray actor that hosts one ringwatch actor (see the module docstring)."""

    def __init__(self, cls: type, spec: ActorSpec, args: tuple, kwargs: dict):
        attach()
        self._spec = spec
        self._namespace = ray.get_runtime_context().namespace
        self._instance = cls(*args, **kwargs)
        self._checkpoints: ActorCheckpoints | None = None
        self._latest: str | None = None
        self._latest_at: float | None = None
        if spec.checkpoint_uri:
            self._checkpoints = ActorCheckpoints(open_store(spec.checkpoint_uri), spec.actor_id,
                                                 spec.checkpoint_every, spec.checkpoint_interval_s)
            if _reconstructed():
                self._restore_latest()

    def _restore_latest(self) -> None:
        latest = CheckpointIndex.latest(self._namespace, self._spec.actor_id)
        if latest is None:
            logger.warning("actor %s restarted with no checkpoint: it starts from its constructor",
                           self._spec.class_name)
            return
        self._checkpoints.restore(self._instance, latest)
        self._latest, self._latest_at = latest, time.time()
        logger.warning("actor %s restarted from checkpoint %s", self._spec.class_name, latest)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
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
        return self._take()

    def _take(self) -> str:
        checkpoint_id = self._checkpoints.take(self._instance)
        CheckpointIndex.record(self._namespace, self._spec.actor_id, checkpoint_id)
        self._latest, self._latest_at = checkpoint_id, time.time()
        return checkpoint_id

    def describe(self) -> dict:
        """This actor's record for `ringwatch.runtime.actors()`."""
        context = ray.get_runtime_context()
        return {"actor_id": self._spec.actor_id, "name": self._spec.name, "class_name": self._spec.class_name,
                "node": context.get_node_id(), "pid": os.getpid(), "state": "alive", "reason": None,
                "restarted": _reconstructed(), "checkpoint": self._latest,
                "checkpoint_age_s": None if self._latest_at is None else time.time() - self._latest_at,
                "methods": self._spec.methods}


def _reconstructed() -> bool:
    """Whether Ray restarted this actor (its property warns about an API it uses inside Ray itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return ray.get_runtime_context().was_current_actor_reconstructed


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

"""Ray's exceptions as ringwatch's (`runtime/errors.py`), so callers handle one set of types."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import ray.exceptions as rex

from ..errors import (
    ActorDiedError,
    GetTimeoutError,
    ObjectLostError,
    SerializationError,
    TaskCancelledError,
    TaskError,
)


def translate(exc: BaseException) -> BaseException:
    """The ringwatch error that stands for `exc` (`exc` itself when it is not Ray's)."""
    if isinstance(exc, rex.RayTaskError):
        cause = exc.cause
        if isinstance(cause, (TaskError, ActorDiedError)):  # raised by ringwatch's task or actor host
            return cause
        if isinstance(cause, rex.RayError):
            return translate(cause)
        if cause is not None:
            return TaskError(type(cause).__name__, str(cause), str(exc), "")
    if isinstance(exc, rex.TaskCancelledError):
        return TaskCancelledError()
    if isinstance(exc, rex.GetTimeoutError):
        return GetTimeoutError(str(exc))
    if isinstance(exc, rex.RayActorError):
        return ActorDiedError(str(exc))
    if isinstance(exc, (rex.ObjectLostError, rex.ObjectFetchTimedOutError)):
        return ObjectLostError(str(exc))
    if isinstance(exc, rex.WorkerCrashedError):
        return TaskError("WorkerDiedError", str(exc), "", "")
    if isinstance(exc, rex.RayError):
        return TaskError(type(exc).__name__, str(exc), "", "")
    if isinstance(exc, TypeError) and "Could not serialize" in str(exc):
        return SerializationError(str(exc).split("\n", 1)[0])
    return exc


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Re-raise Ray's errors raised inside the block as ringwatch's."""
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - translate() returns anything that is not Ray's unchanged
        mapped = translate(exc)
        if mapped is exc:
            raise
        raise mapped from None

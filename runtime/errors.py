"""The runtime's exceptions, and the root of every ringwatch error: each says what happened and what the caller can do.

`RingwatchError` lives here because the runtime is the package every other one
builds on; the graph, stream and connector errors derive from it too (and from
the built-in their callers already catch, such as `ValueError`).
"""

from __future__ import annotations

import traceback


class RingwatchError(Exception):
    """Root of every error ringwatch raises: `except RingwatchError` catches all of them and nothing else."""


class RuntimeErrorBase(RingwatchError):
    """Base of every error the runtime raises."""


class TaskError(RuntimeErrorBase):
    """A remote task or actor method raised; `get` re-raises it here with the remote traceback."""

    def __init__(self, type_name: str, message: str, traceback_text: str, task: str = ""):
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.task = task
        super().__init__(f"{task + ' raised ' if task else ''}{type_name}: {message}\n\nRemote traceback:\n{traceback_text}")

    def __reduce__(self):
        return (type(self), (self.type_name, self.message, self.traceback_text, self.task))

    @classmethod
    def from_exception(cls, exc: BaseException, task: str) -> "TaskError":
        """What the caller of `task` gets when it raised `exc` (a TaskError from a nested call passes as is)."""
        if isinstance(exc, TaskError):
            return exc
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return TaskError(type(exc).__name__, str(exc), text, task)


class TaskCancelledError(TaskError):
    """The task was cancelled with `cancel()` before it finished."""

    def __init__(self, task: str = "", *_: object):
        super().__init__("TaskCancelledError", "the task was cancelled", "", task)

    def __reduce__(self):
        return (type(self), (self.task,))


class GetTimeoutError(RuntimeErrorBase, TimeoutError):
    """`get` or `wait` ran out of time before the objects were ready."""


class ActorDiedError(RuntimeErrorBase):
    """The actor is gone (killed, its process died, or it could not be created)."""


class ObjectLostError(RuntimeErrorBase):
    """The object's only copy is gone and it cannot be rebuilt."""


class AuthError(RuntimeErrorBase):
    """A node refused the call: the cluster token is missing or wrong."""


class ForgedRecordError(AuthError):
    """A GCS value is unsealed, or sealed with another key or for another place: it is not used."""


class CallRefusedError(AuthError):
    """A call's signature is missing, wrong, stale or replayed; the message says which."""


class SerializationError(RuntimeErrorBase):
    """An argument or a return value could not be pickled; the message names it."""


class ResourceUnavailableError(RuntimeErrorBase):
    """No node of the cluster has the resources the task or actor asks for."""


class NodesLateError(ResourceUnavailableError):
    """No live node could run the call, but some may soon: nodes whose heartbeats are late (the GCS was
    away, or they are dying), or the GCS is unreachable and no node is known yet.

    Placement waits for them to beat again or be declared dead (or for the GCS
    to come back); this is raised when that took too long.
    """


class NotInitializedError(RuntimeErrorBase):
    """The runtime is not started: call `ringwatch.runtime.init()` first."""


class CheckpointError(RuntimeErrorBase):
    """An actor checkpoint could not be written or read; the message names the store or checkpoint."""


class NodeStoppedError(RuntimeErrorBase):
    """The node shut down while a request to it was waiting."""


class NodeUnavailableError(RuntimeErrorBase, ConnectionError):
    """A node did not answer after the retries; the message names its address."""


class TokenMissingError(RuntimeErrorBase, ValueError):
    """A node or client was started without the cluster token."""


class TlsConfigError(RuntimeErrorBase, ValueError):
    """The TLS options are incomplete or a file cannot be read; the message names the option."""

"""Records exchanged between drivers, nodes and workers."""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import MISSING, dataclass, field, fields

from .object_store import Blob

TASK = "task"
ACTOR_CREATE = "actor_create"
ACTOR_CALL = "actor_call"
CHECKPOINT_METHOD = "__ringwatch_checkpoint__"  # the actor call behind rt.checkpoint(handle)


_ids = itertools.count()
_id_prefix = secrets.token_hex(8)  # per process: ids stay unique across the cluster's processes


def _new_prefix() -> None:  # a forked child counts from the same point: it needs a prefix of its own
    global _id_prefix
    _id_prefix = secrets.token_hex(8)


os.register_at_fork(after_in_child=_new_prefix)


def new_id() -> str:
    """A 32-hex-digit id unique in the cluster: this process's random prefix and a counter (no syscall)."""
    return f"{_id_prefix}{next(_ids):016x}"


@dataclass
class TaskSpec:
    """Everything needed to run one task, create an actor or call one of its methods.

    `task_id` is also the id of the object the call returns. `deps` are the
    objects passed as top-level arguments (resolved to values before the call);
    `contained` every object reference pickled anywhere in the arguments, kept
    alive until the call is done.
    """

    task_id: str
    kind: str
    name: str
    function_id: str | None
    args: Blob
    deps: tuple[str, ...] = ()
    contained: tuple[str, ...] = ()
    actor_id: str | None = None
    method: str | None = None
    actor_name: str | None = None
    methods: tuple[str, ...] = ()
    num_cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)
    max_retries: int = 3
    retry_exceptions: bool = False
    attempt: int = 0
    cancelled: bool = False
    forwarded_by: str | None = None  # address of the node that placed this call here
    dep_locations: dict[str, str] = field(default_factory=dict)  # dep id -> address of a node holding it
    code: bytes | None = None  # the function's code, sent along the first time a call goes to a node
    # Actor creation only: how the actor survives failures.
    max_restarts: int = 0
    max_task_retries: int = 0
    restarts: int = 0
    checkpoint_uri: str | None = None
    checkpoint_every: int | None = None
    checkpoint_interval_s: float | None = None
    restore_from: str | None = None  # the checkpoint a restarted actor resumes from

    def __getstate__(self) -> dict:
        """Only the fields that differ from their defaults travel: a plain call sets a handful of its 28.

        Batches of calls go to workers by the thousand a second: unpickling every
        default cost a worker three times what the call's own fields do.
        """
        return {k: v for k, v in self.__dict__.items() if k not in _SPEC_DEFAULTS or _SPEC_DEFAULTS[k] != v}

    def __setstate__(self, state: dict) -> None:
        values = self.__dict__
        values.update(_SPEC_DEFAULTS)
        for name, factory in _SPEC_FACTORIES.items():
            values[name] = factory()
        values.update(state)


_SPEC_DEFAULTS = {f.name: f.default for f in fields(TaskSpec) if f.default is not MISSING}
_SPEC_FACTORIES = {f.name: f.default_factory for f in fields(TaskSpec) if f.default_factory is not MISSING}


@dataclass
class TaskResult:
    """What a worker reports for a finished call: a value, or the error it raised."""

    task_id: str
    blob: Blob | None
    error: Exception | None = None
    contained: tuple[str, ...] = ()


@dataclass(frozen=True)
class RefMarker:
    """Stands in an argument list for a top-level `ObjectRef`, to be replaced by its value."""

    object_id: str

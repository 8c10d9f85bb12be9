"""The seam between the public runtime API and a runtime other than ringwatch's own.

`ringwatch.runtime.init(backend="ray")` (or `RINGWATCH_BACKEND=ray`) makes every
public call — `remote`, `get`, `put`, `wait`, `kill`, `cancel`, `get_actor`,
`checkpoint`, `nodes`, `actors` — go to a `RuntimeBackend`. Code written against
`ringwatch.runtime` (the graph shards, the ring searches, the engine) runs on it
unchanged. ringwatch's own runtime is the default and does not go through here.

On such a backend, refs and actor handles are the backend's own objects: pass
them to `get`, `wait`, `cancel`, `kill`, to tasks and to actor methods, as with
ringwatch's; `isinstance(x, ringwatch.runtime.ObjectRef)` is true only for
ringwatch's refs. Errors surface as ringwatch's types (`runtime/errors.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .api import RemoteOptions

BACKENDS = ("ringwatch", "ray")


class RuntimeBackend(Protocol):
    """What the public API needs from a runtime; one object per process, from `init` to `shutdown`."""

    name: str

    def remote_function(self, function: Callable, options: "RemoteOptions") -> Callable[..., Any]:
        """A submitter: `submitter(*args, **kwargs)` runs `function` as a task and returns its ref."""

    def actor_class(self, cls: type, options: "RemoteOptions") -> Callable[..., Any]:
        """A creator: `creator(*args, **kwargs)` starts an actor of `cls` and returns its handle."""

    def get(self, refs: Any, timeout: float | None) -> Any: ...
    def put(self, value: Any) -> Any: ...

    def wait(self, refs: Sequence[Any], num_returns: int, timeout: float | None) -> tuple[list, list]:
        """(ready, not ready), both in the order given."""

    def kill(self, handle: Any) -> None: ...
    def cancel(self, ref: Any) -> bool: ...
    def get_actor(self, name: str) -> Any: ...
    def checkpoint(self, handle: Any, timeout: float | None) -> str: ...
    def nodes(self) -> list[dict]: ...
    def actors(self) -> list[dict]: ...
    def current_node_id(self) -> str | None: ...
    def kv_put(self, key: str, value: bytes, overwrite: bool, ttl_s: float | None) -> bool: ...
    def kv_get(self, key: str) -> bytes | None: ...
    def kv_delete(self, key: str) -> bool: ...
    def kv_keys(self, prefix: str) -> list[str]: ...
    def object_store_stats(self) -> dict: ...
    def shutdown(self) -> None: ...


def backend_name(name: str | None, environ: dict[str, str]) -> str:
    """The backend to start: the `backend=` argument, else RINGWATCH_BACKEND, else ringwatch's own."""
    chosen = (name or environ.get("RINGWATCH_BACKEND") or "ringwatch").strip().lower()
    if chosen not in BACKENDS:
        source = "backend" if name else "RINGWATCH_BACKEND"
        raise ValueError(f"{source}={chosen!r}: the runtime backend must be one of {', '.join(BACKENDS)}")
    return chosen


def open_backend(name: str, address: str | None, *, namespace: str, num_workers: int | None,
                 resources: dict[str, float] | None) -> RuntimeBackend:
    """Connect to (or start) the runtime `name` other than ringwatch's own."""
    if name == "ray":
        from .ray_backend import RayBackend

        return RayBackend.connect(address, namespace=namespace, num_cpus=num_workers, resources=resources)
    raise ValueError(f"backend={name!r} is not an external runtime")

"""A node's object table: every object id the node knows, its value or where it is, and who keeps it.

An object is counted: each process that holds refs to it counts once (`hold`/
`release`), each pending call that uses it pins it, and each callback waiting
for it keeps it. One nobody holds, pins or waits for is freed, with its
shared-memory segment. A value can be here, or ready on another node
(`held_at`), to be fetched when something here needs it.

The table belongs to its node's dispatcher thread, like every part of a node;
it talks to other nodes only through `Transfers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import GetTimeoutError, ObjectLostError
from .object_store import SHARED_THRESHOLD, Blob, free, from_wire
from .protocol import ACTOR_CREATE, TaskSpec

Reply = Callable[[bool, Any], None]
After = Callable[[float, Callable[[], None]], None]  # run a callback on the dispatcher thread after a delay

REFETCH_S = 1.0  # an unreachable holder is asked again this often, until its death is declared


@dataclass(slots=True)
class ObjectEntry:
    """One object id: its value once ready, who keeps it, and the call that makes it.

    Slotted: one made per call, and without an attribute dict half as many objects for the driver's
    garbage collector to walk.
    """

    blob: Blob | None = None
    error: Exception | None = None
    ready: bool = False
    holders: int = 0
    pins: int = 0
    spec: TaskSpec | None = None  # the call that makes it, while it runs (an actor's creation: for good)
    contained: tuple[str, ...] = ()
    waiters: list[Callable[[], None]] = field(default_factory=list)
    remote: str | None = None  # address of the node that makes or holds it, when not this one
    held_at: str | None = None  # ready, but the value stays on that node until someone here needs it
    size: int = 0  # bytes of the value held at `held_at`
    copy_at: str | None = None  # a node keeping a copy for this one until this entry is freed
    held_for: str | None = None  # the node that forwarded the call making it, holding it until it has the value
    delivered: bool = False  # an actor call forwarded to `remote` has reached it
    fetching: bool = False


class Transfers(Protocol):
    """What the table needs from the cluster (absent on a one-node runtime)."""

    address: str

    def fetch(self, object_id: str, address: str) -> None: ...
    def send(self, address: str, method: str, *args: Any) -> None: ...
    def object_made(self, object_id: str, size: int) -> None: ...
    def object_freed(self, object_id: str, remote: str | None, size: int) -> None: ...


class ObjectTable:
    """The node's objects; every method runs on the node's dispatcher thread."""

    def __init__(self, transfers: Transfers | None, after: After):
        self._entries: dict[str, ObjectEntry] = {}
        self._transfers = transfers
        self._after = after

    # ---- looking -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, object_id: str) -> bool:
        return object_id in self._entries

    def find(self, object_id: str) -> ObjectEntry | None:
        return self._entries.get(object_id)

    def entry(self, object_id: str) -> ObjectEntry:
        """The entry of `object_id`, made empty if the table does not know it yet."""
        entry = self._entries.get(object_id)
        if entry is None:
            entry = self._entries[object_id] = ObjectEntry()
        return entry

    def items(self) -> Iterator[tuple[str, ObjectEntry]]:
        """A snapshot of every entry (callers may change the table while they walk it)."""
        return iter(list(self._entries.items()))

    def is_done(self, object_id: str) -> bool:
        """Ready, here or on the node that made it."""
        entry = self._entries.get(object_id)
        return entry is not None and entry.ready

    def is_here(self, object_id: str) -> bool:
        """Ready with its value on this node."""
        entry = self._entries.get(object_id)
        return entry is not None and entry.ready and entry.held_at is None

    def value_of(self, object_id: str) -> Blob | Exception:
        entry = self._entries.get(object_id)
        if entry is None or not entry.ready:
            return ObjectLostError(f"object {object_id} is not held by anyone any more")
        return entry.error if entry.error is not None else entry.blob

    def value_for_worker(self, object_id: str) -> Blob | Exception:
        """The value as a worker reads it: a large one still in this process's heap is laid into shared memory once."""
        entry = self._entries.get(object_id)
        if entry is not None and entry.blob is not None and not entry.blob.shared \
                and entry.blob.size > SHARED_THRESHOLD:
            entry.blob = from_wire(entry.blob)
        return self.value_of(object_id)

    def location_of(self, object_id: str) -> str:
        """Address of a node to fetch the value from: the one keeping it for this node, else this one.

        Not the node still making it: that node lets its copy go once it has sent it here.
        """
        entry = self._entries.get(object_id)
        if entry is not None and entry.ready and entry.held_at is not None:
            return entry.held_at
        return self._transfers.address

    def shared_bytes(self) -> int:
        return sum(e.blob.size for e in self._entries.values() if e.blob and e.blob.shared)

    # ---- counting ----------------------------------------------------------------------------

    def hold(self, object_id: str) -> None:
        self.entry(object_id).holders += 1

    def release(self, object_id: str) -> None:
        entry = self._entries.get(object_id)
        if entry is not None:
            entry.holders -= 1
            self._free_if_unused(object_id, entry)

    def hold_for(self, object_id: str, address: str) -> None:
        """Keep the object for the node at `address` (which forwarded the call that makes it)."""
        self.hold(object_id)
        self._entries[object_id].held_for = address

    def release_held(self, object_id: str) -> None:
        """The node the object was kept for has its value, or no longer wants it."""
        entry = self._entries.get(object_id)
        if entry is not None and entry.held_for is not None:
            entry.held_for = None
            self.release(object_id)

    def pin(self, object_id: str) -> None:
        self.entry(object_id).pins += 1

    def unpin(self, object_id: str) -> None:
        entry = self._entries.get(object_id)
        if entry is not None:
            entry.pins -= 1
            self._free_if_unused(object_id, entry)

    def _free_if_unused(self, object_id: str, entry: ObjectEntry) -> None:
        if entry.holders > 0 or entry.pins > 0 or not entry.ready or entry.waiters:
            return
        del self._entries[object_id]
        if entry.blob is not None:
            free(entry.blob)
        if self._transfers is not None:
            if entry.copy_at is not None:
                self._transfers.send(entry.copy_at, "release_held", object_id)
            self._transfers.object_freed(object_id, entry.remote, entry.blob.size if entry.blob else 0)
        for inner in entry.contained:
            self.unpin(inner)

    # ---- values arriving ---------------------------------------------------------------------

    def put(self, object_id: str, blob: Blob) -> None:
        entry = self.entry(object_id)
        entry.blob, entry.ready = blob, True  # laid into shared memory when a worker first needs it
        if self._transfers is not None:
            self._transfers.object_made(object_id, blob.size)

    def finish(self, object_id: str, blob: Blob | None, error: Exception | None,
               contained: tuple[str, ...] = ()) -> ObjectEntry | None:
        """Make the object ready with its value or error; None when it was ready already.

        The caller settles the finished call (reports it, unpins its inputs), then calls `settle`.
        """
        entry = self.entry(object_id)
        if entry.ready:
            return None
        entry.blob, entry.error, entry.ready = blob, error, True
        if self._transfers is not None and blob is not None and not entry.remote:
            self._transfers.object_made(object_id, blob.size)
        entry.contained = contained
        for inner in contained:
            self.pin(inner)
        return entry

    def settle(self, object_id: str, entry: ObjectEntry) -> None:
        """The call that made the object is done: forget it (an actor's creation is kept), wake waiters."""
        if entry.spec is not None and entry.spec.kind != ACTOR_CREATE:
            entry.spec = None
        self._arrived(object_id, entry)
        self._free_if_unused(object_id, entry)

    def arrived_from(self, object_id: str, blob: Blob | None, error: Exception | None) -> bool:
        """A value held on another node has been fetched here; False when the table was not waiting for it."""
        entry = self._entries.get(object_id)
        if entry is None or entry.held_at is None:
            return False
        entry.blob, entry.error, entry.held_at, entry.fetching = blob, error, None, False
        self._arrived(object_id, entry)
        self._free_if_unused(object_id, entry)
        return True

    def held_elsewhere(self, object_id: str, address: str, size: int) -> ObjectEntry | None:
        """A value made for this node is ready on `address` and stays there until needed here.

        None when nobody here wants it any more (the caller tells `address` to let it go).
        """
        entry = self._entries.get(object_id)
        if entry is None or entry.ready:
            return None
        entry.held_at = entry.copy_at = address
        entry.size = size
        return entry

    def _arrived(self, object_id: str, entry: ObjectEntry) -> None:
        waiters, entry.waiters = entry.waiters, []
        for waiter in waiters:
            waiter()

    def reset(self, object_id: str) -> ObjectEntry:
        """Forget the value (its only copy is lost): the object is to be made again."""
        entry = self.entry(object_id)
        entry.ready, entry.held_at, entry.fetching, entry.remote = False, None, False, None
        entry.blob, entry.error = None, None
        return entry

    # ---- waiting -----------------------------------------------------------------------------

    def on_done(self, object_id: str, callback: Callable[[], None]) -> None:
        """Call `callback` once the object is ready somewhere (now, if it is)."""
        if self.is_done(object_id):
            callback()
        else:
            self.entry(object_id).waiters.append(callback)

    def on_here(self, object_id: str, callback: Callable[[], None]) -> None:
        """Call `callback` once the object's value is on this node, fetching it when it is ready elsewhere."""
        if self.is_here(object_id):
            callback()
            return
        self.bring_here(object_id)
        self.entry(object_id).waiters.append(lambda: self.on_here(object_id, callback))

    def when_ready(self, object_ids: list[str], count: int, timeout: float | None, reply: Reply,
                   answer: Callable[[], Any], on_timeout: Callable[[], Exception] | None, *, here: bool) -> None:
        """Reply with `answer()` once `count` of the objects are ready (`here`: with their values on this node).

        At the timeout, reply with `on_timeout()` as an error, or with `answer()` when it is None.
        """
        is_ready = self.is_here if here else self.is_done
        if here:
            for object_id in object_ids:
                self.bring_here(object_id)
        pending = {i for i in object_ids if not is_ready(i)}
        needed = count - (len(set(object_ids)) - len(pending))
        if needed <= 0 or not pending:
            reply(True, answer())
            return
        state = {"done": False, "needed": needed}

        def one_ready() -> None:
            if state["done"]:
                return
            state["needed"] -= 1
            if state["needed"] <= 0:
                state["done"] = True
                reply(True, answer())

        def expired() -> None:
            if not state["done"]:
                state["done"] = True
                if on_timeout is None:
                    reply(True, answer())
                else:
                    reply(False, on_timeout())

        wait_for = self.on_here if here else self.on_done
        for object_id in pending:
            wait_for(object_id, one_ready)
        if timeout is not None:
            self._after(timeout, expired)

    def get_values(self, object_ids: list[str], timeout: float | None, reply: Reply,
            value: Callable[[str], Blob | Exception] | None = None) -> None:
        """Reply with each object's value (or error) once all are here, or GetTimeoutError."""
        value = value or self.value_of
        self.when_ready(object_ids, len(object_ids), timeout, reply, lambda: [value(i) for i in object_ids],
                        lambda: GetTimeoutError(f"get timed out after {timeout} s waiting for "
                                                f"{sum(not self.is_here(i) for i in object_ids)} of "
                                                f"{len(object_ids)} objects"), here=True)

    # ---- values on other nodes ---------------------------------------------------------------

    def bring_here(self, object_id: str) -> None:
        """Fetch a value that is ready on another node (once; it arrives through `arrived_from`)."""
        entry = self._entries.get(object_id)
        if entry is not None and entry.held_at is not None and not entry.fetching:
            entry.fetching = True
            self._transfers.fetch(object_id, entry.held_at)

    def fetch_if_missing(self, object_id: str, address: str) -> None:
        """An input of a call forwarded here lives on `address`: copy it here."""
        entry = self.entry(object_id)
        if entry.ready or entry.remote or entry.spec is not None or address == self._transfers.address:
            return
        entry.remote = address
        self._transfers.fetch(object_id, address)

    def fetch_failed(self, object_id: str) -> bool:
        """The holder could not be reached: ask again later (its declared death rebuilds the object first).

        False when the object is here already or the table forgot it.
        """
        entry = self._entries.get(object_id)
        if entry is None or self.is_here(object_id):
            return False
        entry.fetching = False
        self._after(REFETCH_S, lambda: self._fetch_again(object_id))
        return True

    def _fetch_again(self, object_id: str) -> None:
        entry = self._entries.get(object_id)
        if entry is None or self.is_here(object_id):
            return
        if entry.held_at is not None:
            self.bring_here(object_id)
        elif entry.remote is not None and entry.spec is None:
            self._transfers.fetch(object_id, entry.remote)

    def free_all(self) -> None:
        """The node stops: unlink every shared segment it made."""
        for entry in self._entries.values():
            if entry.blob is not None:
                free(entry.blob)

"""`ObjectRef`: a future for a value held by the runtime, counted so the value can be freed.

Each process counts the refs it holds. The first ref to an object in a process
tells the backend "held", the last one going tells it "released"; a value with
no holder and no pending call that uses it is freed. Pickling a ref records its
id in the active capture, so whoever ships the pickle can keep the object alive
until the receiver holds its own ref.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

_local = threading.local()
_counts: Counter[str] = Counter()
_counts_lock = threading.Lock()
_on_hold: Callable[[str], None] | None = None
_on_release: Callable[[str], None] | None = None


def set_ref_listeners(on_hold: Callable[[str], None] | None, on_release: Callable[[str], None] | None) -> None:
    """Where this process reports first-held and last-released object ids (its backend)."""
    global _on_hold, _on_release
    _on_hold, _on_release = on_hold, on_release
    with _counts_lock:
        _counts.clear()


class capture_refs:
    """Context manager collecting the ids of every `ObjectRef` pickled inside it."""

    def __enter__(self) -> list[str]:
        self.previous = getattr(_local, "captured", None)
        _local.captured = []
        return _local.captured

    def __exit__(self, *exc_info: object) -> None:
        _local.captured = self.previous


class ObjectRef:
    """A reference to a (possibly not yet computed) object; pass it to tasks or `get` it."""

    __slots__ = ("id", "__weakref__")

    def __init__(self, object_id: str):
        self.id = object_id
        with _counts_lock:
            _counts[object_id] += 1
            first = _counts[object_id] == 1
        if first and _on_hold is not None:
            _on_hold(object_id)

    def __reduce__(self):
        captured = getattr(_local, "captured", None)
        if captured is not None:
            captured.append(self.id)
        return (ObjectRef, (self.id,))

    def __del__(self) -> None:
        try:
            with _counts_lock:
                _counts[self.id] -= 1
                last = _counts[self.id] <= 0
                if last:
                    del _counts[self.id]
            if last and _on_release is not None:
                _on_release(self.id)
        except Exception:  # interpreter shutdown: module globals may already be gone
            pass

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"ObjectRef({self.id[:12]})"


def submitted_ref(object_id: str) -> ObjectRef:
    """The first ref to the result of a call this process is submitting, its hold not reported.

    The submission itself tells the node that this process holds the result
    (one request per call rather than a hold and a submit: the node's
    dispatcher handles every request in turn). The ref's last release is
    reported as usual.
    """
    ref = ObjectRef.__new__(ObjectRef)
    ref.id = object_id
    with _counts_lock:
        _counts[object_id] += 1
    return ref

"""Cheap pickling for the small frozen records that cross process boundaries by the thousand."""

from __future__ import annotations

from typing import Any


class CompactPickle:
    """Base for `@dataclass(frozen=True, slots=True)` records: pickled as the class and its field values.

    The dataclass default goes through a generic `__getstate__` that calls
    `dataclasses.fields()` for every object; on the batches sent to shard
    actors and search tasks that was a tenth of the engine's time. Relies on
    `slots=True` listing every field in `__slots__`, in field order.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return type(self), tuple(getattr(self, name) for name in self.__slots__)

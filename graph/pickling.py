"""Cheap pickling for the records that cross process boundaries by the thousand, or with many arrays each."""

from __future__ import annotations

import dataclasses
from typing import Any

_ALIGN = 8  # every array starts on a multiple of this in the blob: numba compiles unaligned arrays separately


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


class ArrayRecord:
    """Base for dataclasses of NumPy arrays, Arrow tables and plain values: what a shard and the driver send
    each other every round of a sharded search.

    Pickled as the class, a header of builtins (per field: an array's dtype,
    shape and offset, a table's offset and length, or the value itself) and
    one bytearray holding every array and table (Arrow IPC). The runtime
    pickles messages with cloudpickle, which handles each array as about ten
    objects through Python-level hooks: a round's request or reply cost
    0.1-0.3 ms to pickle, a third of the sharded search's CPU on small batches.
    Arrays come back as views of the unpickled bytearray, so they are writable:
    numba keeps one compiled version of a kernel per writability, and the
    shards' warm-up loads the writable ones. Decoding unpickles nothing more
    than the header: tables are Arrow IPC, arrays raw bytes.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        import numpy as np
        import pyarrow as pa

        header: list[tuple] = []
        parts: list[tuple[int, memoryview]] = []
        size = 0
        for name in _field_names(type(self)):
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = np.ascontiguousarray(value)
                header.append(("a", value.dtype.str, value.shape, size))
                data = memoryview(value).cast("B")
            elif isinstance(value, pa.Table):
                data = memoryview(_ipc(value)).cast("B")
                header.append(("t", size, data.nbytes))
            else:
                header.append(("v", value))
                continue
            parts.append((size, data))
            size += -(-data.nbytes // _ALIGN) * _ALIGN
        blob = bytearray(size)
        view = memoryview(blob)
        for offset, data in parts:
            view[offset:offset + data.nbytes] = data
        return _rebuild, (type(self), tuple(header), blob)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _ipc(table: Any) -> Any:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _rebuild(cls: type, header: tuple, blob: bytearray) -> Any:
    import numpy as np
    import pyarrow as pa

    values = []
    for item in header:
        if item[0] == "a":
            _, dtype, shape, offset = item
            count = 1
            for n in shape:
                count *= n
            values.append(np.frombuffer(blob, dtype, count, offset).reshape(shape))
        elif item[0] == "t":
            _, offset, length = item
            values.append(pa.ipc.open_stream(pa.py_buffer(memoryview(blob)[offset:offset + length])).read_all())
        else:
            values.append(item[1])
    return cls(*values)

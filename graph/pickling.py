"""Cheap pickling for the records that cross process boundaries by the thousand, or with many arrays each."""

from __future__ import annotations

import dataclasses
import importlib
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
    """Base for dataclasses of NumPy arrays, Arrow tables, nested records and plain values: what a shard and
    the driver send each other every round of a sharded search.

    Pickled as a call of `_rebuild` with a header of builtins and one
    bytearray holding every array and table of the record and of the records
    nested in it (Arrow IPC). The header names each record's class by a key
    (`module:qualname`) that `_rebuild` looks up among the subclasses of this
    one, and gives per field an array's dtype, shape and offset (an empty
    array: no bytes), a table's offset and length, a nested record's header, or
    the value itself. The runtime pickles messages with cloudpickle, which
    handles each array as about ten objects through Python-level hooks and
    looks up every class and function it meets by name: a round's request or
    reply cost 0.1-0.3 ms to pickle, a third of the sharded search's CPU on
    small batches; with a class per nested record the lookups alone were a
    fifth of what is left. A table travels as one Arrow IPC record batch
    message, its schema's IPC bytes in the header, read once per process: a
    whole IPC stream (schema and batch) took twice as long each way. Arrays come back as views of the unpickled
    bytearray, so they are writable: numba keeps one compiled version of a
    kernel per writability, and the shards' warm-up loads the writable ones.
    Decoding unpickles nothing more than the header: tables are Arrow IPC,
    arrays raw bytes, and only registered record classes are made.
    """

    __slots__ = ()
    _key = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._key = f"{cls.__module__}:{cls.__qualname__}"
        _RECORDS[cls._key] = cls

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        parts: list[memoryview] = []
        header, size = _encode(self, parts, 0)
        blob = bytearray(size)
        offset = 0
        for data in parts:
            blob[offset:offset + data.nbytes] = data
            offset += -(-data.nbytes // _ALIGN) * _ALIGN
        return _rebuild, (header, blob)


_RECORDS: dict[str, type] = {}
_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _encode(record: ArrayRecord, parts: list[memoryview], size: int) -> tuple[tuple, int]:
    """The header of `record` (its key and one item per field); its arrays and tables go to `parts`, laid
    out from `size` on; returns the header and the size after them."""
    import numpy as np
    import pyarrow as pa

    items: list[Any] = []
    for name in _field_names(type(record)):
        value = getattr(record, name)
        if isinstance(value, np.ndarray):
            if not value.size:
                items.append(("e", value.dtype.str, value.shape))
                continue
            value = np.ascontiguousarray(value)
            items.append(("a", value.dtype.str, value.shape, size))
            data = memoryview(value).cast("B")
        elif isinstance(value, ArrayRecord):
            nested, size = _encode(value, parts, size)
            items.append(("r", nested))
            continue
        elif isinstance(value, pa.Table):
            data = memoryview(_one_batch(value).serialize()).cast("B")
            items.append(("t", _schema_bytes(value.schema), size, data.nbytes))
        else:
            items.append(("v", value))
            continue
        parts.append(data)
        size += -(-data.nbytes // _ALIGN) * _ALIGN
    return (type(record)._key, tuple(items)), size


def _one_batch(table: Any) -> Any:
    """The table as one record batch (its own when it has exactly one)."""
    import pyarrow as pa

    batches = table.to_batches()
    if len(batches) == 1:
        return batches[0]
    return pa.RecordBatch.from_arrays([column.combine_chunks() for column in table.columns], schema=table.schema)


_SENT: set[bytes] = set()  # schemas checked on the way out


def _schema_bytes(schema: Any) -> bytes:
    """A table's schema as IPC bytes; refused once, where it is sent, when a column is dictionary-encoded: a lone
    record batch message carries no dictionaries, so the receiving end could not read it."""
    import pyarrow as pa

    data = schema.serialize().to_pybytes()
    if data not in _SENT:
        encoded = [field.name for field in schema if pa.types.is_dictionary(field.type)]
        if encoded:
            raise TypeError(f"dictionary-encoded columns {encoded} cannot travel in an ArrayRecord: decode them first")
        if len(_SENT) >= _MAX_SCHEMAS:
            _SENT.clear()
        _SENT.add(data)
    return data


_SCHEMAS: dict[bytes, Any] = {}  # schemas read, by their IPC bytes: a table sends its schema, read once here
_MAX_SCHEMAS = 64


def _schema(data: bytes) -> Any:
    import pyarrow as pa

    schema = _SCHEMAS.get(data)
    if schema is None:
        if len(_SCHEMAS) >= _MAX_SCHEMAS:
            _SCHEMAS.clear()
        schema = _SCHEMAS[data] = pa.ipc.read_schema(pa.py_buffer(data))
    return schema


def _record_class(key: str) -> type:
    """The `ArrayRecord` subclass of a key, importing its module (only one of ringwatch's) the first time:
    nothing but a registered record class is ever made from a header."""
    cls = _RECORDS.get(key)
    if cls is None:
        module, _, _ = key.partition(":")
        if module.startswith("ringwatch."):
            importlib.import_module(module)
        cls = _RECORDS.get(key)
        if cls is None:
            raise TypeError(f"{key!r} names no ArrayRecord class")
    return cls


def _rebuild(header: tuple, blob: bytearray) -> Any:
    import numpy as np
    import pyarrow as pa

    key, items = header
    values = []
    for item in items:
        kind = item[0]
        if kind == "a":
            _, dtype, shape, offset = item
            count = 1
            for n in shape:
                count *= n
            values.append(np.frombuffer(blob, dtype, count, offset).reshape(shape))
        elif kind == "e":
            values.append(np.empty(item[2], item[1]))
        elif kind == "r":
            values.append(_rebuild(item[1], blob))
        elif kind == "t":
            _, schema, offset, length = item
            batch = pa.ipc.read_record_batch(pa.py_buffer(memoryview(blob)[offset:offset + length]), _schema(schema))
            values.append(pa.Table.from_batches([batch]))
        else:
            values.append(item[1])
    return _record_class(key)(*values)

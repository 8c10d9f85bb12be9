"""Pickling for the runtime: cloudpickle for code, protocol 5 with out-of-band buffers for data.

Large values (NumPy arrays, Arrow buffers) keep their buffers out of the pickle
stream, so they can be laid into shared memory once and read without a copy.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from .errors import SerializationError


def dumps(value: Any, *, what: str = "value") -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle `value`; return the stream and its out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:  # pickling can raise nearly anything
        raise SerializationError(f"cannot pickle {what}: {type(exc).__name__}: {exc}") from exc
    return data, buffers


def dumps_inline(value: Any, *, what: str = "value") -> bytes:
    """Pickle `value` into one byte string (buffers in-band), for small messages."""
    try:
        return cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {what}: {type(exc).__name__}: {exc}") from exc


def loads(data: bytes | memoryview, buffers: list[memoryview] | None = None) -> Any:
    return pickle.loads(data, buffers=buffers or ())

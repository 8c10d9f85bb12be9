"""Durable file writes shared by checkpoints, outboxes and dead-letter files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes | Iterable[bytes | memoryview]) -> None:
    """Write `path` so that a crash leaves either the old state or the whole new file.

    `data` may be one bytes object or parts written back to back (large
    buffers then go to the file without being joined in memory first).
    """
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as out:
        for part in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
            out.write(part)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)

"""Which alert ids a sink has already settled (delivered or dead-lettered), durably and in bounded memory.

After a crash the engine replays from its last checkpoint and raises the same
alert ids again; a sink checks them here and skips what it already handled, so
receivers see each alert once. Replays only reach back one checkpoint, so the
most recent `capacity` ids are enough: older ones are forgotten.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from ringwatch.runtime.files import fsync_directory

DEFAULT_CAPACITY = 1_000_000


class RecentIds:
    """A set that keeps only the `capacity` most recently added ids."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if capacity < 1:
            raise ValueError(f"capacity: must be >= 1, got {capacity}")
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self):
        return iter(self._ids)

    def add(self, item: str) -> None:
        self._ids.pop(item, None)
        self._ids[item] = None
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]


def drop_partial_last_line(path: Path) -> None:
    """Cut a line a crash left half-written, so the next append starts on a fresh line."""
    with open(path, "rb+") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return
        file.seek(size - 1)
        if file.read(1) == b"\n":
            return
        position = size
        while position > 0:
            step = min(65_536, position)
            file.seek(position - step)
            chunk = file.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                file.truncate(position - step + newline + 1)
                return
            position -= step
        file.truncate(0)


class SettledIds:
    """An append-only file of settled ids (one per line, fsynced), compacted when it grows past 2x capacity.

    With `path` None the record lives in memory only (for callers without a state directory).
    """

    def __init__(self, path: str | Path | None, capacity: int = DEFAULT_CAPACITY):
        self.path = Path(path) if path is not None else None
        self._recent = RecentIds(capacity)
        self._lines = 0
        self._lock = threading.Lock()
        self._file = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        drop_partial_last_line(self.path)
        with open(self.path, encoding="utf-8") as lines:
            for line in lines:
                self._recent.add(line.rstrip("\n"))
                self._lines += 1
        self._file = open(self.path, "a", encoding="utf-8")

    def __contains__(self, alert_id: object) -> bool:
        with self._lock:
            return alert_id in self._recent

    def add(self, alert_ids: Iterable[str]) -> None:
        """Record ids durably (fsync) before returning."""
        with self._lock:
            new = [alert_id for alert_id in alert_ids if alert_id not in self._recent]
            if not new:
                return
            if self._file is not None:
                self._file.write("".join(f"{alert_id}\n" for alert_id in new))
                self._file.flush()
                os.fsync(self._file.fileno())
                self._lines += len(new)
            for alert_id in new:
                self._recent.add(alert_id)
            if self._file is not None and self._lines > 2 * self._recent.capacity:
                self._compact()

    def _compact(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            out.write("".join(f"{alert_id}\n" for alert_id in self._recent))
            out.flush()
            os.fsync(out.fileno())
        self._file.close()
        os.replace(temporary, self.path)
        fsync_directory(self.path.parent)
        self._file = open(self.path, "a", encoding="utf-8")
        self._lines = len(self._recent)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()


def append_durably(path: Path, line: str) -> None:
    """Append one line and fsync it (dead-letter files: an entry must survive a crash)."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(line if line.endswith("\n") else line + "\n")
        out.flush()
        os.fsync(out.fileno())

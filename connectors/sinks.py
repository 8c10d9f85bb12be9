"""The sink interface every alert destination offers, and the JSON-lines file sink.

Every sink is idempotent by alert id across restarts: a replay after a crash
hands it alerts it has seen before, and it delivers none of them twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from ringwatch.graph import Alert

from .settled import DEFAULT_CAPACITY, RecentIds, drop_partial_last_line

logger = logging.getLogger(__name__)


class Sink(Protocol):
    """An alert destination.

    `deliver` hands alerts over without blocking on a slow receiver; `flush`
    waits (at most `timeout` seconds, None = no limit) until everything handed
    over is durable or delivered and says whether it got there; `close` flushes
    what it can and releases resources.
    """

    def deliver(self, alerts: Iterable[Alert]) -> None: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends one alert per line to `path`; `flush` fsyncs.

    The file is its own record of what was delivered: on open the ids already
    in it (the last `remember` of them) are read back, and a line a crash cut
    short is removed so it is written again whole.
    """

    def __init__(self, path: str | Path, remember: int = DEFAULT_CAPACITY):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        drop_partial_last_line(self.path)
        self._delivered = RecentIds(remember)
        with open(self.path, "rb") as lines:
            for number, line in enumerate(lines):
                self._remember_line(line, number)
        self._file = open(self.path, "a", encoding="utf-8")

    def _remember_line(self, line: bytes, number: int) -> None:
        try:
            self._delivered.add(json.loads(line)["alert_id"])
        except (ValueError, KeyError, TypeError):
            logger.warning("%s line %d is not an alert; left as it is", self.path, number + 1)

    def deliver(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            if alert.alert_id in self._delivered:
                continue
            self._file.write(alert.to_json() + "\n")
            self._delivered.add(alert.alert_id)
        self._file.flush()

    def flush(self, timeout: float | None = None) -> bool:
        self._file.flush()
        os.fsync(self._file.fileno())
        return True

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

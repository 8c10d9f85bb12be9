"""A one-line live progress display for long runs, shown only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Rewrites one status line at most every `interval_s`; silent when `stream` is not a terminal."""

    def __init__(self, label: str, *, stream: TextIO | None = None, interval_s: float = 0.5,
                 enabled: bool | None = None):
        self.label = label
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: int, **figures: object) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < self.interval_s:
            return
        self._last = now
        self._write(done, now, figures)

    def finish(self, done: int, **figures: object) -> None:
        if self.enabled:
            self._write(done, time.monotonic(), figures)
            self.stream.write("\n")
            self.stream.flush()

    def _write(self, done: int, now: float, figures: dict) -> None:
        rate = done / max(now - self.started, 1e-9)
        extra = "  ".join(f"{k.replace('_', ' ')} {v}" for k, v in figures.items())
        self.stream.write(f"\r{self.label}: {done:,} tx  {rate:,.0f} tx/s  {extra}\x1b[K")
        self.stream.flush()

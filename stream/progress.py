"""Progress of a long run: a live line on a terminal, a periodic log line anywhere else."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

logger = logging.getLogger("ringwatch.progress")  # shown at every verbosity (stream/logs.py)

LOG_INTERVAL_S = 10.0


class Progress:
    """Reports `done` and a few figures while a run goes on.

    On a terminal it rewrites one status line at most every `interval_s`; when
    stderr is a pipe or a CI log (or `enabled` is None and it is not a
    terminal), it logs one INFO line on `ringwatch.progress` every
    `log_interval_s` instead, so a piped run is not silent. `enabled=True`
    forces the status line, `enabled=False` silences both.
    """

    def __init__(self, label: str, *, stream: TextIO | None = None, interval_s: float = 0.5,
                 enabled: bool | None = None, log_interval_s: float = LOG_INTERVAL_S):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled is not False
        self.live = bool(enabled) or (enabled is None and self.stream.isatty())
        self.interval_s = interval_s if self.live else log_interval_s
        self.started = time.monotonic()
        self._last = 0.0 if self.live else self.started  # a live line shows at once, a log line after a while

    def update(self, done: int, **figures: object) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < self.interval_s:
            return
        self._last = now
        self._write(done, now, figures)

    def finish(self, done: int, **figures: object) -> None:
        if self.enabled:
            self._write(done, time.monotonic(), figures)
            if self.live:
                self.stream.write("\n")
                self.stream.flush()

    def _write(self, done: int, now: float, figures: dict) -> None:
        rate = done / max(now - self.started, 1e-9)
        shown = [f"{k.replace('_', ' ')} {v}" for k, v in figures.items()]
        if self.live:
            self.stream.write(f"\r{self.label}: {done:,} tx  {rate:,.0f} tx/s  {'  '.join(shown)}\x1b[K")
            self.stream.flush()
        else:
            logger.info("%s: %s tx, %s tx/s%s", self.label, f"{done:,}", f"{rate:,.0f}",
                        "".join(f", {item}" for item in shown))

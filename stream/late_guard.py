"""One event-time watermark for a whole stream: which payments are too late, and what to evict.

Interim: the stream layer's per-partition watermarks (issue 11) replace this.
The rule keeps the graph exact for every payment it admits: the watermark is
the newest `ts` seen; a payment older than `watermark - allowed_lateness` is
late (rejected with the reason); edges older than
`watermark - window - allowed_lateness` are evicted, so an admitted late
payment still finds every witness its rings can have.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_NEVER = -(2**62)


class LateGuard:
    def __init__(self, window_ms: int, allowed_lateness_ms: int):
        self.window_ms = window_ms
        self.allowed_lateness_ms = allowed_lateness_ms
        self.watermark = _NEVER
        self._evicted_to = _NEVER

    def admit(self, stamps: Sequence[int] | np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
        """Indices of the payments to store, and the late ones' reasons by index; moves the watermark."""
        stamps = np.asarray(stamps, np.int64)
        if stamps.size == 0:
            return np.zeros(0, np.int64), {}
        # Each payment is judged against the watermark as it stood when it arrived.
        running = np.maximum.accumulate(np.concatenate([[self.watermark], stamps]))[:-1]
        floor = running - self.allowed_lateness_ms
        late = np.flatnonzero((stamps < floor) & (running > _NEVER))
        self.watermark = max(self.watermark, int(stamps.max()))
        reasons = {int(i): f"late: ts {int(stamps[i])} is older than the watermark {int(running[i])} minus the "
                           f"allowed lateness of {self.allowed_lateness_ms} ms" for i in late}
        keep = np.setdiff1d(np.arange(stamps.size), late)
        return keep, reasons

    def horizon(self) -> int | None:
        """The eviction horizon when it has moved a sixteenth of a window since the last one, else None."""
        if self.watermark == _NEVER:
            return None
        horizon = self.watermark - self.window_ms - self.allowed_lateness_ms
        if horizon - self._evicted_to < max(self.window_ms // 16, 1):
            return None
        self._evicted_to = horizon
        return horizon

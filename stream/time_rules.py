"""The settings event time is judged by, apart from the clock that applies them.

A module of its own so that reading a configuration (`ringwatch --help`, a bad
flag) does not import numpy with the clock (stream/event_time.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimeRules:
    """The settings the clock judges by (all in milliseconds)."""

    window_ms: int
    allowed_lateness_ms: int = 3_600_000
    max_clock_skew_ms: int = 300_000
    idle_timeout_ms: int = 30_000
    max_drift_ms: int = 1_000

    def __post_init__(self) -> None:
        for name in ("window_ms", "allowed_lateness_ms", "max_clock_skew_ms", "idle_timeout_ms", "max_drift_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative, got {getattr(self, name)}")

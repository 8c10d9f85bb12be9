"""Durations as users write them: `timedelta`, "500ms", "90s", "15m", "48h", "7d", or int milliseconds.

Every duration in the API, the CLI and the config goes through `parse_duration`,
so the same spelling works everywhere. `None` means "no limit".
"""

from __future__ import annotations

import re
from datetime import timedelta

from ringwatch.runtime.errors import RingwatchError

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


class InvalidDurationError(RingwatchError, ValueError):
    """A duration that is not a timedelta, an int of milliseconds or a string like "48h"."""


Duration = timedelta | str | int | None


def parse_duration(value: Duration, *, name: str = "duration") -> int | None:
    """Milliseconds for `value`, or None when `value` is None (no limit)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidDurationError(f"{name}: expected a duration, got {value!r}")
    if isinstance(value, timedelta):
        ms = round(value.total_seconds() * 1000)
    elif isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None:
            raise InvalidDurationError(
                f"{name}: cannot read {value!r} as a duration; write e.g. '500ms', '90s', '15m', '48h', '7d'"
            )
        ms = round(float(match.group(1)) * _UNITS_MS[match.group(2)])
    else:
        raise InvalidDurationError(f"{name}: expected a duration, got {type(value).__name__} {value!r}")
    if ms < 0:
        raise InvalidDurationError(f"{name}: must not be negative, got {value!r}")
    return ms


def format_duration(ms: int | None) -> str:
    """The shortest exact spelling of `ms` that `parse_duration` reads back."""
    if ms is None:
        return "none"
    for unit in ("d", "h", "m", "s"):
        if ms and ms % _UNITS_MS[unit] == 0:
            return f"{ms // _UNITS_MS[unit]}{unit}"
    return f"{ms}ms"

"""The streaming engine and the offline detector.

Sub-packages: `query` (the query service and `Client`), `cli` (the `ringwatch`
command), `demo` (`ringwatch demo` and its picture). Their main names are
re-exported here so `from ringwatch.stream import Client` keeps working.
"""

from typing import TYPE_CHECKING

from ringwatch.runtime.lazy_exports import lazy_package

if TYPE_CHECKING:  # the exports, imported on first use (runtime/lazy_exports.py)
    from .checkpoint import Checkpoint, CheckpointRecordError, CheckpointRecords, EngineProgress, FileCheckpointRecords
    from .config import Config, ConfigError
    from .demo import DemoReport, run_demo
    from .detect import DetectReport, detect
    from .engine import Engine
    from .event_time import EventClock
    from .history import AlertHistory, AlertHistoryError
    from .metrics import EngineMetrics
    from .query import (
        AccountSummary,
        Client,
        EngineStats,
        EngineUnreachableError,
        Health,
        InvalidQueryError,
        Neighbor,
        QueryError,
    )
    from .time_rules import TimeRules

    from ringwatch.runtime.errors import RingwatchError

__getattr__, __dir__ = lazy_package(__name__)

__all__ = [
    "AccountSummary",
    "AlertHistory",
    "AlertHistoryError",
    "Checkpoint",
    "CheckpointRecordError",
    "CheckpointRecords",
    "EngineProgress",
    "Client",
    "Config",
    "ConfigError",
    "DemoReport",
    "DetectReport",
    "Engine",
    "EngineMetrics",
    "EngineStats",
    "EventClock",
    "EngineUnreachableError",
    "FileCheckpointRecords",
    "Health",
    "InvalidQueryError",
    "Neighbor",
    "TimeRules",
    "QueryError",
    "RingwatchError",
    "detect",
    "run_demo",
]

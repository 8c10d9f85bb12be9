"""The streaming engine and the offline detector.

Sub-packages: `query` (the query service and `Client`), `cli` (the `ringwatch`
command), `demo` (`ringwatch demo` and its picture). Their main names are
re-exported here so `from ringwatch.stream import Client` keeps working.
"""

from .checkpoint import Checkpoint, CheckpointError, CheckpointStore, EngineProgress, FileCheckpointStore
from .config import Config, ConfigError
from .demo import DemoReport, run_demo
from .detect import DetectReport, detect
from .engine import Engine
from .event_time import EventClock, TimeRules
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

__all__ = [
    "AccountSummary",
    "AlertHistory",
    "AlertHistoryError",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
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
    "FileCheckpointStore",
    "Health",
    "InvalidQueryError",
    "Neighbor",
    "TimeRules",
    "QueryError",
    "detect",
    "run_demo",
]

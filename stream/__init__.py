"""The streaming engine, its query service and client, the offline detector and the `ringwatch` command."""

from .checkpoint import Checkpoint, CheckpointError, CheckpointStore
from .client import Client, EngineUnreachableError
from .config import Config, ConfigError
from .demo import DemoReport, run_demo
from .detect import DetectReport, detect
from .engine import Engine
from .metrics import EngineMetrics
from .query import AccountSummary, EngineStats, Health, InvalidQueryError, Neighbor, QueryError

__all__ = [
    "AccountSummary",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "Client",
    "Config",
    "ConfigError",
    "DemoReport",
    "DetectReport",
    "Engine",
    "EngineMetrics",
    "EngineStats",
    "EngineUnreachableError",
    "Health",
    "InvalidQueryError",
    "Neighbor",
    "QueryError",
    "detect",
    "run_demo",
]

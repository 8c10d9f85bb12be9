"""The streaming engine, the offline detector and the `ringwatch` command."""

from .checkpoint import Checkpoint, CheckpointError, CheckpointStore
from .config import Config, ConfigError
from .detect import DetectReport, detect
from .engine import Engine
from .metrics import EngineMetrics

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "Config",
    "ConfigError",
    "DetectReport",
    "Engine",
    "EngineMetrics",
    "detect",
]

"""The streaming engine, the offline detector and the `ringwatch` command."""

from .detect import DetectReport, detect

__all__ = ["DetectReport", "detect"]

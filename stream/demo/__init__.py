"""`ringwatch demo`'s engine run over the synthetic stream, and the picture of the rings it found."""

from .picture import render_rings_html
from .runner import DemoReport, progress_reporter, run_demo

__all__ = ["DemoReport", "progress_reporter", "render_rings_html", "run_demo"]

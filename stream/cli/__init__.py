"""The `ringwatch` command: `main` and one module per subcommand (demo, detect, run, query, generate).

`ringwatch node` and `ringwatch status` come from `ringwatch.runtime.cli`: the
runtime is usable on its own, so it owns the commands that start and inspect
its nodes.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]

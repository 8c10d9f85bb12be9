"""The `--backend` and `--address` flags of the commands that start a runtime (`detect`, `demo`).

`ringwatch run` has the same two, as the config keys `engine.backend` and `engine.address`.
"""

from __future__ import annotations

import argparse

from ringwatch.runtime.backend import BACKENDS


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="runtime the shard actors and search tasks run on: ringwatch (its own, default) or "
                             "ray (a Ray cluster; needs the ray extra) [RINGWATCH_BACKEND]")
    parser.add_argument("--address", default=None,
                        help="cluster to join: redis://HOST:PORT (ringwatch), auto or ray://HOST:10001 (ray); "
                             "default: start a local runtime")

"""The `ringwatch` command: one subcommand per job, each defined beside the code it drives."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

Registrar = Callable[[argparse._SubParsersAction], None]


def _registrars() -> list[Registrar]:
    """Subcommand registrars, in the order `ringwatch --help` lists them."""
    from ringwatch.runtime import cli as runtime_cli

    from . import demo, detect, generate, query, run, webhook

    return [demo.register, detect.register, run.register, runtime_cli.register_node,
            runtime_cli.register_status, query.register, webhook.register, generate.register]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringwatch",
        description="Catch money-laundering rings in a payment stream while they happen.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrars():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return int(handler(args) or 0)


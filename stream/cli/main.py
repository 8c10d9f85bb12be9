"""The `ringwatch` command: one subcommand per job, each defined beside the code it drives."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from .. import logs

Registrar = Callable[[argparse._SubParsersAction], None]
LOG_FORMAT_ENV = "RINGWATCH_LOG_FORMAT"


def _registrars() -> list[Registrar]:
    """Subcommand registrars, in the order `ringwatch --help` lists them."""
    from ringwatch.runtime import cli as runtime_cli

    from . import demo, detect, generate, query, run, status, webhook

    return [demo.register, detect.register, run.register, runtime_cli.register_node,
            status.register, query.register, webhook.register, generate.register]


def ringwatch_version() -> str:
    try:
        return version("ringwatch")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _add_output_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """-v and --log-format, accepted before and after the subcommand (the later one wins)."""
    default = {} if top_level else {"default": argparse.SUPPRESS}
    parser.add_argument("-v", "--verbose", action="count", help="more log output (-vv for debug)",
                        **({"default": 0} if top_level else default))
    parser.add_argument("--log-format", choices=logs.LOG_FORMATS, help=f"log lines as text or as one JSON object "
                        f"per line (default: {LOG_FORMAT_ENV} or text)", **default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringwatch",
        description="Catch money-laundering rings in a payment stream while they happen.",
    )
    parser.add_argument("--version", action="version", version=f"ringwatch {ringwatch_version()}")
    _add_output_options(parser, top_level=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrars():
        register(subparsers)
    for subparser in subparsers.choices.values():
        _add_output_options(subparser, top_level=False)
    return parser


def configure_logging(args: argparse.Namespace) -> None:
    """Levels: -v shows INFO of every library, -vv DEBUG; a service command (`run`) shows its own INFO lines."""
    log_format = args.log_format or os.environ.get(LOG_FORMAT_ENV) or "text"
    for secret in ("RINGWATCH_TOKEN", "RINGWATCH_QUERY_TOKEN"):
        if os.environ.get(secret):
            logs.register_secret(os.environ[secret])
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    try:
        logs.configure(log_format, level=level, ringwatch_level=getattr(args, "ringwatch_log_level", None))
    except logs.InvalidLogFormatError as exc:
        raise SystemExit(f"ringwatch: {LOG_FORMAT_ENV}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return int(handler(args) or 0)

"""`ringwatch run`: the Kafka consumer deployment, configured by file, environment and flags."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from ringwatch.connectors import InvalidWebhookConfigError, KafkaConnectorError

from ..checkpoint import CheckpointError
from ..config import ConfigError, add_arguments, load, overrides_from_args

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="consume payments from Kafka and deliver ring alerts (the deployment)",
        description="Consume payments from Kafka topics as a consumer group, find the rings each payment "
                    "closes, and deliver every alert exactly once per alert id to the configured sinks, "
                    "through crashes and restarts (aligned checkpoints under --state-dir). Settings come "
                    "from --config FILE (TOML), then RINGWATCH_* environment variables, then these flags; "
                    "each flag's help names its config key and variable. SIGTERM or SIGINT stops after "
                    "a final checkpoint. See docs/configuration.md.")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    add_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..engine import Engine

    try:
        config = load(args.config, overrides=overrides_from_args(args))
        engine = Engine(config)
    except ConfigError as exc:
        print(f"ringwatch run: bad configuration: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def request_stop(signum: int, _frame) -> None:
        logger.info("signal %s: stopping after a final checkpoint", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        engine.run(stop)
    except (KafkaConnectorError, InvalidWebhookConfigError, CheckpointError) as exc:
        print(f"ringwatch run: {exc}", file=sys.stderr)
        return 1
    return 0

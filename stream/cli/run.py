"""`ringwatch run`: the Kafka consumer deployment, configured by file, environment and flags."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from .. import logs
from ..config import ConfigError, add_arguments, load, overrides_from_args
from .main import ringwatch_version

logger = logging.getLogger(__name__)
progress_logger = logging.getLogger("ringwatch.progress")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="consume payments from Kafka and deliver ring alerts (the deployment)",
        description="Consume payments from Kafka topics as a consumer group, find the rings each payment "
                    "closes, and deliver every alert exactly once per alert id to the configured sinks, "
                    "through crashes and restarts (aligned checkpoints under --state-dir). Settings come "
                    "from --config FILE (TOML), then RINGWATCH_* environment variables, then these flags; "
                    "each flag's help names its config key and variable. Secrets are refused as flags: "
                    "use their variables or --*-file. SIGTERM or SIGINT stops after a final checkpoint. "
                    "See docs/configuration.md.")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    add_arguments(parser)
    parser.set_defaults(handler=run, ringwatch_log_level=logging.INFO)  # a service says what it is doing


def run(args: argparse.Namespace) -> int:
    from ringwatch.connectors import InvalidWebhookConfigError, KafkaConnectorError
    from ringwatch.graph.warmup import load_compiled_code

    from ..checkpoint import CheckpointRecordError
    from ..engine import Engine

    try:
        config = load(args.config, overrides=overrides_from_args(args))
        for secret in config.secrets():
            logs.register_secret(secret)
        engine = Engine(config)
    except ConfigError as exc:
        print(f"ringwatch run: bad configuration: {logs.mask(str(exc))}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def request_stop(signum: int, _frame) -> None:
        logger.info("signal %s: stopping after a final checkpoint", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logger.info("ringwatch %s", ringwatch_version())
    load_compiled_code(config.graph.placement)  # before any worker starts: they then load numba's cache
    if config.service.progress_interval:
        threading.Thread(target=_report_progress, args=(engine, stop, config.service.progress_interval / 1000),
                         name="ringwatch-progress", daemon=True).start()
    try:
        engine.run(stop)
    except ConfigError as exc:  # a setting found unusable only when the engine used it (a port in use)
        print(f"ringwatch run: bad configuration: {logs.mask(str(exc))}", file=sys.stderr)
        return 2
    except (KafkaConnectorError, InvalidWebhookConfigError, CheckpointRecordError) as exc:
        print(f"ringwatch run: {logs.mask(str(exc))}", file=sys.stderr)
        return 1
    return 0


def _report_progress(engine, stop: threading.Event, interval_s: float) -> None:
    """One INFO line every `interval_s` while the engine runs: what a log reader needs to see it is alive."""
    while not stop.wait(interval_s):
        if not engine.ready.is_set():
            continue
        stats = engine.stats()
        progress_logger.info(
            "progress transactions=%d rate_tx_s=%.1f alerts=%d lag=%d dead_letters=%d checkpoint_age_s=%s "
            "edges=%d", stats.transactions, stats.throughput_tx_s, stats.alerts, sum(stats.lag.values()),
            sum(stats.dead_letters.values()), stats.checkpoint_age_s, stats.edges_stored)

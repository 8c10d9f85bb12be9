"""The connectors' subcommand: `ringwatch generate` writes and/or produces a synthetic stream with its truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ringwatch.connectors.synthetic_config import MODES, InvalidSyntheticConfigError, SyntheticConfig

from .. import logs
from ..config import ConfigError, add_arguments, load, overrides_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate a synthetic payment stream with injected rings (file and/or Kafka topic)",
        description="Generate the synthetic AML-like stream used by tests and benchmarks. "
                    "The ground truth (injected rings) is written beside --out, or to --truth. "
                    "To a secured Kafka, the [kafka] settings of `ringwatch run` apply: --config FILE (its "
                    "[kafka] table), RINGWATCH_* variables or the --security-protocol... flags below; "
                    "secrets come from their variables or --*-file, never from a flag.",
    )
    defaults = SyntheticConfig()
    parser.add_argument("--transactions", type=int, default=defaults.n_transactions, help="number of transactions")
    parser.add_argument("--accounts", type=int, default=defaults.n_accounts, help="number of accounts")
    parser.add_argument("--days", type=float, default=defaults.days, help="time span of the stream in days")
    parser.add_argument("--mode", choices=MODES, default=defaults.mode,
                        help="bank: retail-bank roles; dense: one heavy-tailed law, many genuine cycles")
    parser.add_argument("--rings", type=int, default=defaults.n_rings, help="number of injected rings")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (same seed, same stream)")
    parser.add_argument("--out", type=Path, help="write transactions here (.jsonl, .csv or .parquet)")
    parser.add_argument("--truth", type=Path, help="write the injected rings here (default: <out>.truth.json)")
    parser.add_argument("--kafka-bootstrap", metavar="HOST:PORT", help="produce the transactions to Kafka")
    parser.add_argument("--topic", help="Kafka topic to produce to (with --kafka-bootstrap)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML config file: its [kafka] table (TLS, SASL, client options) is used")
    add_arguments(parser, sections=("kafka",))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Kafka, numpy and pyarrow: imported when a stream is generated, not for `ringwatch --help`.
    from ringwatch.connectors.kafka import KafkaConnectorError, produce_transactions
    from ringwatch.connectors.synthetic import generate, write_stream, write_truth

    if args.out is None and args.topic is None:
        raise SystemExit("ringwatch generate: give --out PATH and/or --kafka-bootstrap HOST:PORT --topic NAME")
    if (args.topic is None) != (args.kafka_bootstrap is None):
        raise SystemExit("ringwatch generate: --topic and --kafka-bootstrap go together")
    if args.out is None and args.truth is None:
        raise SystemExit("ringwatch generate: give --truth PATH so the injected rings are kept")
    try:
        config = load(args.config, overrides=overrides_from_args(args), validate=False)
        for secret in config.secrets():
            logs.register_secret(secret)
        kafka_settings = config.kafka_settings()
    except ConfigError as exc:
        print(f"ringwatch generate: bad configuration: {logs.mask(str(exc))}", file=sys.stderr)
        return 2
    try:
        config = SyntheticConfig(n_transactions=args.transactions, n_accounts=args.accounts, days=args.days,
                                 mode=args.mode, n_rings=args.rings, seed=args.seed)
    except InvalidSyntheticConfigError as exc:
        raise SystemExit(f"ringwatch generate: {exc}") from None
    stream = generate(config)
    if args.out is not None:
        truth = write_stream(stream, args.out)
        print(f"wrote {len(stream)} transactions to {args.out} and {len(stream.rings)} rings to {truth}")
    if args.truth is not None:
        write_truth(stream, args.truth)
        print(f"wrote {len(stream.rings)} rings to {args.truth}")
    if args.topic is not None:
        try:
            count = produce_transactions(args.kafka_bootstrap, args.topic, stream.iter_transactions(),
                                         settings=kafka_settings)
        except KafkaConnectorError as exc:
            print(f"ringwatch generate: {logs.mask(str(exc))}", file=sys.stderr)
            return 1
        print(f"produced {count} transactions to {args.topic} at {args.kafka_bootstrap}")
    return 0

"""`ringwatch demo`: the first command to run — no Kafka, no Redis, no configuration."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..display import alert_total, moment, ring_text
from .runtime_flags import add_runtime_arguments
from .tables import print_table

if TYPE_CHECKING:
    from ..demo import DemoReport

TABLE_ROWS = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="stream synthetic payments with injected rings through the engine and score it",
        description="Start a local runtime (worker processes, shard actors, search tasks), stream a synthetic "
                    "payment stream with injected laundering rings through the engine with a live progress "
                    "line, print the rings found, write alerts.jsonl and a picture of the top rings "
                    "(rings.html), and end with precision and recall against the injected truth.")
    parser.add_argument("--kafka", action="store_true",
                        help="go through a Kafka-protocol broker (Tansu) the demo starts itself")
    parser.add_argument("--out", type=Path, default=Path("."), help="where alerts.jsonl and rings.html go")
    parser.add_argument("--transactions", type=int, default=20_000, help="payments to stream (default 20000)")
    parser.add_argument("--accounts", type=int, default=4_000, help="accounts (default 4000)")
    parser.add_argument("--rings", type=int, default=20, help="rings to inject (default 20)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (same seed, same stream)")
    parser.add_argument("--shards", type=int, default=2, help="graph shard actors (default 2)")
    parser.add_argument("--serve", type=int, metavar="PORT",
                        help="keep the engine running after the stream with its query service on PORT, "
                             "for `ringwatch query`, until Ctrl-C")
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # The engine, the runtime and the connectors: imported when the demo runs, not for `ringwatch --help`.
    from ringwatch.connectors import BrokerStartError, InvalidSyntheticConfigError

    from ..config import ConfigError
    from ..demo import progress_reporter, run_demo

    progress, report_progress = progress_reporter("demo")
    serving = None
    if args.serve:
        # Only a read-only query token is shown: it can query this engine, not run code anywhere.
        query_token = os.environ.setdefault("RINGWATCH_QUERY_TOKEN", secrets.token_hex(16))
        serving = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: serving.set())
        signal.signal(signal.SIGTERM, lambda *_: serving.set())
        print(f"the engine will keep serving queries on 127.0.0.1:{args.serve} after the stream; try\n"
              f"  RINGWATCH_QUERY_TOKEN={query_token} ringwatch query --address "
              f"127.0.0.1:{args.serve} alerts\nand press Ctrl-C to finish.", flush=True)
    try:
        report = run_demo(args.out, transactions=args.transactions, accounts=args.accounts, rings=args.rings,
                          seed=args.seed, shards=args.shards, kafka=args.kafka, query_port=args.serve or 0,
                          backend=args.backend or "", address=args.address or "",
                          on_progress=report_progress, serve=serving,
                          on_streamed=lambda engine: progress.finish(engine.transactions, alerts=engine.alerts_raised))
    except (InvalidSyntheticConfigError, ConfigError, BrokerStartError) as exc:
        print(f"ringwatch demo: {exc}", file=sys.stderr)
        return 2
    show(report)
    return 0


def show(report: DemoReport) -> None:
    """The rings table, the figures and the score, on stdout."""
    injected = {(ring.tx_ids[-1], ring.accounts) for ring in report.injected}
    top = sorted(report.alerts, key=lambda a: a.total_amount, reverse=True)[:TABLE_ROWS]
    print(f"\nrings found: {len(report.alerts)} (the {len(top)} largest by amount)\n")
    print_table(["closed at", "hops", "amount", "latency ms", "injected", "ring"],
                [[moment(a.last_ts), a.hops, alert_total(a), round(a.latency_ms, 1),
                  "yes" if (a.trigger_tx_id, a.accounts) in injected else "no", ring_text(a.accounts)] for a in top],
                right=["amount"])
    rate = report.transactions / report.elapsed_s if report.elapsed_s else 0.0
    latency = ", ".join(f"{name} {value:.0f} ms" for name, value in report.latency_ms.items()) or "-"
    print(f"\n{report.transactions:,} payments streamed in {report.elapsed_s:.1f} s ({rate:,.0f} tx/s); "
          f"payment-to-alert latency {latency}")
    print(f"alerts:  {report.alerts_file}")
    print(f"picture: {report.picture}")
    print(f"precision {report.precision:.2f} ({report.true_alerts} of {len(report.alerts)} alerts are injected "
          f"rings; the others are genuine cycles in the background payments)")
    print(f"recall    {report.recall:.2f} ({len(report.found)} of {len(report.injected)} injected rings found)")

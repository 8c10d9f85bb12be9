"""`ringwatch detect FILE`: find the rings in a file of payments, offline, on the real engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ringwatch.graph import InvalidDurationError, InvalidSearchOptionError, SearchOptions, format_duration

from .runtime_flags import add_runtime_arguments


def _none_or_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = SearchOptions()
    parser = subparsers.add_parser(
        "detect", help="find the rings in a CSV/JSONL/Parquet/AMLworld file of payments",
        description="Run the ring detector over a file, offline: the file is read in columnar chunks and "
                    "searched by the compiled graph engine in this process (or, with --shards N > 1, in N "
                    "GraphShard actors on a local runtime). Each ring is written once, as a JSON line, in "
                    "trigger order.")
    parser.add_argument("file", type=Path, help="payments: .csv, .jsonl, .parquet, or an AMLworld *_Trans.csv")
    parser.add_argument("--out", type=Path, help="write alerts here as JSON lines (default: standard output)")
    parser.add_argument("--rejected", type=Path,
                        help="write rejected rows with their reasons here (default: <out>.rejected.jsonl)")
    parser.add_argument("--max-hops", type=int, default=defaults.max_hops, help="longest ring, in payments")
    parser.add_argument("--window", default=format_duration(defaults.window_ms),
                        help="time window of a ring: 500ms, 90s, 48h, 7d, or milliseconds")
    parser.add_argument("--order", choices=("strict", "none"), default=defaults.order,
                        help="strict: payments of a ring in time order; none: only inside the window")
    parser.add_argument("--min-amount", help="ignore payments below this amount (exact decimal)")
    parser.add_argument("--min-ratio", type=float, help="flow rule: each hop at least this share of the previous")
    parser.add_argument("--max-ratio", type=float, help="flow rule: each hop at most this share of the previous")
    parser.add_argument("--max-rings-per-tx", type=_none_or_int, default=defaults.max_rings_per_tx,
                        help="cap on rings reported per payment ('none' for no cap)")
    parser.add_argument("--max-degree", type=_none_or_int, default=defaults.max_degree,
                        help="hub guard: accounts with more payments in the window are not expanded ('none' = off)")
    parser.add_argument("--shards", type=int, default=1,
                        help="1: the graph in this process (fastest); N > 1: N GraphShard actors")
    parser.add_argument("--batch-size", type=int, default=4096, help="payments per micro-batch")
    parser.add_argument("--allowed-lateness", default=None,
                        help="payments older than the newest seen minus this are rejected as late (default: the "
                             "window)")
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # The file readers, the compiled graph and the runtime: imported when a file is searched, not for --help.
    from ringwatch.connectors import UnsupportedFileError

    from ..detect import DetectReport, detect, write_alerts_jsonl, write_rejected_jsonl

    if not args.file.exists():
        print(f"ringwatch detect: no such file: {args.file}", file=sys.stderr)
        return 2
    report = DetectReport()
    try:
        alerts = detect(str(args.file), shards=args.shards, batch_size=args.batch_size, report=report,
                        backend=args.backend, address=args.address,
                        max_hops=args.max_hops, window=args.window, order=args.order, min_amount=args.min_amount,
                        min_ratio=args.min_ratio, max_ratio=args.max_ratio,
                        max_rings_per_tx=args.max_rings_per_tx, max_degree=args.max_degree,
                        allowed_lateness=args.allowed_lateness)
    except (InvalidDurationError, InvalidSearchOptionError, UnsupportedFileError) as exc:
        print(f"ringwatch detect: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        for alert in alerts:
            sys.stdout.write(alert.to_json() + "\n")
    else:
        write_alerts_jsonl(alerts, args.out)
    if report.rejected:
        rejected = args.rejected or Path(f"{args.out or 'detect'}.rejected.jsonl")
        write_rejected_jsonl(report, rejected)
        print(f"{len(report.rejected)} rows rejected; reasons in {rejected}", file=sys.stderr)
    print(f"{report.transactions} payments read, {len(alerts)} rings found"
          f"{f', written to {args.out}' if args.out else ''}; {report.duplicates} duplicate payments ignored; "
          f"{report.truncated_searches} searches cut short by the hub guard or the ring cap", file=sys.stderr)
    return 0

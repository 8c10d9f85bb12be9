"""`ringwatch query alerts|rings|neighbors|account|stats`: the query client from a shell.

Tables for people by default, `--json` for scripts. It mirrors `Client` one
subcommand per method, so what a script does in Python an operator can do at
a prompt, with the same token rule (RINGWATCH_TOKEN or --token-file).
"""

from __future__ import annotations

import argparse
import json
import sys

from ringwatch.graph import Alert
from ringwatch.runtime import AuthError, GetTimeoutError
from ringwatch.runtime.cli import TokenMissingError, read_token

from ..query import AccountSummary, Client, EngineStats, InvalidQueryError, Neighbor, QueryError, to_plain
from .tables import moment, print_table, ring_text

DEFAULT_ADDRESS = "127.0.0.1:7070"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "query", help="ask a running engine: alerts, rings through an account, neighbours, an account, stats",
        description="Query a running engine's query service (ringwatch run --query-port PORT). Every call "
                    "carries the cluster token, from --token-file or RINGWATCH_TOKEN.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", default=DEFAULT_ADDRESS, help=f"engine query service (default {DEFAULT_ADDRESS})")
    common.add_argument("--token-file", help="file holding the cluster token (default: RINGWATCH_TOKEN)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    actions = parser.add_subparsers(dest="query_command", metavar="QUERY", required=True)

    alerts = actions.add_parser("alerts", parents=[common], help="alerts raised, newest first",
                                description="Alerts the engine raised, newest first.")
    alerts.add_argument("--since", help="a moment (epoch ms, ISO-8601) or a look-back such as 1h, 2d")
    alerts.add_argument("--account", help="only rings through this account")
    alerts.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    alerts.set_defaults(handler=_alerts)

    rings = actions.add_parser("rings", parents=[common], help="search the rings through an account, now",
                               description="Ad-hoc ring search through ACCOUNT over the engine's live graph.")
    rings.add_argument("account", help="account id")
    rings.add_argument("--max-hops", type=int, default=6, help="longest ring, in payments (default 6)")
    rings.add_argument("--window", default="48h", help="payments of the last WINDOW of event time (default 48h)")
    rings.set_defaults(handler=_rings)

    neighbors = actions.add_parser("neighbors", parents=[common], help="accounts an account's payments reach",
                                   description="Accounts ACCOUNT paid (out), was paid by (in), or either (both), "
                                               "up to --hops payments away.")
    neighbors.add_argument("account", help="account id")
    neighbors.add_argument("--direction", choices=("out", "in", "both"), default="out", help="default out")
    neighbors.add_argument("--hops", type=int, default=2, help="how many payments away (default 2)")
    neighbors.add_argument("--since", help="only payments from this moment, or within this look-back (e.g. 48h)")
    neighbors.set_defaults(handler=_neighbors)

    account = actions.add_parser("account", parents=[common], help="one account: degrees, totals, alerts",
                                 description="Degrees, totals, first and last payment and alerts of ACCOUNT.")
    account.add_argument("account", help="account id")
    account.set_defaults(handler=_account)

    stats = actions.add_parser("stats", parents=[common], help="throughput, lag, latency, shards, checkpoint age",
                               description="The engine's throughput, lag, alert latency, graph size and "
                                           "checkpoint age.")
    stats.set_defaults(handler=_stats)


def _client(args: argparse.Namespace) -> Client:
    token = read_token(args.token_file)
    return Client(args.address, token=token)


def _run(args: argparse.Namespace, ask, show) -> int:
    try:
        with _client(args) as client:
            answer = ask(client)
    except (TokenMissingError, OSError) as exc:  # OSError: the token file; ConnectionError is one too
        print(f"ringwatch query: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, ConnectionError) else 2
    except (AuthError, GetTimeoutError, QueryError) as exc:
        print(f"ringwatch query: {exc}", file=sys.stderr)
        return 1
    except InvalidQueryError as exc:
        print(f"ringwatch query: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(to_plain(answer), indent=2))
    else:
        show(answer)
    return 0


def _alerts(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.alerts(since=args.since, account=args.account, limit=args.limit), _alert_table)


def _rings(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.rings_through(args.account, max_hops=args.max_hops, window=args.window),
                _alert_table)


def _neighbors(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.neighbors(args.account, direction=args.direction, hops=args.hops,
                                            since=args.since), _neighbor_table)


def _account(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.account(args.account), _account_view)


def _stats(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.stats(), _stats_view)


def _alert_table(alerts: list[Alert]) -> None:
    if not alerts:
        print("no rings")
        return
    print_table(["last payment", "hops", "amount", "ring", "alert id"],
                [[moment(a.last_ts), a.hops, f"{a.total_amount:,.2f}", ring_text(a.accounts)
                  + (" (truncated)" if a.truncated else ""), a.alert_id[:12]] for a in alerts])


def _neighbor_table(neighbors: list[Neighbor]) -> None:
    if not neighbors:
        print("no neighbours")
        return
    print_table(["hops", "account", "payments", "amount", "first", "last"],
                [[n.hops, n.account + (" (hub)" if n.hub else ""), n.payments, f"{n.amount:,.2f}",
                  moment(n.first_ts), moment(n.last_ts)] for n in neighbors])


def _account_view(summary: AccountSummary) -> None:
    if not summary.known:
        print(f"{summary.account}: no payments in the engine's window")
        return
    print_table(["account", "shard", "out", "in", "paid", "received", "counterparties", "first seen", "last seen"],
                [[summary.account, summary.shard, summary.out_degree, summary.in_degree,
                  f"{summary.out_amount:,.2f}", f"{summary.in_amount:,.2f}", summary.counterparties,
                  moment(summary.first_seen), moment(summary.last_seen)]])
    print(f"\nin {len(summary.alert_ids)} alerts" + (f": {', '.join(summary.alert_ids[:10])}"
                                                       + (" ..." if len(summary.alert_ids) > 10 else "")
                                                       if summary.alert_ids else ""))


def _stats_view(stats: EngineStats) -> None:
    latency = "  ".join(f"{k} {v:.1f} ms" for k, v in stats.latency_ms.items()) or "-"
    age = f"{stats.checkpoint_age_s:.1f} s ago (#{stats.checkpoint_id})" if stats.checkpoint_age_s is not None else "-"
    rows = [
        ("transactions", f"{stats.transactions:,}"), ("alerts", f"{stats.alerts:,}"),
        ("throughput", f"{stats.throughput_tx_s:,.0f} tx/s now, {stats.average_tx_s:,.0f} tx/s on average"),
        ("alert latency", latency), ("lag", ", ".join(f"{p} {n}" for p, n in stats.lag.items()) or "-"),
        ("shards", f"{stats.shards} holding {stats.edges_stored:,} edge records"),
        ("newest payment", moment(stats.newest_ts)), ("last checkpoint", age),
        ("dead letters", ", ".join(f"{k} {v}" for k, v in stats.dead_letters.items()) or "0"),
        ("uptime", f"{stats.uptime_s:,.0f} s"),
    ]
    for name, value in rows:
        print(f"{name:<16}{value}")

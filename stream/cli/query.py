"""`ringwatch query health|stats|alerts|rings|neighbors|account|subgraph`: the query client from a shell.

Tables for people by default, `--json` for scripts. It mirrors `Client` one
subcommand per method, so what a script does in Python an operator can do at
a prompt, with the same token rule (the read-only query token: --token-file,
RINGWATCH_QUERY_TOKEN, or derived from RINGWATCH_TOKEN) and optional TLS
(--tls-cert/--tls-key/--tls-ca, default RINGWATCH_TLS_*).
`health` exits 1 unless the engine is "ok", for probes; `subgraph` also writes
GraphML (Gephi, yEd, Cytoscape, `networkx.read_graphml`) and node-link JSON
(`networkx.node_link_graph`, d3).
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ringwatch.runtime import AuthError, GetTimeoutError
from ringwatch.runtime.cli import add_tls_options, read_query_token, tls_from_args
from ringwatch.runtime.errors import TlsConfigError, TokenMissingError

from ..display import alert_total, money, moment, ring_text, total
from .tables import print_table

if TYPE_CHECKING:  # the client (grpc) and networkx are imported when a query runs, not for `ringwatch --help`
    import networkx as nx

    from ringwatch.graph import Alert

    from ..query import AccountSummary, Client, EngineStats, Health, Neighbor

DEFAULT_ADDRESS = "127.0.0.1:7070"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "query", help="ask a running engine: alerts, rings through an account, neighbours, an account, stats",
        description="Query a running engine's query service (ringwatch run --query-port PORT). Every call "
                    "is signed with the engine's read-only query token, from --token-file, "
                    "RINGWATCH_QUERY_TOKEN, or derived from RINGWATCH_TOKEN.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", default=DEFAULT_ADDRESS, help=f"engine query service (default {DEFAULT_ADDRESS})")
    common.add_argument("--token-file", help="file holding the query token (default: RINGWATCH_QUERY_TOKEN, else "
                                             "derived from RINGWATCH_TOKEN)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_tls_options(common, "the query service (an engine started with service.query_tls_*)")
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

    health = actions.add_parser("health", parents=[common], help="is the engine up and consuming (exit 1 if not)",
                                description="The engine's status (ok, starting, failed), uptime and counts. "
                                            "Exits 0 when the status is ok, 1 otherwise: usable as a probe.")
    health.set_defaults(handler=_health)

    graph = actions.add_parser("subgraph", parents=[common], help="the payments around accounts, as a table, "
                               "GraphML or JSON", description="The accounts within --hops payments of ACCOUNT... "
                               "and every payment between them in the engine's window. A table by default; "
                               "--graphml or --json (node-link) for graph tools, to stdout or --output FILE.")
    graph.add_argument("accounts", nargs="+", metavar="ACCOUNT", help="account id(s) to start from")
    graph.add_argument("--hops", type=int, default=1, help="how many payments away (default 1)")
    graph.add_argument("--since", help="only payments from this moment, or within this look-back (e.g. 48h)")
    graph.add_argument("--graphml", action="store_true", help="write GraphML instead of a table")
    graph.add_argument("--output", type=Path, help="write the graph to this file instead of stdout")
    graph.set_defaults(handler=_subgraph)

    stats = actions.add_parser("stats", parents=[common], help="throughput, lag, latency, shards, checkpoint age",
                               description="The engine's throughput, lag, alert latency, graph size and "
                                           "checkpoint age.")
    stats.set_defaults(handler=_stats)


def _client(args: argparse.Namespace) -> Client:
    from ..query import Client

    return Client(args.address, token=read_query_token(args.token_file), tls=tls_from_args(args))


def _plain_json(answer: Any) -> str:
    from ..query import to_plain

    return json.dumps(to_plain(answer), indent=2)


def _run(args: argparse.Namespace, ask, show, *, exit_code=lambda answer: 0, as_json=_plain_json) -> int:
    """Ask, then print the answer: `show` for people, `as_json` with --json; errors named, with an exit code."""
    from ..query import InvalidQueryError, QueryError

    try:
        with _client(args) as client:
            answer = ask(client)
    except (TokenMissingError, TlsConfigError, OSError) as exc:  # OSError: the token file; ConnectionError too
        print(f"ringwatch query: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, ConnectionError) else 2
    except (AuthError, GetTimeoutError, QueryError) as exc:
        print(f"ringwatch query: {exc}", file=sys.stderr)
        return 1
    except InvalidQueryError as exc:
        print(f"ringwatch query: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(as_json(answer))
    else:
        show(answer)
    return exit_code(answer)


def _health(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.health(), _health_view, exit_code=lambda health: 0 if health.status == "ok" else 1)


def _subgraph(args: argparse.Namespace) -> int:
    if args.json and args.graphml:
        print("ringwatch query subgraph: choose one of --json and --graphml", file=sys.stderr)
        return 2
    fetch = lambda c: c.subgraph(args.accounts, hops=args.hops, since=args.since)  # noqa: E731
    if args.output:
        return _run(args, fetch, lambda graph: print(_write_graph(graph, args.output, graphml=args.graphml)),
                    as_json=lambda graph: _write_graph(graph, args.output, graphml=False))
    if args.graphml:
        return _run(args, fetch, lambda graph: print(graph_text(graph, graphml=True), end=""))
    return _run(args, fetch, _subgraph_table, as_json=lambda graph: graph_text(graph, graphml=False))


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
                [[moment(a.last_ts), a.hops, alert_total(a), ring_text(a.accounts)
                  + (" (truncated)" if a.truncated else ""), a.alert_id] for a in alerts], right=["amount"])


def _neighbor_table(neighbors: list[Neighbor]) -> None:
    if not neighbors:
        print("no neighbours")
        return
    print_table(["hops", "account", "payments", "amount", "first", "last"],
                [[n.hops, n.account + (" (hub)" if n.hub else ""), n.payments, total(n.amount, n.currency, n.totals),
                  moment(n.first_ts), moment(n.last_ts)] for n in neighbors], right=["amount"])


def _account_view(summary: AccountSummary) -> None:
    if not summary.known:
        print(f"{summary.account}: no payments in the engine's window")
        return
    print_table(["account", "shard", "out", "in", "paid", "received", "counterparties", "first seen", "last seen"],
                [[summary.account, summary.shard, summary.out_degree, summary.in_degree,
                  total(summary.out_amount, summary.out_currency, summary.out_totals),
                  total(summary.in_amount, summary.in_currency, summary.in_totals), summary.counterparties,
                  moment(summary.first_seen), moment(summary.last_seen)]])
    print(f"\nin {len(summary.alert_ids)} alerts" + (f": {', '.join(summary.alert_ids[:10])}"
                                                       + (" ..." if len(summary.alert_ids) > 10 else "")
                                                       if summary.alert_ids else ""))


def _health_view(health: Health) -> None:
    print(f"{health.status}  up {health.uptime_s:,.0f} s  {health.transactions:,} transactions  "
          f"{health.alerts:,} alerts")


def _subgraph_table(graph: nx.MultiDiGraph) -> None:
    hubs = sorted(node for node, hub in graph.nodes(data="hub") if hub)
    print(f"{graph.number_of_nodes()} accounts, {graph.number_of_edges()} payments"
          + (f"; hubs not expanded: {', '.join(hubs)}" if hubs else ""))
    payments = sorted(graph.edges(data=True), key=lambda edge: (edge[2]["ts"], edge[2]["tx_id"]))
    if payments:
        print()
        print_table(["time", "from", "to", "amount", "payment"],
                    [[moment(d["ts"]), src, dst, money(d["amount"], d.get("currency")), d["tx_id"]]
                     for src, dst, d in payments],
                    right=["amount"])


def graph_text(graph: nx.MultiDiGraph, *, graphml: bool) -> str:
    """GraphML (values as GraphML types: exact amounts as decimal text) or networkx node-link JSON."""
    import networkx as nx

    if not graphml:
        return json.dumps(nx.node_link_data(graph, edges="edges"), indent=2, default=_exact) + "\n"
    plain = nx.MultiDiGraph()
    plain.add_nodes_from((node, _graphml_values(data)) for node, data in graph.nodes(data=True))
    plain.add_edges_from((src, dst, key, _graphml_values(data)) for src, dst, key, data in graph.edges(keys=True, data=True))
    return "\n".join(nx.generate_graphml(plain, named_key_ids=True)) + "\n"


def _write_graph(graph: nx.MultiDiGraph, output: Path, *, graphml: bool) -> str:
    output.write_text(graph_text(graph, graphml=graphml), encoding="utf-8")
    return f"{graph.number_of_nodes()} accounts, {graph.number_of_edges()} payments written to {output}"


def _graphml_values(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _exact(v) if isinstance(v, Decimal) else v for k, v in data.items() if v is not None}


def _exact(value: Any) -> str:
    """Amounts leave as exact decimal text, never a float approximation."""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


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

"""The query service of a running `ringwatch run`: a real Tansu topic in, the Python client against the
engine's gRPC port, answers checked against networkx computed from the payments themselves."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import networkx as nx
import pytest

from engine_harness import EngineProcess, create_topic, jsonl_ids, wait_until
from graph_oracle import oracle
from ringwatch.connectors import SyntheticConfig, SyntheticStream, generate, produce_transactions
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.graph import SearchOptions, Transaction, parse_duration
from ringwatch.runtime import AuthError
from ringwatch.runtime.errors import TokenMissingError
from ringwatch.stream import Client, EngineUnreachableError, InvalidQueryError
from ringwatch.stream.query.service import Money, to_plain

DEADLINE_S = 120.0
WINDOW = "30d"  # longer than the stream: nothing is evicted, so the whole stream is the expected graph
HAND_RING = ("RW-X1", "RW-X2", "RW-X3")


@dataclass
class Deployment:
    stream: SyntheticStream
    client: Client
    address: str
    token: str
    alerts_file: object
    engine: EngineProcess
    topic: str
    bootstrap: str
    payments: list[Transaction] = field(default_factory=list)  # everything produced so far, in order


def hand_ring_payments(after_ts: int) -> list[Transaction]:
    """X1 -> X2 -> X3 -> X1, a minute apart, after the synthetic stream; the last one closes it."""
    a, b, c = HAND_RING
    return [Transaction("hand-1", a, b, 5000.0, after_ts + 60_000), Transaction("hand-2", b, c, 4900.0, after_ts + 120_000),
            Transaction("hand-3", c, a, 4800.0, after_ts + 180_000)]


@pytest.fixture(scope="module")
def deployment(kafka_bootstrap, tmp_path_factory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("query")
    topic = f"query-{secrets.token_hex(4)}"
    stream = generate(SyntheticConfig(n_transactions=3_000, n_accounts=600, n_rings=10, days=3, seed=11))
    payments = stream.transactions + hand_ring_payments(int(stream.ts[-1]))[:2]
    create_topic(kafka_bootstrap, topic, 1)
    produce_transactions(kafka_bootstrap, topic, payments)
    token, port = secrets.token_hex(16), free_port()
    alerts_file = tmp / "alerts.jsonl"
    engine = EngineProcess(["--kafka-bootstrap", kafka_bootstrap, "--topic", topic, "--group", f"{topic}-g",
                            "--state-dir", str(tmp / "state"), "--alerts-file", str(alerts_file),
                            "--window", WINDOW, "--max-degree", "none", "--query-port", str(port)],
                           tmp / "engine.log", env={"RINGWATCH_QUERY_TOKEN": token}).start()
    client = Client(f"127.0.0.1:{port}", token=token)
    try:
        wait_until(lambda: not engine.alive() or _consumed(client) == len(payments), DEADLINE_S,
                   "the engine to consume every payment")
        assert engine.alive(), engine.log()
        # Alerts reach the sinks (the history among them) while the next batch runs: wait for the last ones.
        wait_until(lambda: len(client.alerts(limit=100_000)) == len(jsonl_ids(alerts_file)) == client.stats().alerts,
                   DEADLINE_S, "every alert raised to be delivered (history and file)")
        yield Deployment(stream, client, f"127.0.0.1:{port}", token, alerts_file, engine, topic, kafka_bootstrap,
                         payments)
    finally:
        client.close()
        engine.ensure_stopped()


def _consumed(client: Client) -> int:
    try:
        return client.health().transactions
    except EngineUnreachableError:
        return -1


def payment_graph(payments: list[Transaction]) -> nx.MultiDiGraph:
    graph = nx.MultiDiGraph()
    for tx in payments:
        graph.add_edge(tx.src, tx.dst, key=tx.tx_id, amount=tx.amount, ts=tx.ts)
    return graph


def test_health_and_stats_describe_the_running_engine(deployment):
    health, stats = deployment.client.health(), deployment.client.stats()
    assert health.status == "ok"
    assert stats.transactions == health.transactions == len(deployment.payments)
    assert stats.alerts == len(jsonl_ids(deployment.alerts_file))
    assert stats.shards == 2
    assert stats.edges_stored >= len(deployment.payments)  # once per shard holding it: twice when src, dst part
    assert stats.newest_ts == max(tx.ts for tx in deployment.payments)
    assert set(stats.latency_ms) == {"p50", "p95", "p99", "max"}
    assert stats.latency_ms["p50"] <= stats.latency_ms["p99"] <= stats.latency_ms["max"]
    assert stats.batches >= 1


def test_alerts_newest_first_filtered_by_account_and_limited(deployment):
    client = deployment.client
    in_file = [json.loads(line) for line in deployment.alerts_file.read_text().splitlines()]
    everything = client.alerts(limit=10_000)
    assert [a.alert_id for a in everything] == [a["alert_id"] for a in reversed(in_file)]
    assert [a.alert_id for a in client.alerts(limit=3)] == [a.alert_id for a in everything[:3]]
    ring = deployment.stream.rings[0]
    mine = client.alerts(account=ring.accounts[0], limit=10_000)
    assert mine and all(ring.accounts[0] in a.accounts for a in mine)
    assert {a.alert_id for a in mine} == {a["alert_id"] for a in in_file if ring.accounts[0] in a["accounts"]}
    assert client.alerts(since="1h", limit=10_000) == everything  # raised moments ago
    assert client.alerts(since=everything[0].detected_at + 1) == []


def test_rings_through_an_account_match_networkx(deployment):
    stream = deployment.stream
    options = SearchOptions(window_ms=parse_duration(WINDOW), max_rings_per_tx=None)
    payments = stream.transactions
    graph = payment_graph(payments).to_undirected(as_view=True)
    busiest = Counter(a for alert in deployment.client.alerts(limit=10_000) for a in alert.accounts
                      if not a.startswith("RW-")).most_common(1)[0][0]
    for account in (busiest, stream.rings[0].accounts[0], stream.rings[1].accounts[-1]):
        near = set(nx.single_source_shortest_path_length(graph, account, cutoff=math.ceil(options.max_hops / 2)))
        nearby = [tx for tx in payments if tx.src in near and tx.dst in near]
        expected = {_cycle(ring.accounts) for ring in oracle(nearby, options).values() if account in ring.accounts}
        found = deployment.client.rings_through(account, max_hops=6, window=WINDOW)
        assert {_cycle(r.accounts) for r in found} == expected
        assert len(found) == len(expected)
        assert [r.last_ts for r in found] == sorted((r.last_ts for r in found), reverse=True)
    injected = stream.rings[0]
    assert _cycle(injected.accounts) in {_cycle(r.accounts) for r in
                                         deployment.client.rings_through(injected.accounts[-1], window=WINDOW)}


def test_neighbors_are_the_accounts_payments_reach(deployment):
    graph = payment_graph(deployment.stream.transactions)
    account = deployment.stream.rings[2].accounts[0]
    for direction, view in (("out", graph), ("in", graph.reverse(copy=False)),
                            ("both", graph.to_undirected(as_view=True))):
        distances = nx.single_source_shortest_path_length(view, account, cutoff=2)
        found = deployment.client.neighbors(account, direction=direction, hops=2)
        assert {n.account: n.hops for n in found} == {a: d for a, d in distances.items() if a != account}
        assert [n.hops for n in found] == sorted(n.hops for n in found)
    first_hop = {n.account: n for n in deployment.client.neighbors(account, "out", hops=1)}
    for peer, neighbor in first_hop.items():
        paid = [d for d in graph.get_edge_data(account, peer).values()]
        assert neighbor.payments == len(paid)
        assert neighbor.amount == sum((d["amount"] for d in paid), Decimal(0))  # exact, not a float
        assert isinstance(neighbor.amount, Decimal) and (neighbor.currency, neighbor.totals) == ("EUR", {})
        assert (neighbor.first_ts, neighbor.last_ts) == (min(d["ts"] for d in paid), max(d["ts"] for d in paid))
    newest = max(tx.ts for tx in deployment.payments)
    recent = deployment.client.neighbors(account, "out", hops=1, since=newest - 86_400_000)
    assert {n.account for n in recent} == {tx.dst for tx in deployment.stream.transactions
                                           if tx.src == account and tx.ts >= newest - 86_400_000}


def test_subgraph_is_a_multidigraph_of_the_payments(deployment):
    ring = deployment.stream.rings[3]
    expected = payment_graph(deployment.stream.transactions)
    near = set(ring.accounts[:2])
    for account in ring.accounts[:2]:
        near |= set(expected.successors(account)) | set(expected.predecessors(account))
    got = deployment.client.subgraph(ring.accounts[:2], hops=1)
    assert isinstance(got, nx.MultiDiGraph)
    assert set(got.nodes) == near
    wanted = {(s, d, k) for s, d, k in expected.edges(keys=True) if s in ring.accounts[:2] or d in ring.accounts[:2]}
    assert set(got.edges(keys=True)) == wanted
    for tx_id in ring.tx_ids[:-1]:
        tx = next(t for t in deployment.stream.transactions if t.tx_id == tx_id)
        if tx.src in ring.accounts[:2] or tx.dst in ring.accounts[:2]:
            data = got.get_edge_data(tx.src, tx.dst, key=tx_id)
            assert (data["amount"], data["ts"]) == (tx.amount, tx.ts)


def test_account_summary_from_the_live_window(deployment):
    account = deployment.stream.rings[4].accounts[1]
    sent = [tx for tx in deployment.stream.transactions if tx.src == account]
    received = [tx for tx in deployment.stream.transactions if tx.dst == account]
    summary = deployment.client.account(account)
    assert summary.known
    assert (summary.out_degree, summary.in_degree) == (len(sent), len(received))
    assert summary.out_amount == sum((tx.amount for tx in sent), Decimal(0))  # exact, not a float
    assert summary.in_amount == sum((tx.amount for tx in received), Decimal(0))
    assert isinstance(summary.out_amount, Decimal) and (summary.out_currency, summary.in_currency) == ("EUR", "EUR")
    assert summary.first_seen == min(tx.ts for tx in sent + received)
    assert summary.last_seen == max(tx.ts for tx in sent + received)
    assert summary.counterparties == len({tx.dst for tx in sent} | {tx.src for tx in received})
    assert set(summary.alert_ids) == {a.alert_id for a in deployment.client.alerts(account=account, limit=10_000)}
    assert summary.alert_ids


def test_unknown_account_gives_empty_answers_not_errors(deployment):
    client = deployment.client
    summary = client.account("nobody-at-all")
    assert not summary.known and (summary.out_degree, summary.in_degree, summary.alert_ids) == (0, 0, [])
    assert client.alerts(account="nobody-at-all") == []
    assert client.rings_through("nobody-at-all") == []
    assert client.neighbors("nobody-at-all", direction="both") == []
    assert list(client.subgraph(["nobody-at-all"]).edges) == []


def test_bad_arguments_are_named(deployment):
    with pytest.raises(InvalidQueryError, match="direction"):
        deployment.client.neighbors("A1", direction="sideways")
    with pytest.raises(InvalidQueryError, match="window"):
        deployment.client.rings_through("A1", window="soon")
    with pytest.raises(InvalidQueryError, match="hops"):
        deployment.client.neighbors("A1", hops=99)


def test_wrong_or_missing_token_is_refused(deployment):
    with Client(deployment.address, token="not-the-token") as intruder:
        with pytest.raises(AuthError, match=deployment.address):
            intruder.health()
    with pytest.raises(TokenMissingError):
        Client(deployment.address, token="")


def test_unreachable_engine_is_a_connection_error_naming_the_address():
    address = f"127.0.0.1:{free_port()}"
    with Client(address, token="t") as client:
        with pytest.raises(ConnectionError, match=address):
            client.stats()


def test_engine_with_a_query_port_but_no_token_refuses_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RINGWATCH_TOKEN", "RINGWATCH_QUERY_TOKEN")}
    result = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "run", "--topic", "t",
                             "--alerts-file", str(tmp_path / "a"), "--query-port", str(free_port())],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "service.query_port" in result.stderr and "RINGWATCH_QUERY_TOKEN" in result.stderr


def query_cli(deployment: Deployment, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RINGWATCH_QUERY_TOKEN": deployment.token if token is None else token}
    return subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "query", *args[:1], "--address",
                           deployment.address, *args[1:]], capture_output=True, text=True, timeout=60, env=env)


def test_cli_json_answers_equal_the_client(deployment):
    client, ring = deployment.client, deployment.stream.rings[0]
    account = ring.accounts[0]
    as_json = lambda *args: json.loads(query_cli(deployment, *args, "--json").stdout)  # noqa: E731
    assert as_json("alerts", "--limit", "5") == [a.to_dict() for a in client.alerts(limit=5)]
    assert as_json("alerts", "--account", account) == [a.to_dict() for a in client.alerts(account=account)]
    searched_now = lambda rings: [{**r, "detected_at": None} for r in rings]  # noqa: E731 - each search's moment
    assert searched_now(as_json("rings", account, "--window", WINDOW)) == searched_now(
        [r.to_dict() for r in client.rings_through(account, window=WINDOW)])
    neighbors = as_json("neighbors", account, "--direction", "both", "--hops", "2")
    assert neighbors == [to_plain(n) for n in client.neighbors(account, direction="both", hops=2)]
    summary = as_json("account", account)
    assert summary == to_plain(client.account(account))
    # amounts travel as exact decimal strings, never JSON floats
    assert all(isinstance(n["amount"], str) for n in neighbors)
    assert isinstance(summary["out_amount"], str) and Decimal(summary["out_amount"]) == client.account(account).out_amount
    assert as_json("stats")["transactions"] == client.stats().transactions


def test_cli_health_is_a_probe(deployment):
    health = query_cli(deployment, "health")
    assert health.returncode == 0, health.stderr
    assert health.stdout.startswith("ok ") and f"{len(deployment.payments):,} transactions" in health.stdout
    as_json = json.loads(query_cli(deployment, "health", "--json").stdout)
    assert {**as_json, "uptime_s": 0} == {**dataclasses.asdict(deployment.client.health()), "uptime_s": 0}
    down = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "query", "health", "--address",
                           f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RINGWATCH_TOKEN": "t"})
    assert down.returncode == 1 and "no ringwatch query service answers" in down.stderr


def test_cli_subgraph_as_graphml_json_and_table(deployment, tmp_path):
    ring = deployment.stream.rings[3]
    expected = deployment.client.subgraph(ring.accounts[:2], hops=1)
    assert expected.number_of_edges() > 0

    graphml = query_cli(deployment, "subgraph", *ring.accounts[:2], "--graphml")
    assert graphml.returncode == 0, graphml.stderr
    read = nx.parse_graphml(graphml.stdout, force_multigraph=True)
    assert set(read.nodes) == set(expected.nodes)
    assert set(read.edges(keys=True)) == set(expected.edges(keys=True))
    for src, dst, key, data in expected.edges(keys=True, data=True):
        got = read.edges[src, dst, key]
        assert (Decimal(str(got["amount"])), got["ts"], got["tx_id"]) == (Decimal(str(data["amount"])), data["ts"], key)
    assert {n: read.nodes[n]["hops"] for n in read} == dict(expected.nodes(data="hops"))

    as_json = query_cli(deployment, "subgraph", *ring.accounts[:2], "--json")
    linked = nx.node_link_graph(json.loads(as_json.stdout), edges="edges")
    assert isinstance(linked, nx.MultiDiGraph)
    assert set(linked.edges(keys=True)) == set(expected.edges(keys=True))

    out = tmp_path / "ring.graphml"
    written = query_cli(deployment, "subgraph", *ring.accounts[:2], "--graphml", "--output", str(out))
    assert written.returncode == 0 and str(out) in written.stdout
    assert set(nx.read_graphml(out, force_multigraph=True).edges(keys=True)) == set(expected.edges(keys=True))

    table = query_cli(deployment, "subgraph", *ring.accounts[:2]).stdout
    assert f"{expected.number_of_nodes()} accounts, {expected.number_of_edges()} payments" in table
    assert all(tx_id in table for _, _, tx_id in expected.edges(keys=True))


def test_cli_tables_for_people(deployment):
    ring = deployment.stream.rings[0]
    rings = query_cli(deployment, "rings", ring.accounts[0], "--window", WINDOW)
    assert rings.returncode == 0, rings.stderr
    assert " -> ".join(ring.accounts + ring.accounts[:1]) in rings.stdout
    stats = query_cli(deployment, "stats").stdout
    assert f"transactions    {len(deployment.payments):,}" in stats
    summary = query_cli(deployment, "account", ring.accounts[0]).stdout
    assert ring.accounts[0] in summary and "alerts" in summary
    assert "no payments" in query_cli(deployment, "account", "nobody-at-all").stdout


def test_cli_errors_are_named_with_an_exit_code(deployment, tmp_path):
    refused = query_cli(deployment, "stats", token="wrong")
    assert refused.returncode == 1 and "refused" in refused.stderr and deployment.address in refused.stderr
    token_file = tmp_path / "token"
    token_file.write_text(deployment.token + "\n")
    assert query_cli(deployment, "stats", "--token-file", str(token_file), token="wrong").returncode == 0
    bad = query_cli(deployment, "neighbors", "A1", "--hops", "99")
    assert bad.returncode == 2 and "hops" in bad.stderr
    nobody = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "query", "stats", "--address",
                             f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "RINGWATCH_TOKEN": "t"})
    assert nobody.returncode == 1 and "no ringwatch query service answers" in nobody.stderr


def test_queries_read_the_live_graph_while_it_ingests(deployment):
    """Runs last: the ring's closing payment arrives while the engine serves queries."""
    client = deployment.client
    assert client.rings_through(HAND_RING[0], window=WINDOW) == []
    closing = hand_ring_payments(int(deployment.stream.ts[-1]))[2]
    produce_transactions(deployment.bootstrap, deployment.topic, [closing])
    deployment.payments.append(closing)
    wait_until(lambda: client.health().transactions == len(deployment.payments), DEADLINE_S,
               "the closing payment to be consumed")
    # Alerts reach the sinks (the history among them) while the next batch runs: wait for this one.
    wait_until(lambda: client.alerts(account=HAND_RING[0]), DEADLINE_S, "the hand ring's alert")
    (alert,) = client.alerts(account=HAND_RING[0])
    assert alert.trigger_tx_id == "hand-3" and set(alert.accounts) == set(HAND_RING)
    (ring,) = client.rings_through(HAND_RING[1], window=WINDOW)
    assert ring.alert_id == alert.alert_id  # the ad-hoc search names the ring as the engine did
    assert client.account(HAND_RING[2]).alert_ids == [alert.alert_id]


def _cycle(accounts) -> tuple[str, ...]:
    start = min(range(len(accounts)), key=lambda i: accounts[i])
    return tuple(accounts[start:]) + tuple(accounts[:start])


def test_totals_of_payments_in_several_currencies_are_kept_per_currency():
    """No sum across currencies passes for money: a mixed set reports each currency's exact total."""
    mixed = Money.of([{"amount": Decimal("0.10"), "currency": "EUR"}, {"amount": Decimal("0.20"), "currency": "EUR"},
                      {"amount": Decimal("7"), "currency": "USD"}, {"amount": Decimal("1.5"), "currency": None}])
    assert (mixed.currency, mixed.totals) == ("mixed", {"": Decimal("1.5"), "EUR": Decimal("0.30"),
                                                        "USD": Decimal("7")})
    assert Money.of([{"amount": Decimal("0.1"), "currency": "EUR"}] * 3) == Money(Decimal("0.3"), "EUR", {})
    assert Money.of([]) == Money(Decimal(0), None, {})

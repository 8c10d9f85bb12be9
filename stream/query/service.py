"""The query service of a running engine: what analysts and operators ask it, over signed gRPC.

Queries read the live `GraphShard` actors directly — the same actors the
engine's loop writes to — so nothing pauses ingestion: an actor answers a
query between two of the engine's batched calls, and the answer reflects the
graph as it was at that moment.

The wire is JSON, not pickle, in both directions: the client never unpickles
what a server sends. Calls ride on the runtime's signed gRPC
(`ringwatch.runtime.rpc`) under a key derived from the read-only query token,
which is not the cluster token and cannot be turned into it: each request is
signed (checked before its body is read), each answer sealed, and the token
itself never travels. Optional TLS with client certificates. The service
listens on 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import networkx as nx

from ringwatch.graph import (
    MIXED,
    Alert,
    InvalidDurationError,
    InvalidSearchOptionError,
    InvalidTransactionError,
    LocalRingGraph,
    RingGraph,
    SearchOptions,
    Transaction,
    decimal_text,
    parse_duration,
    parse_timestamp,
    shard_of,
    subgraph,
)
from ringwatch.graph.export import DIRECTIONS
from ringwatch.runtime.auth import query_call_key
from ringwatch.runtime.errors import RingwatchError
from ringwatch.runtime.rpc import SignedServer
from ringwatch.runtime.tls import TlsFiles

from ..config import ConfigError

logger = logging.getLogger(__name__)

SERVICE = "ringwatch.Query"
METHOD = "Call"
# Calls are signed for the query service as such, not for one address: clients reach it by many names.
AUDIENCE = "ringwatch-query"
MAX_HOPS_LIMIT = 10  # a neighbourhood or ring query deeper than this is a mistake, not a question
MAX_LIMIT = 100_000

R = TypeVar("R")


class InvalidQueryError(RingwatchError, ValueError):
    """A query argument the service cannot use; the message names it."""


class QueryError(RingwatchError, RuntimeError):
    """The engine failed to answer a valid query; the message carries the engine's reason."""


# ---- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """Is the engine up and consuming. `status` is "ok", "starting" or "failed"."""

    status: str
    uptime_s: float
    transactions: int
    alerts: int


@dataclass(frozen=True)
class EngineStats:
    """What an operator watches: throughput, lag, alert latency, the graph's size, checkpoint age.

    `throughput_tx_s` is over the last `THROUGHPUT_WINDOW_S` seconds, `average_tx_s`
    since start; latency percentiles (ms, from a payment's arrival to its alert)
    are over the most recent alerts; `lag` maps "topic[partition]" to messages
    behind, as of the source's last poll; `newest_ts` is the newest payment time seen.
    """

    transactions: int
    alerts: int
    batches: int
    uptime_s: float
    throughput_tx_s: float
    average_tx_s: float
    latency_ms: dict[str, float]
    lag: dict[str, int]
    shards: int
    edges_stored: int
    checkpoint_id: int | None
    checkpoint_age_s: float | None
    newest_ts: int | None
    dead_letters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Neighbor:
    """An account `hops` payments away, with the payments that reached it from the hop before.

    Money as on an `Alert`: `amount` is exact (a `Decimal`; a decimal string in
    JSON), `currency` the payments' currency (None without one, "mixed" when
    they differ, and then `totals` holds the total per currency).
    """

    account: str
    hops: int
    payments: int
    amount: Decimal
    first_ts: int
    last_ts: int
    hub: bool = False
    currency: str | None = None
    totals: dict[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class AccountSummary:
    """One account as the engine's window holds it; an account it never saw has zeros and `known=False`.

    `out_amount` and `in_amount` are exact (`Decimal`); `out_currency` and
    `in_currency` are the currency of the payments it sent and received (None
    without one, "mixed" when they differ: then `out_totals`/`in_totals` hold
    the totals per currency).
    """

    account: str
    known: bool
    shard: int
    out_degree: int
    in_degree: int
    out_amount: Decimal
    in_amount: Decimal
    counterparties: int
    first_seen: int | None
    last_seen: int | None
    alert_ids: list[str] = field(default_factory=list)
    out_currency: str | None = None
    in_currency: str | None = None
    out_totals: dict[str, Decimal] = field(default_factory=dict)
    in_totals: dict[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class Money:
    """Payments' exact total with the `Alert` conventions: one currency, None, or MIXED with `totals`."""

    total: Decimal
    currency: str | None
    totals: dict[str, Decimal]

    @classmethod
    def of(cls, payments: Sequence[Mapping[str, Any]]) -> "Money":
        by_currency: dict[str, Decimal] = {}
        for payment in payments:
            code = payment.get("currency") or ""
            by_currency[code] = by_currency.get(code, Decimal(0)) + payment["amount"]
        total = sum(by_currency.values(), Decimal(0))
        if len(by_currency) > 1:
            return cls(total, MIXED, dict(sorted(by_currency.items())))
        return cls(total, next(iter(by_currency), "") or None, {})


def record_from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
    """Rebuild a record sent as JSON; keys the class does not know (a newer server) are ignored.

    Fields typed `Decimal` (or `dict[str, Decimal]`) arrive as decimal strings and become exact again.
    """
    if cls is Alert:
        return Alert.from_dict(data)  # type: ignore[return-value]
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in kinds:
            continue
        if kinds[key] == "Decimal" and value is not None:
            value = Decimal(value)
        elif kinds[key] == "dict[str, Decimal]":
            value = {code: Decimal(amount) for code, amount in value.items()}
        values[key] = value
    return cls(**values)


def to_plain(value: Any) -> Any:
    """Records (and lists of them) as JSON-ready data; every amount as an exact decimal string."""
    if isinstance(value, Alert):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return to_plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, Decimal):
        return decimal_text(value)
    return value


# ---- time arguments --------------------------------------------------------------------------------


def since_spec(value: datetime | timedelta | int | str | None) -> dict[str, int] | None:
    """A `since` argument for the wire: a moment (`{"at": ms}`) or a look-back (`{"ago": ms}`).

    Moments: epoch ms, ISO-8601, `datetime`. Look-backs: `timedelta` or "90s", "48h", "7d".
    The server resolves a look-back against its own "now" (wall clock for alerts,
    the newest payment time for the graph), so a replayed 2024 stream still answers
    "the last 48h" sensibly.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        return {"ago": parse_duration(value, name="since")}
    if isinstance(value, str):
        try:
            return {"ago": parse_duration(value, name="since")}
        except InvalidDurationError:
            pass
    try:
        return {"at": parse_timestamp(value, name="since")}
    except InvalidTransactionError as exc:
        raise InvalidQueryError(f"since: {exc.reason}; or give a look-back such as '48h'") from None


def _resolve_since(spec: Any, now_ms: int | None) -> int | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or len(spec) != 1 or not isinstance(next(iter(spec.values())), int):
        raise InvalidQueryError(f"since: expected {{'at': ms}} or {{'ago': ms}}, got {spec!r}")
    if "at" in spec:
        return spec["at"]
    if "ago" in spec:
        return None if now_ms is None else now_ms - spec["ago"]
    raise InvalidQueryError(f"since: expected {{'at': ms}} or {{'ago': ms}}, got {spec!r}")


# ---- what the engine offers the service ---------------------------------------------------------------


class AlertStore(Protocol):
    """Where the alerts an engine raised are kept for queries (`ringwatch.stream.history.AlertHistory`)."""

    def recent(self, *, since: int | None = None, account: str | None = None, limit: int = 100) -> list[Alert]: ...
    def ids_through(self, account: str) -> list[str]: ...


class QueryableEngine(Protocol):
    """The engine as the query service sees it; `Engine` implements it."""

    def query_graph(self) -> RingGraph | None: ...
    def search_options(self) -> SearchOptions: ...
    def newest_ts(self) -> int | None: ...
    def alert_history(self) -> AlertStore | None: ...
    def health(self) -> Health: ...
    def stats(self) -> EngineStats: ...


class QueryHandler:
    """Answers each query method from the engine's live state; arguments arrive as decoded JSON."""

    def __init__(self, engine: QueryableEngine):
        self.engine = engine
        self._methods: dict[str, Callable[..., Any]] = {
            "health": self.health, "stats": self.stats, "alerts": self.alerts,
            "rings_through": self.rings_through, "neighbors": self.neighbors,
            "subgraph": self.subgraph, "account": self.account,
        }

    def handle(self, method: str, args: Mapping[str, Any]) -> Any:
        target = self._methods.get(method)
        if target is None:
            raise InvalidQueryError(f"unknown query {method!r}; known: {sorted(self._methods)}")
        try:
            return target(**args)
        except TypeError as exc:
            raise InvalidQueryError(f"{method}: {exc}") from None

    def health(self) -> Health:
        return self.engine.health()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def alerts(self, since: dict | None = None, account: str | None = None, limit: int = 100) -> list[Alert]:
        """Newest first, from the engine's alert history (it survives restarts); `since` against when raised."""
        low = _resolve_since(since, int(time.time() * 1000))
        limit = _bounded_int("limit", limit, 0, MAX_LIMIT)
        if account is not None:
            _account(account)
        history = self.engine.alert_history()
        return history.recent(since=low, account=account, limit=limit) if history is not None else []

    def rings_through(self, account: str, max_hops: int = 6, window: str | int = "48h") -> list[Alert]:
        """The distinct rings through `account` among the payments of the last `window` (event time).

        Every account of a ring of `max_hops` payments is within ceil(max_hops/2)
        payments of `account`, so that neighbourhood (hubs not expanded when the
        engine's hub guard is on) is read from the graph and searched by a
        `LocalRingGraph` of its own: the same ring definition as the engine's (a
        function of the set of payments, so one batch finds them all), over a
        graph of a few hundred payments, never touching the engine's state.
        Each ring is the most recent closing of its account cycle, as an `Alert`
        record with the id the engine gives that ring.
        """
        _account(account)
        max_hops = _bounded_int("max_hops", max_hops, 2, MAX_HOPS_LIMIT)
        window_ms = _duration("window", window)
        try:
            options = dataclasses.replace(self.engine.search_options(), max_hops=max_hops, window_ms=window_ms)
        except InvalidSearchOptionError as exc:
            raise InvalidQueryError(str(exc)) from None
        live, now = self.engine.query_graph(), self.engine.newest_ts()
        if live is None or now is None:
            return []
        graph = subgraph(live, [account], hops=math.ceil(max_hops / 2), since=now - window_ms,
                         max_degree=options.max_degree)
        payments = [Transaction(d["tx_id"], src, dst, d["amount"], d["ts"], d["currency"])
                    for src, dst, d in graph.edges(data=True)]
        result = LocalRingGraph(options).process(payments)
        latest: dict[tuple[str, ...], Alert] = {}
        for alert in result.alerts:  # in trigger order: a later closing of the same cycle replaces an earlier one
            if account in alert.accounts:
                latest[_cycle_key(alert.accounts)] = alert
        return sorted(latest.values(), key=lambda a: (a.last_ts, a.alert_id), reverse=True)

    def neighbors(self, account: str, direction: str = "out", hops: int = 2, since: dict | None = None
                  ) -> list[Neighbor]:
        """Accounts reached in `hops` payments; nearest first, then by amount. Hubs are listed, not expanded."""
        _account(account)
        hops = _bounded_int("hops", hops, 1, MAX_HOPS_LIMIT)
        if direction not in DIRECTIONS:
            raise InvalidQueryError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
        live = self.engine.query_graph()
        if live is None:
            return []
        low = _resolve_since(since, self.engine.newest_ts())
        graph = subgraph(live, [account], hops=hops, since=low, direction=direction,
                         max_degree=self.engine.search_options().max_degree)
        reached: dict[str, list[dict]] = {}
        for src, dst, data in graph.edges(data=True):
            near, far = (src, dst) if graph.nodes[dst]["hops"] > graph.nodes[src]["hops"] else (dst, src)
            if graph.nodes[far]["hops"] == graph.nodes[near]["hops"] + 1 and far != account:
                reached.setdefault(far, []).append(data)
        found = []
        for peer, edges in reached.items():
            money = Money.of(edges)
            found.append(Neighbor(peer, graph.nodes[peer]["hops"], len(edges), money.total,
                                  min(e["ts"] for e in edges), max(e["ts"] for e in edges),
                                  bool(graph.nodes[peer].get("hub")), money.currency, money.totals))
        return sorted(found, key=lambda n: (n.hops, -n.amount, n.account))

    def subgraph(self, accounts: Sequence[str], hops: int = 1, since: dict | None = None) -> dict[str, list]:
        """Nodes and payments within `hops` of `accounts`, for the client to rebuild as a MultiDiGraph."""
        if isinstance(accounts, str) or not isinstance(accounts, list):
            raise InvalidQueryError(f"accounts: expected a list of account ids, got {accounts!r}")
        for account in accounts:
            _account(account)
        hops = _bounded_int("hops", hops, 0, MAX_HOPS_LIMIT)
        live = self.engine.query_graph()
        if live is None:
            return {"nodes": [[a, {"hops": 0}] for a in accounts], "edges": []}
        graph = subgraph(live, accounts, hops=hops, since=_resolve_since(since, self.engine.newest_ts()),
                         max_degree=self.engine.search_options().max_degree)
        return graph_to_wire(graph)

    def account(self, account: str) -> AccountSummary:
        _account(account)
        live = self.engine.query_graph()
        num_shards = getattr(live, "num_shards", 1)
        graph = subgraph(live, [account], hops=1) if live is not None else nx.MultiDiGraph()
        out_edges = [d for _, _, d in graph.out_edges(account, data=True)] if account in graph else []
        in_edges = [d for _, _, d in graph.in_edges(account, data=True)] if account in graph else []
        stamps = [d["ts"] for d in out_edges + in_edges]
        peers = {dst for _, dst in graph.out_edges(account)} | {src for src, _ in graph.in_edges(account)} \
            if account in graph else set()
        history = self.engine.alert_history()
        alert_ids = history.ids_through(account) if history is not None else []
        paid, received = Money.of(out_edges), Money.of(in_edges)
        return AccountSummary(
            account=account, known=bool(stamps), shard=shard_of(account, num_shards),
            out_degree=len(out_edges), in_degree=len(in_edges),
            out_amount=paid.total, in_amount=received.total,
            counterparties=len(peers - {account}),
            first_seen=min(stamps) if stamps else None, last_seen=max(stamps) if stamps else None,
            alert_ids=alert_ids, out_currency=paid.currency, in_currency=received.currency,
            out_totals=paid.totals, in_totals=received.totals)


def graph_to_wire(graph: nx.MultiDiGraph) -> dict[str, list]:
    """Nodes and edges as JSON-ready lists; amounts as exact decimal strings."""
    return {"nodes": [[node, dict(data)] for node, data in graph.nodes(data=True)],
            "edges": [[src, dst, key, {**data, "amount": decimal_text(data["amount"])}]
                      for src, dst, key, data in graph.edges(keys=True, data=True)]}


def graph_from_wire(data: Mapping[str, list]) -> nx.MultiDiGraph:
    graph = nx.MultiDiGraph()
    for node, attributes in data["nodes"]:
        graph.add_node(node, **attributes)
    for src, dst, key, attributes in data["edges"]:
        graph.add_edge(src, dst, key=key, **{**attributes, "amount": Decimal(attributes["amount"])})
    return graph


def _cycle_key(accounts: Sequence[str]) -> tuple[str, ...]:
    """The same account cycle whichever account it is written from."""
    start = min(range(len(accounts)), key=lambda i: accounts[i])
    return tuple(accounts[start:]) + tuple(accounts[:start])


def _account(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidQueryError(f"account: expected a non-empty account id, got {value!r}")
    return value


def _bounded_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidQueryError(f"{name}: expected an integer from {low} to {high}, got {value!r}")
    return value


def _duration(name: str, value: Any) -> int:
    try:
        ms = parse_duration(value, name=name)
    except InvalidDurationError as exc:
        raise InvalidQueryError(str(exc)) from None
    if ms is None:
        raise InvalidQueryError(f"{name}: a duration is required")
    return ms


# ---- the gRPC service ----------------------------------------------------------------------------------


class QueryService:
    """The gRPC endpoint: one JSON `Call` method, signed with the query token (TLS with client certificates
    when `tls`)."""

    def __init__(self, handler: QueryHandler, *, token: str, host: str = "127.0.0.1", port: int = 0,
                 tls: TlsFiles | None = None, max_workers: int = 8):
        if not token:
            raise ValueError("the query service needs a query token: every call must prove it holds it")
        self.handler = handler
        try:
            self._server = SignedServer(SERVICE, {METHOD: self._call}, query_call_key(token), host=host, port=port,
                                        tls=tls, audience=AUDIENCE, max_workers=max_workers,
                                        thread_name="ringwatch-query")
        except (OSError, RuntimeError):  # grpc raises RuntimeError (older versions: port 0) when it cannot bind
            raise ConfigError(f"service.query_port: cannot listen on {host}:{port}: the port is in use or the "
                              f"address is not one of this machine's") from None
        self.port = self._server.port
        self.address = self._server.address

    def start(self) -> "QueryService":
        self._server.start()
        logger.info("query service listening on %s", self.address)
        return self

    def stop(self, grace_s: float = 2.0) -> None:
        self._server.stop(grace_s).wait()

    def _call(self, request: bytes) -> bytes:
        """Answer one query; the signature was checked before the request was read."""
        try:
            message = json.loads(request)
            method, args = message["method"], message.get("args") or {}
            if not isinstance(method, str) or not isinstance(args, dict):
                raise InvalidQueryError("request: expected {'method': name, 'args': {...}}")
            body = {"ok": True, "result": to_plain(self.handler.handle(method, args))}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            body = {"ok": False, "error": "invalid", "message": f"request: not a query message ({exc})"}
        except InvalidQueryError as exc:
            body = {"ok": False, "error": "invalid", "message": str(exc)}
        except Exception as exc:  # the engine keeps serving; the caller learns why this query failed
            logger.exception("query failed")
            body = {"ok": False, "error": "internal", "message": f"{type(exc).__name__}: {exc}"}
        return json.dumps(body, separators=(",", ":")).encode()


def encode_request(method: str, args: Mapping[str, Any]) -> bytes:
    return json.dumps({"method": method, "args": dict(args)}, separators=(",", ":")).encode()


"""`Client`: the Python face of a running engine's query service.

    from ringwatch.stream import Client
    c = Client("127.0.0.1:7070", token=...)   # the query token; default RINGWATCH_QUERY_TOKEN
    c.alerts(limit=10); c.rings_through("A0012345"); c.account("A0012345")

The token is the engine's read-only query token (default: RINGWATCH_QUERY_TOKEN,
else derived from RINGWATCH_TOKEN); calls are signed with it, never send it,
and answers are accepted only when sealed by an engine that holds it.

Errors say what to do: an engine that does not answer raises `ConnectionError`
(`EngineUnreachableError`) naming the address; a wrong token raises
`ringwatch.runtime.AuthError` (a missing one `TokenMissingError`, a
`ValueError`); a bad argument raises `InvalidQueryError` (a `ValueError`). An
account the engine has never seen is not an error: its queries answer with
empty results.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import grpc
import networkx as nx

from ringwatch.graph import Alert
from ringwatch.runtime import AuthError, GetTimeoutError
from ringwatch.runtime.auth import query_call_key
from ringwatch.runtime.cli import read_query_token
from ringwatch.runtime.errors import RingwatchError, TokenMissingError
from ringwatch.runtime.rpc import SignedChannel
from ringwatch.runtime.tls import TlsFiles

from .service import (
    AUDIENCE,
    METHOD,
    SERVICE,
    AccountSummary,
    EngineStats,
    Health,
    InvalidQueryError,
    Neighbor,
    QueryError,
    encode_request,
    graph_from_wire,
    record_from_dict,
    since_spec,
)

Since = datetime | timedelta | int | str | None


class EngineUnreachableError(RingwatchError, ConnectionError):
    """No query service answered at the address; the message names it."""


class Client:
    """Queries one engine. Thread-safe; `close()` (or `with Client(...) as c:`) releases the channel."""

    def __init__(self, address: str, token: str | None = None, *, timeout_s: float = 30.0,
                 tls: TlsFiles | None = None):
        self.address = address
        token = token if token is not None else read_query_token(None)
        if not token:
            raise TokenMissingError("the query token is empty: pass the engine's query token")
        self._channel = SignedChannel(address, SERVICE, query_call_key(token), tls=tls, audience=AUDIENCE)
        self.timeout_s = timeout_s

    def health(self) -> Health:
        return record_from_dict(Health, self._ask("health"))

    def stats(self) -> EngineStats:
        return record_from_dict(EngineStats, self._ask("stats"))

    def alerts(self, since: Since = None, account: str | None = None, limit: int = 100) -> list[Alert]:
        """Alerts the engine raised, newest first; `since` a moment or a look-back such as "1h"."""
        found = self._ask("alerts", since=since_spec(since), account=account, limit=limit)
        return [Alert.from_dict(a) for a in found]

    def rings_through(self, account: str, max_hops: int = 6, window: str | int | timedelta = "48h") -> list[Alert]:
        """Rings through `account` among the payments of the last `window`, searched now, newest first."""
        if isinstance(window, timedelta):
            window = int(window.total_seconds() * 1000)
        found = self._ask("rings_through", account=account, max_hops=max_hops, window=window)
        return [Alert.from_dict(a) for a in found]

    def neighbors(self, account: str, direction: str = "out", hops: int = 2, since: Since = None) -> list[Neighbor]:
        """Accounts `account` paid ("out"), was paid by ("in") or either ("both"), up to `hops` payments away."""
        found = self._ask("neighbors", account=account, direction=direction, hops=hops, since=since_spec(since))
        return [record_from_dict(Neighbor, n) for n in found]

    def subgraph(self, accounts: Iterable[str], hops: int = 1, since: Since = None) -> nx.MultiDiGraph:
        """The payments within `hops` of `accounts`: one edge per payment keyed by tx_id (amount, ts, seq)."""
        accounts = [accounts] if isinstance(accounts, str) else list(accounts)
        return graph_from_wire(self._ask("subgraph", accounts=accounts, hops=hops, since=since_spec(since)))

    def account(self, account: str) -> AccountSummary:
        """Degrees, totals, first and last payment in the engine's window, and the alerts it is part of."""
        return record_from_dict(AccountSummary, self._ask("account", account=account))

    def _ask(self, method: str, **args: Any) -> Any:
        try:
            response = self._channel.call(METHOD, encode_request(method, args), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise AuthError(f"the engine at {self.address} refused the query: {exc.details()} "
                                f"(pass its query token: token=..., or RINGWATCH_QUERY_TOKEN)") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise GetTimeoutError(f"the engine at {self.address} did not answer {method} "
                                      f"within {self.timeout_s:.0f} s") from None
            raise EngineUnreachableError(f"no ringwatch query service answers at {self.address} "
                                         f"({code.name}: {exc.details()}); is the engine running with "
                                         f"--query-port?") from None
        body = json.loads(response)
        if body["ok"]:
            return body["result"]
        if body["error"] == "invalid":
            raise InvalidQueryError(body["message"])
        raise QueryError(f"the engine at {self.address} failed to answer {method}: {body['message']}")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

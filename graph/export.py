"""networkx views of the live graph, for analysts and the query API."""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from .shard_set import ShardSet
from .shard_store import ExpandRequest

_ALL_TIME = (-(2**62), 2**62)
DIRECTIONS = ("out", "in", "both")


def subgraph(shards: ShardSet, accounts: Iterable[str], hops: int = 1, since: int | None = None, *,
             direction: str = "both", max_degree: int | None = None) -> nx.MultiDiGraph:
    """The payments within `hops` of `accounts` at or after `since` (epoch ms), read from the shards as they are.

    One edge per payment, keyed by tx_id, with `amount`, `ts`, `seq` (stream
    position) and `tx_id` attributes; each node has `hops`, its distance from
    the start. `direction` follows payments forward ("out"), backward ("in")
    or both ways. With `max_degree` an account holding more payments than that
    in a direction is not expanded — the search's hub guard, so a neighbourhood
    query does not pull in every customer of a merchant — and is marked
    `hub=True`.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    ways = ("out", "in") if direction == "both" else (direction,)
    low = _ALL_TIME[0] if since is None else since
    graph = nx.MultiDiGraph()
    frontier = set(accounts)
    graph.add_nodes_from(frontier, hops=0)
    seen = set(frontier)
    for depth in range(1, max(hops, 0) + 1):
        if not frontier:
            break
        requests = [ExpandRequest(d, a, low, _ALL_TIME[1], _ALL_TIME[1]) for a in sorted(frontier) for d in ways]
        answers = shards.expand(requests, max_degree)
        reached = set()
        for request, answer in zip(requests, answers):
            if answer.hub:
                graph.nodes[request.account]["hub"] = True
            for peer, ts, seq, amount, tx_id in answer.edges:
                src, dst = (request.account, peer) if request.direction == "out" else (peer, request.account)
                if peer not in graph:
                    graph.add_node(peer, hops=depth)
                graph.add_edge(src, dst, key=tx_id, amount=amount, ts=ts, seq=seq, tx_id=tx_id)
                reached.add(peer)
        frontier = reached - seen
        seen |= reached
    return graph

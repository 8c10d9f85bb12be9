"""networkx views of the live graph, for analysts and the query API."""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from .shard_set import ShardSet
from .shard_store import ExpandRequest

_ALL_TIME = (-(2**62), 2**62)


def subgraph(shards: ShardSet, accounts: Iterable[str], hops: int = 1, since: int | None = None) -> nx.MultiDiGraph:
    """The payments within `hops` of `accounts`, in either direction, at or after `since` (epoch ms).

    One edge per payment, keyed by tx_id, with `amount`, `ts` and `tx_id` attributes.
    """
    low = _ALL_TIME[0] if since is None else since
    graph = nx.MultiDiGraph()
    frontier = set(accounts)
    graph.add_nodes_from(frontier)
    seen = set(frontier)
    for _ in range(max(hops, 0)):
        if not frontier:
            break
        requests = [ExpandRequest(d, a, low, _ALL_TIME[1], _ALL_TIME[1]) for a in sorted(frontier) for d in ("out", "in")]
        answers = shards.expand(requests, None)
        reached = set()
        for request, answer in zip(requests, answers):
            for edge in answer.edges:
                src, dst = (request.account, edge.peer) if request.direction == "out" else (edge.peer, request.account)
                graph.add_edge(src, dst, key=edge.tx_id, amount=edge.amount, ts=edge.ts, tx_id=edge.tx_id)
                reached.add(edge.peer)
        frontier = reached - seen
        seen |= reached
    return graph

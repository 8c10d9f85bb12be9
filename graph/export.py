"""networkx views of the live graph, for analysts and the query API."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .ring_graph import RingGraph

if TYPE_CHECKING:
    import networkx as nx

DIRECTIONS = ("out", "in", "both")


def subgraph(graph: RingGraph, accounts: Iterable[str], hops: int = 1, since: int | None = None, *,
             direction: str = "both", max_degree: int | None = None) -> nx.MultiDiGraph:
    """The payments within `hops` of `accounts` at or after `since` (epoch ms), read from the graph as it is.

    One edge per payment, keyed by tx_id, with `amount` (Decimal), `ts`,
    `currency` and `tx_id` attributes; each node has `hops`, its distance from
    the start. `direction` follows payments forward ("out"), backward ("in")
    or both ways. With `max_degree` an account holding more payments than that
    in a direction is not expanded — the search's hub guard, so a neighbourhood
    query does not pull in every customer of a merchant — and is marked
    `hub=True`. One `edges` read per direction per hop (one call per shard).
    """
    import networkx as nx  # here, not at the top: it takes a tenth of a second to import, and few processes query

    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    ways = ("out", "in") if direction == "both" else (direction,)
    out = nx.MultiDiGraph()
    frontier = sorted(set(accounts))
    out.add_nodes_from(frontier, hops=0)
    seen = set(frontier)
    for depth in range(1, max(hops, 0) + 1):
        if not frontier:
            break
        reached = set()
        for way in ways:
            expand = frontier
            if max_degree is not None:
                degrees = graph.degrees(frontier, way)
                hubs = {a for a in frontier if degrees.get(a, 0) > max_degree}
                for hub in hubs:
                    out.nodes[hub]["hub"] = True
                expand = [a for a in frontier if a not in hubs]
            for account, edges in graph.edges(expand, way, since).items():
                for edge in edges:
                    peer = edge.dst if way == "out" else edge.src
                    if peer not in out:
                        out.add_node(peer, hops=depth)
                    out.add_edge(edge.src, edge.dst, key=edge.tx_id, amount=edge.amount, ts=edge.ts,
                                 currency=edge.currency, tx_id=edge.tx_id)
                    reached.add(peer)
        frontier = sorted(reached - seen)
        seen |= reached
    return out

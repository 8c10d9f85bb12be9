"""The correctness oracle: rings by networkx, straight from the ring definition.

For a trigger `u -> v` at `t`: every simple path `v -> ... -> u` of at most
`max_hops - 1` edges in the account graph of the usable witnesses (earlier in
the stream, inside `[low_ts, t]`), kept when witness transactions exist along
it that are time-ordered (unless `order="none"`) and obey the flow rule.
"""

from __future__ import annotations

import networkx as nx

from ringwatch.graph import SearchOptions, Transaction


def oracle_rings(stream: list[Transaction], k: int, low_ts: int, options: SearchOptions) -> set[tuple[str, ...]]:
    trigger = stream[k]
    u, v, t = trigger.src, trigger.dst, trigger.ts
    if u == v or (options.min_amount is not None and trigger.amount < options.min_amount):
        return set()
    witnesses = [x for x in stream[:k] if low_ts <= x.ts <= t
                 and (options.min_amount is None or x.amount >= options.min_amount)]
    graph = nx.DiGraph()
    by_pair: dict[tuple[str, str], list[Transaction]] = {}
    for x in witnesses:
        if x.src != x.dst:
            graph.add_edge(x.src, x.dst)
            by_pair.setdefault((x.src, x.dst), []).append(x)
    if v not in graph or u not in graph:
        return set()
    found = set()
    for path in nx.all_simple_paths(graph, v, u, cutoff=options.max_hops - 1):
        hops = list(zip(path, path[1:]))
        if _witnessed(hops, 0, None, by_pair, trigger, options):
            found.add(tuple(path))
    return found


def _witnessed(hops, i, previous, by_pair, trigger, options) -> bool:
    if i == len(hops):
        return previous is None or _flow_ok(previous.amount, trigger.amount, options)
    for x in by_pair[hops[i]]:
        if previous is not None:
            if options.order == "strict" and x.ts < previous.ts:
                continue
            if not _flow_ok(previous.amount, x.amount, options):
                continue
        if _witnessed(hops, i + 1, x, by_pair, trigger, options):
            return True
    return False


def _flow_ok(earlier: float, later: float, options: SearchOptions) -> bool:
    if options.min_ratio is None:
        return True
    return options.min_ratio * earlier <= later <= options.max_ratio * earlier

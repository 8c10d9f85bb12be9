"""The correctness oracle: every ring of a set of payments, by brute force, straight from the v2 definition.

Independent of the engine (no labels, no store, no arrival order): for each
payment T as the trigger, the witnesses are the payments before it in
`(ts, tx_id)` order (tx ids compared as UTF-8 bytes) no older than
`ts(T) - window`; every simple path `v -> ... -> u` of at most `max_hops - 1`
hops in their account graph (networkx) is a ring when some choice of one
witness per hop keeps time order (unless `order="none"`) and the flow rule.
The canonical witnesses are the first valid choice in lexicographic
`(ts, tx_id)` order, hop by hop: `itertools.product` over the per-hop lists
sorted by that key yields choices in exactly that order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import networkx as nx

from ringwatch.graph import SearchOptions, Transaction, alert_id


@dataclass(frozen=True)
class OracleRing:
    alert_id: str
    trigger: str
    accounts: tuple[str, ...]
    tx_ids: tuple[str, ...]  # witnesses in ring order, then the trigger


def key(tx: Transaction) -> tuple[int, bytes]:
    return (tx.ts, tx.tx_id.encode())


def oracle(payments: list[Transaction], options: SearchOptions) -> dict[str, OracleRing]:
    """alert id -> ring, for every ring among `payments` (no caps, no hub guard)."""
    ordered = sorted(payments, key=key)
    found: dict[str, OracleRing] = {}
    for k, trigger in enumerate(ordered):
        for ring in rings_of(ordered[:k], trigger, options):
            found[ring.alert_id] = ring
    return found


def usable(tx: Transaction, options: SearchOptions) -> bool:
    return options.min_amount is None or tx.amount >= options.min_amount


def rings_of(earlier: list[Transaction], trigger: Transaction, options: SearchOptions) -> list[OracleRing]:
    u, v = trigger.src, trigger.dst
    if u == v or not usable(trigger, options):
        return []
    witnesses = [x for x in earlier if x.ts >= trigger.ts - options.window_ms and usable(x, options)]
    graph = nx.DiGraph()
    by_pair: dict[tuple[str, str], list[Transaction]] = {}
    for x in witnesses:
        if x.src != x.dst:
            graph.add_edge(x.src, x.dst)
            by_pair.setdefault((x.src, x.dst), []).append(x)
    if v not in graph or u not in graph:
        return []
    rings = []
    for path in nx.all_simple_paths(graph, v, u, cutoff=options.max_hops - 1):
        hops = [sorted(by_pair[pair], key=key) for pair in zip(path, path[1:])]
        for choice in itertools.product(*hops):
            if valid(list(choice), trigger, options):
                accounts = tuple(path)
                rings.append(OracleRing(alert_id(trigger.tx_id, accounts), trigger.tx_id, accounts,
                                        tuple(x.tx_id for x in choice) + (trigger.tx_id,)))
                break
    return rings


def valid(witnesses: list[Transaction], trigger: Transaction, options: SearchOptions) -> bool:
    """One witness per hop, in ring order: the definition's time, window and flow conditions."""
    chain = witnesses + [trigger]
    if any(key(x) >= key(trigger) or x.ts < trigger.ts - options.window_ms for x in witnesses):
        return False
    if options.order == "strict" and any(a.ts > b.ts for a, b in zip(chain, chain[1:])):
        return False
    if options.flow_rule:
        for a, b in zip(chain, chain[1:]):
            earlier, later = float(a.amount_units), float(b.amount_units)
            if not options.min_ratio * earlier <= later <= options.max_ratio * earlier:
                return False
    return True

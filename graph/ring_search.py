"""Ring search: which rings does each new payment close?

For a trigger `u -> v` at time `t` with stream position `seq`, a ring is a
simple path `v = x0 -> ... -> xm = u` (1 <= m <= max_hops - 1) with witness
edges ingested before the trigger (`seq(e) < seq`) inside `[low_ts, t]`
(`low_ts = t - window`, later for a late payment: see `detector`),
time-ordered (`ts(e1) <= ... <= ts(em)`) unless `order="none"`, and, with a
flow rule, each hop's amount (the trigger's included, last) within
`[min_ratio, max_ratio]` of the previous hop's.

Meet in the middle: forward from `v` over out-edges, backward from `u` over
in-edges, for all triggers of a micro-batch at once, one batched call per shard
per round (both directions in the same call). A path of `m` edges is found
exactly once, by joining the forward half of `ceil(m/2)` edges with the
backward half of `floor(m/2)` edges at their shared node.

Witness choice (deterministic, independent of sharding and batching): without
a flow rule, the forward half takes, hop by hop, the earliest edge that can
follow (ties: lowest stream position) and the backward half the latest edge
that can precede; with a flow rule every edge is kept and the ring takes the
combination whose witness stream positions sort first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from .gcpause import collector_paused
from .pickling import CompactPickle
from .shard_store import Edge, EdgeRow, ExpandRequest, ExpandResult

ORDERS = ("strict", "none")


class InvalidSearchOptionError(ValueError):
    """A search option out of range; the message names it."""


@dataclass(frozen=True)
class SearchOptions:
    max_hops: int = 6
    window_ms: int = 7 * 86_400_000
    order: str = "strict"
    min_amount: float | None = None
    min_ratio: float | None = None
    max_ratio: float | None = None
    max_rings_per_tx: int | None = 100
    max_degree: int | None = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.max_hops, int) or self.max_hops < 2:
            raise InvalidSearchOptionError(f"max_hops: need an int >= 2, got {self.max_hops!r}")
        if self.window_ms is None or self.window_ms < 0:
            raise InvalidSearchOptionError(f"window: need a non-negative duration, got {self.window_ms!r}")
        if self.order not in ORDERS:
            raise InvalidSearchOptionError(f"order: expected one of {ORDERS}, got {self.order!r}")
        if (self.min_ratio is None) != (self.max_ratio is None):
            raise InvalidSearchOptionError("min_ratio/max_ratio: give both bounds of the flow rule or neither")
        if self.min_ratio is not None and not 0 < self.min_ratio <= self.max_ratio:
            raise InvalidSearchOptionError(
                f"min_ratio/max_ratio: need 0 < min_ratio <= max_ratio, got {self.min_ratio}, {self.max_ratio}")
        for name in ("max_rings_per_tx", "max_degree"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidSearchOptionError(f"{name}: need an int >= 1 or None, got {value!r}")

    @property
    def flow_rule(self) -> bool:
        return self.min_ratio is not None


@dataclass(frozen=True, slots=True)
class Trigger(CompactPickle):
    """A new payment `src -> dst` whose rings we look for.

    `seq` is its stream position; `low_ts` the earliest witness time it may use:
    `ts - window`, or the low watermark when that is later (a late payment).
    """

    tx_id: str
    src: str
    dst: str
    amount: float
    ts: int
    seq: int
    low_ts: int


@dataclass(frozen=True, slots=True)
class Ring(CompactPickle):
    """`accounts` from the trigger's dst to its src; `witnesses[i]` pays `accounts[i] -> accounts[i+1]`."""

    trigger: Trigger
    accounts: tuple[str, ...]
    witnesses: tuple[Edge, ...]


@dataclass(frozen=True, slots=True)
class SearchOutcome(CompactPickle):
    """The rings one trigger closes; `truncated` when a hub was not expanded or `max_rings_per_tx` cut the list."""

    rings: list[Ring]
    truncated: bool


class Shards(Protocol):
    """Whatever holds the shards: answers a round of look-ups with one call per shard."""

    def expand(self, requests: Sequence[ExpandRequest], max_degree: int | None) -> list[ExpandResult]: ...


class _Half(NamedTuple):
    """A forward (v ->) or backward (-> u) partial path of one trigger."""

    trigger: int
    nodes: tuple[str, ...]
    edges: tuple[EdgeRow, ...]  # plain rows as the shards send them; `Edge`s only once in a ring
    bound_ts: int  # forward: earliest next departure; backward: latest previous arrival
    amount: float | None  # amount of the edge at the open end (the trigger's, for an empty backward half)


# Measured (bank stream, 2 shards, 2 cores): with 2 tasks instead of 1, 16-payment
# batches ran at 3,053 instead of 3,894 tx/s, 64-payment batches alike (6,455 vs
# 6,425), 256-payment batches slightly faster (10,055 vs 9,605).
_MIN_TRIGGERS_PER_TASK = 128


def search_in_parallel(triggers: Sequence[Trigger], shards: Any, options: SearchOptions,
                       parallelism: int) -> list[SearchOutcome]:
    """Split the triggers over at most `parallelism` stateless search tasks on the runtime (shards are actors).

    A task gets at least `_MIN_TRIGGERS_PER_TASK` triggers: each task makes its own
    round of calls to every shard, and on small batches those calls, not the
    search, are the cost. Results do not depend on the split.
    """
    from ringwatch import runtime as rt

    if not triggers:
        return []
    tasks = max(1, min(parallelism, -(-len(triggers) // _MIN_TRIGGERS_PER_TASK)))
    size = -(-len(triggers) // tasks)
    chunks = [list(triggers[i:i + size]) for i in range(0, len(triggers), size)]
    task = rt.remote(_search_task)
    outcomes = rt.get([task.remote(chunk, shards.handles, options) for chunk in chunks])
    return [outcome for chunk in outcomes for outcome in chunk]


def _search_task(triggers: list[Trigger], handles: list, options: SearchOptions) -> list[SearchOutcome]:
    from .shard_set import ActorShards

    return search(triggers, ActorShards(handles=handles), options)


def search(triggers: Sequence[Trigger], shards: Shards, options: SearchOptions) -> list[SearchOutcome]:
    """What each trigger closes, in trigger order; rings sorted by (hops, accounts)."""
    with collector_paused():
        return _search(triggers, shards, options)


def _search(triggers: Sequence[Trigger], shards: Shards, options: SearchOptions) -> list[SearchOutcome]:
    searched = [i for i, t in enumerate(triggers) if _worth_searching(t, options)]
    longest = options.max_hops - 1
    forward_depth, backward_depth = math.ceil(longest / 2), longest // 2
    forward = [[_Half(i, (triggers[i].dst,), (), triggers[i].low_ts, None) for i in searched]]
    backward = [[_Half(i, (triggers[i].src,), (), triggers[i].ts, triggers[i].amount) for i in searched]]
    hubs_met: set[int] = set()
    for depth in range(1, forward_depth + 1):
        growing = [("out", _open(forward[-1], triggers))]
        if depth <= backward_depth:
            growing.append(("in", _open(backward[-1], triggers)))
        # Past the backward depth, a forward half is only worth growing onto a node
        # where a backward half of full depth ends: ask the shards for those edges only.
        targets = _meeting_points(backward[-1]) if depth > backward_depth else None
        answers = _ask(growing, triggers, shards, options, targets)
        forward.append(_extend(growing[0][1], "out", triggers, answers, options, hubs_met))
        if depth <= backward_depth:
            backward.append(_extend(growing[1][1], "in", triggers, answers, options, hubs_met))
    rings = _join(forward, backward, triggers, options)
    return [_limit(rings.get(i, []), i in hubs_met, options) for i in range(len(triggers))]


def _worth_searching(trigger: Trigger, options: SearchOptions) -> bool:
    if trigger.src == trigger.dst:
        return False
    return options.min_amount is None or trigger.amount >= options.min_amount


def _open(halves: list[_Half], triggers: Sequence[Trigger]) -> list[_Half]:
    """Halves that may grow: a forward half stops at u, a backward half at v."""
    return [h for h in halves
            if len(h.nodes) == 1 or h.nodes[-1] not in (triggers[h.trigger].src, triggers[h.trigger].dst)]


def _meeting_points(halves: list[_Half]) -> dict[int, set[str]]:
    points: dict[int, set[str]] = defaultdict(set)
    for half in halves:
        points[half.trigger].add(half.nodes[-1])
    return points


def _ask(growing, triggers, shards: Shards, options: SearchOptions,
         targets: dict[int, set[str]] | None) -> dict[tuple[str, str], ExpandResult]:
    """One look-up per (direction, account) for the whole round, with the loosest bounds any half needs.

    A half's bounds are the ones `_extend` filters it by: its trigger's window and
    stream position, narrowed under strict order by its own `bound_ts` (a forward
    half departs at or after it, a backward half arrives at or before it). The
    narrowing halves the edges shipped from the shards in the second round.
    Each half then keeps only the edges its own trigger may use (see `_extend`).
    With `targets`, forward look-ups ask only for edges to those accounts.
    """
    strict = options.order == "strict"
    bounds: dict[tuple[str, str], list] = {}
    for direction, halves in growing:
        forward = direction == "out"
        for half in halves:
            trigger = triggers[half.trigger]
            peers = targets.get(half.trigger, set()) if targets is not None and forward else None
            if peers is not None and not peers:
                continue
            key = (direction, half.nodes[-1])
            low, high = trigger.low_ts, trigger.ts
            if strict:
                if forward:
                    low = half.bound_ts
                else:
                    high = half.bound_ts
            current = bounds.get(key)
            if current is None:
                bounds[key] = [low, high, trigger.seq, None if peers is None else set(peers)]
            else:
                if low < current[0]:
                    current[0] = low
                if high > current[1]:
                    current[1] = high
                if trigger.seq > current[2]:
                    current[2] = trigger.seq
                if peers is not None:
                    current[3] |= peers
    if not bounds:
        return {}
    keys = list(bounds)
    requests = [ExpandRequest(d, account, low, high, seq, None if peers is None else frozenset(peers))
                for (d, account), (low, high, seq, peers) in zip(keys, bounds.values())]
    return dict(zip(keys, shards.expand(requests, options.max_degree)))


def _extend(halves: list[_Half], direction: str, triggers: Sequence[Trigger],
            answers: dict[tuple[str, str], ExpandResult], options: SearchOptions, hubs_met: set[int]) -> list[_Half]:
    """Grow each half by the edges its own trigger may take next.

    An edge is usable when it is a witness of the half's trigger (`seq` below the
    trigger's, time in `[low_ts, ts]`), keeps time order (strict: a forward half
    departs at or after `bound_ts`, a backward half arrives at or before it),
    does not revisit a node of the half, and passes `min_amount` and the flow rule.
    Without a flow rule only the best usable edge per peer is kept (forward: the
    earliest, backward: the latest; ties: the lowest stream position), picked in
    one pass: this loop runs for every edge of every half, the search's hot spot.
    """
    forward = direction == "out"
    strict = options.order == "strict"
    min_amount, flow_rule = options.min_amount, options.flow_rule
    new_half = _Half._make
    grown: list[_Half] = []
    for half in halves:
        nodes = half.nodes
        answer = answers.get((direction, nodes[-1]))
        if answer is None:
            continue
        if answer.hub:
            hubs_met.add(half.trigger)
            continue
        if not answer.edges:
            continue
        trigger = triggers[half.trigger]
        low, high, seq = trigger.low_ts, trigger.ts, trigger.seq
        if strict:
            if forward:
                low = half.bound_ts
            else:
                high = half.bound_ts
        if flow_rule:
            open_amount = half.amount
            chosen = [e for e in answer.edges
                      if e[2] < seq and low <= e[1] <= high and e[0] not in nodes
                      and (min_amount is None or e[3] >= min_amount)
                      and (open_amount is None or _flow_ok(open_amount, e[3], direction, options))]
        else:
            best: dict[str, EdgeRow] = {}
            for edge in answer.edges:
                peer, ts, edge_seq, amount, _ = edge
                if edge_seq >= seq or ts < low or ts > high or peer in nodes:
                    continue
                if min_amount is not None and amount < min_amount:
                    continue
                kept = best.get(peer)
                if kept is None or (ts < kept[1] if forward else ts > kept[1]) \
                        or (ts == kept[1] and edge_seq < kept[2]):
                    best[peer] = edge
            chosen = best.values()
        index, edges = half.trigger, half.edges
        for edge in chosen:
            grown.append(new_half((index, nodes + (edge[0],), edges + (edge,), edge[1], edge[3])))
    return grown


def _flow_ok(open_amount: float, amount: float, direction: str, options: SearchOptions) -> bool:
    earlier, later = (open_amount, amount) if direction == "out" else (amount, open_amount)
    return _ratio_ok(earlier, later, options)


def _ratio_ok(earlier: float, later: float, options: SearchOptions) -> bool:
    return options.min_ratio * earlier <= later <= options.max_ratio * earlier


def _join(forward, backward, triggers, options) -> dict[int, list[Ring]]:
    found: dict[int, dict[tuple[str, ...], tuple[tuple[int, ...], Ring]]] = defaultdict(dict)
    meeting: dict[int, dict[tuple[int, str], list[_Half]]] = {}
    for length in range(1, options.max_hops):
        f_len = math.ceil(length / 2)
        b_len = length - f_len
        ends = meeting.get(b_len)
        if ends is None:  # each backward depth serves two lengths: index it once
            ends = meeting[b_len] = defaultdict(list)
            for half in backward[b_len]:
                ends[(half.trigger, half.nodes[-1])].append(half)
        for f in forward[f_len]:
            for b in ends.get((f.trigger, f.nodes[-1]), ()):
                ring = _ring(f, b, triggers, options)
                if ring is None:
                    continue
                rank = tuple(e.seq for e in ring.witnesses)
                kept = found[f.trigger].get(ring.accounts)
                if kept is None or rank < kept[0]:
                    found[f.trigger][ring.accounts] = (rank, ring)
    return {i: sorted((r for _, r in by_accounts.values()), key=lambda r: (len(r.accounts), r.accounts))
            for i, by_accounts in found.items()}


def _ring(f: _Half, b: _Half, triggers, options: SearchOptions) -> Ring | None:
    if set(f.nodes).intersection(b.nodes[:-1]):
        return None
    if options.order == "strict" and f.bound_ts > b.bound_ts:
        return None
    if options.flow_rule and not _ratio_ok(f.amount, b.amount, options):
        return None
    accounts = f.nodes + tuple(reversed(b.nodes[:-1]))
    witnesses = tuple(map(Edge._make, f.edges + tuple(reversed(b.edges))))
    return Ring(triggers[f.trigger], accounts, witnesses)


def _limit(rings: list[Ring], met_hub: bool, options: SearchOptions) -> SearchOutcome:
    cap = options.max_rings_per_tx
    if cap is None or len(rings) <= cap:
        return SearchOutcome(rings, met_hub)
    return SearchOutcome(rings[:cap], True)

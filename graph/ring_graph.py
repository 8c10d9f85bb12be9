"""The graph engine's one seam: `RingGraph` — store a batch of payments, get the rings it completes.

`run`, `detect` and the query service use the graph only through this
protocol. Two implementations: `LocalRingGraph` keeps one `EdgeStore` in this
process and searches it with one compiled call per batch; `ShardedRingGraph`
(sharded.py) spreads the store over `GraphShard`s (runtime actors, or
in-process for tests) and runs the same search on the edges it gathers.

Which rings a batch raises (`find_rings`). Every ring is a function of the
set of payments alone (docs/architecture.md, "The ring"), so a batch raises
exactly the rings that contain at least one of its payments:
- each new payment as the trigger (witnesses: every stored payment before it
  in `(ts, tx_id)` order, new or old);
- each new payment older than the newest payment stored before the batch (a
  late one) as a witness of an older trigger: `late_candidates` lists the
  stored triggers whose rings could pass through it, and those are searched
  again, keeping the rings whose canonical witnesses include a payment of
  this batch.
A ring is reported when its trigger or one of its canonical witnesses is in
the batch. So the set of alert ids does not depend on arrival order, batch
size or shard count. Witnesses are the canonical (smallest in `(ts, tx_id)`
order, hop by hop) over the payments present when the ring is raised: equal
to the all-payments answer whenever payments arrive in event-time order; a
late payment that gives an already-raised ring a smaller witness raises the
same alert id again, with the new witnesses (sinks deliver an id once).

The graph keeps no watermark: the stream layer decides what is late or in
the future and calls `evict(horizon_ts)`.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import repeat
from typing import Protocol

import numpy as np
import pyarrow as pa

from . import kernel
from .batch import payment_table
from .model import AMOUNT_SCALE, MIXED, Alert, Transaction, alert_id, alerts_from_columns
from .options import SearchOptions
from .store import CONFLICT, DUPLICATE, NEW, EdgeStore, StoredEdge

Batch = Sequence[Transaction] | pa.Table
CUT_NAMES = ((1, "max_rings_per_tx"), (2, "max_degree"))
_NO_IDS = np.zeros(0, np.int64)
_NO_OFFSETS = np.zeros(1, np.int64)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A payment of the batch the graph would not store: row `index` of the batch, and why."""

    index: int
    tx_id: str
    reason: str


@dataclass
class BatchResult:
    """What one batch did: its alerts (trigger order), silent duplicates, conflicts, cut-short searches."""

    alerts: list[Alert] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: int = 0
    truncated_searches: int = 0
    late_payments: int = 0  # payments older than the newest already stored: searched as witnesses too


class RingGraph(Protocol):
    """The graph as `run`, `detect` and the query service see it."""

    options: SearchOptions

    def process(self, batch: Batch, received_at: Sequence[float] | float | None = None, *,
                replay: bool = False) -> BatchResult:
        """Store the batch, return the rings that contain at least one of its payments.

        With `replay`, payments already stored (duplicates) count as the batch's
        too, so their rings are raised again: for a replay after a rewind.
        """

    def evict(self, horizon_ts: int) -> int:
        """Forget payments with `ts < horizon_ts`; returns how many payments' storage was reclaimed
        (compaction runs once evicted payments pile up, so mostly 0)."""

    def edges(self, accounts: Sequence[str], direction: str, since: int | None = None
              ) -> dict[str, list[StoredEdge]]:
        """Each account's stored payments out of it ("out") or into it ("in"), oldest first."""

    def degrees(self, accounts: Sequence[str], direction: str) -> dict[str, int]:
        """How many payments each account holds in that direction (hub checks)."""

    def edge_count(self) -> int: ...

    def nbytes(self) -> int: ...

    def checkpoint(self) -> list[pa.Table]:
        """Each shard's payments as an Arrow table, in shard order."""

    def restore(self, tables: Sequence[pa.Table]) -> None:
        """Replace the graph's payments with a `checkpoint`'s."""

    def close(self) -> None: ...


@dataclass
class Rings:
    """The rings `find_rings` found, as arrays: ring r is closed by edge `triggers[r]`, its witnesses
    (ring order) are `edges[offsets[r]:offsets[r+1]]`."""

    triggers: np.ndarray
    offsets: np.ndarray
    edges: np.ndarray
    cut: dict[int, int]  # trigger edge id -> cut bits (1: ring cap, 2: hub guard)
    late: int = 0  # the batch's edges older than the newest stored before it (searched as witnesses too)


def find_rings(store: EdgeStore, new_ids: np.ndarray, newest_before: tuple[int, bytes] | None,
               options: SearchOptions) -> Rings:
    """The rings containing at least one of the batch's edges (ids `new_ids`); see the module doc."""
    new_ids = np.asarray(new_ids, np.int64)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    cut: dict[int, int] = {}
    late = new_ids[:0]
    if new_ids.size:
        _collect(store, new_ids, None, options, parts, cut)
        late = older_than(store, new_ids, newest_before)
        if late.size:
            in_batch = store.batch_mask(new_ids)
            candidates = store.late_candidates(late, in_batch, options)
            if candidates.size:
                _collect(store, candidates, in_batch, options, parts, cut)
    if not parts:
        return Rings(_NO_IDS, _NO_OFFSETS, _NO_IDS, cut, late.size)
    if len(parts) == 1:
        return Rings(*parts[0], cut, late.size)
    offsets, shift = [np.zeros(1, np.int64)], 0
    for _, off, _ in parts:
        offsets.append(off[1:] + shift)
        shift += int(off[-1])
    return Rings(np.concatenate([t for t, _, _ in parts]), np.concatenate(offsets),
                 np.concatenate([e for _, _, e in parts]), cut, late.size)


def older_than(store: EdgeStore, ids: np.ndarray, key: tuple[int, bytes] | None) -> np.ndarray:
    """The edge ids whose (ts, tx_id) is below `key` (none when key is None)."""
    if key is None or ids.size == 0:
        return ids[:0]
    ts = store.e_ts[ids]
    tied = ids[ts == key[0]]
    late = ids[ts < key[0]]
    if tied.size:
        late = np.concatenate([late, [e for e in tied.tolist() if store.tx_id_bytes(e) < key[1]]]).astype(np.int64)
    return late


def newest_key(store: EdgeStore, ids: np.ndarray) -> tuple[int, bytes] | None:
    """The largest (ts, tx_id) among the edge ids."""
    if ids.size == 0:
        return None
    e = int(kernel.newest_edge(np.asarray(ids, np.int64), store.e_hot, store.tx_buf, store.tx_off))
    return int(store.e_hot[e]["ts"]), store.tx_id_bytes(e)


def _collect(store: EdgeStore, triggers: np.ndarray, in_batch: np.ndarray | None, options: SearchOptions,
             parts: list, cut: dict[int, int]) -> None:
    ring_trigger, ring_off, ring_edges, cuts = store.search(triggers, options, in_batch)
    if ring_trigger.size:
        parts.append((triggers[ring_trigger], ring_off, ring_edges))
    for i in np.flatnonzero(cuts).tolist():
        cut[int(triggers[i])] = int(cuts[i])


def build_alerts(store: EdgeStore, rings: Rings, arrival: Arrivals | None, now: float) -> list[Alert]:
    """Alerts for the rings, in trigger (ts, tx_id) order; `arrival` says when the batch's edges arrived.

    Columns first, then one pass that only assembles records: each ring's chain
    (witnesses, then the trigger) in one array; tx ids and account names
    decoded once per distinct edge and account; totals, times and latencies by
    `reduceat` and vectorised rounding; the order by ranking the distinct
    triggers, not the rings. In dense graphs a payment closes dozens of rings,
    so the per-ring Python work is what bounds the engine there.
    """
    if rings.triggers.size == 0:
        return []
    with _collector_paused():
        return _alerts(store, rings, arrival, now)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a batch's alerts are built (back on after, if it was on).

    The records form no cycles, but every allocation counts towards the next
    collection, and the older generations' collections walk every tracked
    object the process holds (a consumer's alert history too): in a dense
    graph that was about a third of building an alert.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _alerts(store: EdgeStore, rings: Rings, arrival: Arrivals | None, now: float) -> list[Alert]:
    n = rings.triggers.size
    lengths = np.diff(rings.offsets) + 1
    starts = np.concatenate([[0], np.cumsum(lengths)])
    chains = np.empty(int(starts[-1]), np.int64)
    is_trigger = np.zeros(chains.size, np.bool_)
    is_trigger[starts[1:] - 1] = True
    chains[is_trigger] = rings.triggers
    chains[~is_trigger] = rings.edges
    distinct, index = _distinct(chains, store.n_edges)
    tx_ids = store.tx_ids(distinct).to_numpy(zero_copy_only=False)[index].tolist()
    sources, source_index = _distinct(store.e_src[chains], store.accounts.count)
    accounts = store.account_names(sources)[source_index].tolist()
    units = store.e_amt[chains]
    currency = store.e_cur[chains]
    heads = starts[:-1]
    order = _trigger_order(store, rings.triggers)
    totals = np.add.reduceat(units, heads)[order].tolist()
    mixed_codes = np.minimum.reduceat(currency, heads) != np.maximum.reduceat(currency, heads)
    mixed = mixed_codes[order].tolist()
    first_ts = np.minimum.reduceat(store.e_ts[chains], heads)[order].tolist()
    last_ts = store.e_ts[rings.triggers][order].tolist()
    if arrival is not None:
        arrived = np.fmax.reduceat(arrival.of(chains), heads)[order]
        latency = np.where(np.isnan(arrived), 0.0, np.round((now - arrived) * 1000, 3)).tolist()
    else:
        latency = [0.0] * n
    names = np.array(store.currencies, dtype=object)
    ring_currency = np.where(mixed_codes[order], MIXED, names[currency[heads[order]]]).tolist()
    cut_by = [()] * n
    if rings.cut:
        ring_bits = np.array([rings.cut.get(t, 0) for t in rings.triggers[order].tolist()])
        for r in np.flatnonzero(ring_bits).tolist():
            cut_by[r] = CUT_BY[ring_bits[r]]
    ends = starts[1:][order].tolist()
    heads_in_order = heads[order].tolist()
    ring_tx = [tuple(tx_ids[a:b]) for a, b in zip(heads_in_order, ends)]
    ring_accounts = [tuple(accounts[a:b]) for a, b in zip(heads_in_order, ends)]
    ring_totals = [_per_currency(store, currency[a:b], units[a:b]) if m else {}
                   for a, b, m in zip(heads_in_order, ends, mixed)]
    triggers = [t[-1] for t in ring_tx]
    return alerts_from_columns(
        map(alert_id, triggers, ring_accounts), triggers, ring_accounts, ring_tx,
        [b - a for a, b in zip(heads_in_order, ends)], [Decimal(v) / _SCALE for v in totals], first_ts,
        last_ts, repeat(int(now * 1000), n), latency, [bool(c) for c in cut_by], ring_currency, ring_totals, cut_by)


def _distinct(values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(values, return_inverse=True)` for ids in [0, size): the distinct ids ascending, each value's index.

    A dense batch's rings name tens of thousands of edges and accounts, most
    of them many times over: marking them in an array the size of the id
    range costs less than sorting them. A few ids from a large range are
    sorted as before.
    """
    if values.size * 16 < size:
        return np.unique(values, return_inverse=True)
    mark = np.zeros(size, np.bool_)
    mark[values] = True
    distinct = np.flatnonzero(mark)
    at = np.empty(size, np.int64)
    at[distinct] = np.arange(distinct.size)
    return distinct, at[values]


_SCALE = Decimal(AMOUNT_SCALE)  # dividing by a Decimal skips converting the int divisor per alert
CUT_BY = {bits: tuple(name for bit, name in CUT_NAMES if bits & bit) for bits in range(4)}


def _trigger_order(store: EdgeStore, triggers: np.ndarray) -> np.ndarray:
    """The rings' order by their trigger's (ts, tx_id), stable (a trigger's rings keep the kernel's order)."""
    distinct, inverse = np.unique(triggers, return_inverse=True)
    ts = store.e_ts[distinct].tolist()
    tx = store.tx_ids(distinct).to_pylist()
    keys = sorted(zip(ts, tx, range(len(ts))))
    rank = np.empty(len(keys), np.int64)
    previous, at = None, -1
    for i, (t, name, d) in enumerate(keys):
        if (t, name) != previous:
            previous, at = (t, name), i
        rank[d] = at
    return np.argsort(rank[inverse], kind="stable")


def _per_currency(store: EdgeStore, currency: np.ndarray, units: np.ndarray) -> dict[str, Decimal]:
    """A mixed-currency ring's exact total per currency ("" for payments without one), by name."""
    per_currency: dict[str, int] = {}
    for code, amount in zip(currency.tolist(), units.tolist()):
        name = store.currencies[code] or ""
        per_currency[name] = per_currency.get(name, 0) + amount
    return {code: Decimal(v) / AMOUNT_SCALE for code, v in sorted(per_currency.items())}


@dataclass(frozen=True, slots=True)
class Arrivals:
    """When the batch's edges arrived: `of(edges)` looks them up (NaN for an edge not in the batch).

    Kept as the batch's (edge id, time) pairs, sorted only when alerts ask, so
    a batch costs what it holds, not what the store holds.
    """

    eids: np.ndarray
    times: np.ndarray

    def of(self, edges: np.ndarray) -> np.ndarray:
        if self.eids.size == 0:
            return np.full(edges.shape, np.nan)
        order = np.argsort(self.eids, kind="stable")
        ids, times = self.eids[order], self.times[order]
        at = np.minimum(np.searchsorted(ids, edges), ids.size - 1)
        return np.where(ids[at] == edges, times[at], np.nan)


def arrival_times(store: EdgeStore, eids: np.ndarray, rows: np.ndarray,
                  received_at: Sequence[float] | float | None, n_rows: int) -> Arrivals | None:
    """When each batch edge (`eids`, from batch `rows`) arrived; None without times."""
    times = arrivals(received_at, n_rows)
    if times is None:
        return None
    return Arrivals(np.asarray(eids, np.int64), times[rows])


def as_table(batch: Batch) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else payment_table(batch)


def arrivals(received_at: Sequence[float] | float | None, rows: int) -> np.ndarray | None:
    if received_at is None:
        return None
    if isinstance(received_at, (int, float)):
        return np.full(rows, float(received_at))
    return np.asarray(received_at, np.float64)


def batch_edges(status: np.ndarray, eids: np.ndarray, replay: bool) -> tuple[np.ndarray, np.ndarray]:
    """The batch rows whose rings to raise (new, and with `replay` duplicates too) and their distinct edge ids."""
    if not status.any():  # all new (the usual batch): one edge each, ascending
        return np.arange(status.shape[0]), eids
    new_rows = np.flatnonzero((status == NEW) | (replay & (status == DUPLICATE)))
    return new_rows, np.unique(eids[new_rows])


def judge(status: np.ndarray, table: pa.Table, result: BatchResult, horizon: int | None) -> None:
    """Count duplicates and turn conflicts and payments older than the horizon into rejections with their reason."""
    if not status.any():
        return
    result.duplicates += int(np.count_nonzero(status == DUPLICATE))
    refused = np.flatnonzero(status >= CONFLICT)
    if refused.size:
        tx_ids = table.column("tx_id").to_pylist()
        ts = table.column("ts").to_pylist()
        for i in refused.tolist():
            if status[i] == CONFLICT:
                reason = (f"conflict: tx_id {tx_ids[i]!r} is already stored with other content "
                          "(src, dst, amount, ts or currency)")
            else:
                reason = f"late: ts {ts[i]} is older than the graph's eviction horizon {horizon}"
            result.rejected.append(Rejected(i, tx_ids[i], reason))


class LocalRingGraph:
    """The whole graph in this process: one `EdgeStore`, one compiled search call per batch."""

    def __init__(self, options: SearchOptions, *, clock: Callable[[], float] = time.time):
        self.options = options
        self.clock = clock
        self.store = EdgeStore()
        self._newest: tuple[int, bytes] | None = None

    def process(self, batch: Batch, received_at: Sequence[float] | float | None = None, *,
                replay: bool = False) -> BatchResult:
        table = as_table(batch)
        result = BatchResult()
        if table.num_rows == 0:
            return result
        store = self.store
        status, eids = store.apply(table)
        new_rows, new_ids = batch_edges(status, eids, replay)
        judge(status, table, result, store.horizon)
        newest_before = self._newest
        rings = find_rings(store, new_ids, newest_before, self.options)
        if new_ids.size:
            newest = newest_key(store, new_ids)
            self._newest = newest if newest_before is None else max(newest, newest_before)
        result.late_payments = rings.late
        arrival = arrival_times(store, eids[new_rows], new_rows, received_at, table.num_rows)
        result.alerts = build_alerts(store, rings, arrival, self.clock())
        result.truncated_searches = len(rings.cut)
        return result

    def evict(self, horizon_ts: int) -> int:
        return self.store.evict(horizon_ts)

    def edges(self, accounts: Sequence[str], direction: str, since: int | None = None
              ) -> dict[str, list[StoredEdge]]:
        d = direction_of(direction)
        return {a: self.store.edges(self.store.list_of(a, d, since)) for a in accounts}

    def degrees(self, accounts: Sequence[str], direction: str) -> dict[str, int]:
        d = direction_of(direction)
        return {a: self.store.degree(a, d) for a in accounts}

    def edge_count(self) -> int:
        return self.store.live_count()

    def nbytes(self) -> int:
        return self.store.nbytes()

    def checkpoint(self) -> list[pa.Table]:
        return [self.store.to_table()]

    def restore(self, tables: Sequence[pa.Table]) -> None:
        store = EdgeStore()
        for table in tables:
            store.apply(table)
        self.store = store
        self._newest = newest_key(store, np.arange(store.n_edges))

    def close(self) -> None:
        return None


DIRECTIONS = {"out": 0, "in": 1}


def direction_of(direction: str) -> int:
    try:
        return DIRECTIONS[direction]
    except KeyError:
        raise ValueError(f"direction: expected 'out' or 'in', got {direction!r}") from None

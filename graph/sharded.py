"""The graph over several `GraphShard`s: runtime actors, or plain objects in this process.

Each shard keeps an `EdgeStore` of the payments that touch the accounts it
owns (`shard_of`): the out-list of an owned `src`, the in-list of an owned
`dst`. A batch goes to the shards of its payments' ends (one `apply` call per
shard). The search then runs where the batch is — in the engine process (the
driver), not on the shards — over a small store of the edges it needs:

1. gather rounds: forward from each new payment's dst, backward from its src
   (and, for a late payment, the wider neighbourhood of `find_rings`' late
   search), each round one `expand` call per shard for the whole batch,
   asking for the edges of the frontier accounts inside the time bounds the
   ring definition allows (under strict order: no earlier than the label
   that reached the account forward, no later than it backward);
2. the gathered edges and the batch go into a fresh `EdgeStore`, and
   `find_rings` — the same compiled search as in-process — runs on it.

Why this split: the rounds move arrays of edges, not labels per trigger, so a
shard's work per round is one vectorised look-up per account; the search
itself is the in-process kernel, so there is one implementation of the ring
definition. The gathered set holds every edge of every path of at most
`max_hops - 1` witnesses that any trigger of the batch can use (forward half
and backward half), so the rings, and their canonical witnesses, are those
of the full graph.

Named shards (`ShardedRingGraph.create(name=...)`/`attach`) let several
engines share one set of actors.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .batch import PAYMENT_SCHEMA
from .model import AMOUNT_SCALE
from .options import SearchOptions
from .ring_graph import (
    Batch,
    BatchResult,
    _direction,
    arrival_times,
    as_table,
    build_alerts,
    find_rings,
    judge,
    newest_key,
)
from .store import DUPLICATE, NEW, EdgeStore, StoredEdge

REQUEST_SCHEMA = pa.schema([("account", pa.string()), ("direction", pa.int8()), ("lo", pa.int64()),
                            ("hi", pa.int64())])


def shard_of(account: str, num_shards: int) -> int:
    """Stable partition of `account` (crc32, the same in every process, unlike `hash`)."""
    return zlib.crc32(account.encode()) % num_shards


def shards_of_column(column: pa.Array | pa.ChunkedArray, num_shards: int) -> np.ndarray:
    """`shard_of` for every value of a string column, hashing each distinct value once."""
    encoded = (column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column).dictionary_encode()
    per_name = np.array([shard_of(n, num_shards) for n in encoded.dictionary.to_pylist()], np.int64)
    if len(encoded) == 0:
        return np.zeros(0, np.int64)
    return per_name[encoded.indices.to_numpy(zero_copy_only=False)]


class GraphShard:
    """One shard of the graph: the payments touching the accounts it owns, as arrays.

    Runs as a runtime actor (`ShardedRingGraph.create`), or in process. Its
    actor checkpoint is an Arrow table of its payments (`__checkpoint__`).
    """

    def __init__(self, index: int, num_shards: int):
        self.index = index
        self.num_shards = num_shards
        self.store = EdgeStore(owns=lambda account: shard_of(account, num_shards) == index)
        self._newest: tuple[int, bytes] | None = None

    def apply(self, table: pa.Table) -> tuple[np.ndarray, tuple[int, bytes] | None]:
        """Store rows; returns their status and the newest (ts, tx_id) stored before them."""
        before = self._newest
        old_end = self.store.n_edges
        status, _ = self.store.apply(table)
        newest = newest_key(self.store, np.arange(old_end, self.store.n_edges))
        if newest is not None and (before is None or newest > before):
            self._newest = newest
        return status, before

    def expand(self, requests: pa.Table, max_degree: int | None) -> tuple[pa.Table, list[tuple[int, str]]]:
        """The edges each request asks for (`REQUEST_SCHEMA`), and the (direction, account) lists skipped as hubs."""
        store = self.store
        accounts = requests.column("account").to_pylist()
        directions = requests.column("direction").to_numpy()
        los, his = requests.column("lo").to_numpy(), requests.column("hi").to_numpy()
        picked, hubs = [], []
        for account, d, lo, hi in zip(accounts, directions.tolist(), los.tolist(), his.tolist()):
            if max_degree is not None and store.degree(account, d) > max_degree:
                hubs.append((d, account))
                continue
            a = store.account_id(account)
            if a is not None:
                picked.append(store.entries(a, d, lo, hi))
        ids = np.unique(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
        return store.edge_table(ids), hubs

    def evict(self, horizon_ts: int) -> int:
        return self.store.evict(horizon_ts)

    def edges_of(self, accounts: list[str], direction: int, since: int | None) -> dict[str, pa.Table]:
        return {a: self.store.edge_table(self.store.list_of(a, direction, since)) for a in accounts}

    def degrees(self, accounts: list[str], direction: int) -> dict[str, int]:
        return {a: self.store.degree(a, direction) for a in accounts}

    def edge_count(self) -> int:
        return self.store.live_count()

    def nbytes(self) -> int:
        return self.store.nbytes()

    def snapshot(self) -> pa.Table:
        return self.store.to_table()

    def restore(self, table: pa.Table) -> None:
        self.__restore__(table)

    def __checkpoint__(self) -> pa.Table:
        return self.store.to_table()

    def __restore__(self, table: pa.Table) -> None:
        self.store = EdgeStore(owns=lambda account: shard_of(account, self.num_shards) == self.index)
        self.store.apply(table)
        self._newest = newest_key(self.store, np.arange(self.store.n_edges))


class ShardedRingGraph:
    """`RingGraph` over `GraphShard`s: actor handles, or `GraphShard` objects for an in-process run."""

    def __init__(self, options: SearchOptions, shards: Sequence[Any], *, clock: Callable[[], float] = time.time,
                 owned: bool = False):
        self.options = options
        self.clock = clock
        self.shards = list(shards)
        self.num_shards = len(self.shards)
        self._local = all(isinstance(s, GraphShard) for s in self.shards)
        self._owned = owned
        self._horizon: int | None = None  # the last eviction horizon sent to the shards (for rejection reasons)

    @classmethod
    def in_process(cls, options: SearchOptions, num_shards: int) -> "ShardedRingGraph":
        return cls(options, [GraphShard(i, num_shards) for i in range(num_shards)])

    @classmethod
    def create(cls, options: SearchOptions, num_shards: int, *, name: str | None = None,
               restore_from: Sequence[str] | None = None, **actor_options: Any) -> "ShardedRingGraph":
        """Start `num_shards` GraphShard actors.

        `name`: actors named `<name>-<i>`, for `attach`; `restore_from`: each shard
        loads that runtime checkpoint id itself (its state never passes through
        here); other keywords are runtime actor options (`checkpoint_uri`,
        `max_restarts`, ...).
        """
        from ringwatch import runtime as rt

        actor = rt.remote(GraphShard)
        handles = []
        for i in range(num_shards):
            options_i = dict(actor_options)
            if name:
                options_i["name"] = f"{name}-{i}"
            if restore_from:
                options_i["restore_from"] = restore_from[i]
            handles.append((actor.options(**options_i) if options_i else actor).remote(i, num_shards))
        return cls(options, handles, owned=True)

    @classmethod
    def attach(cls, options: SearchOptions, name: str, num_shards: int) -> "ShardedRingGraph":
        """The shards another engine created with `create(name=...)`."""
        from ringwatch import runtime as rt

        return cls(options, [rt.get_actor(f"{name}-{i}") for i in range(num_shards)])

    @property
    def handles(self) -> list[Any]:
        return list(self.shards)

    def _call(self, method: str, args_by_shard: dict[int, tuple]) -> dict[int, Any]:
        if self._local:
            return {i: getattr(self.shards[i], method)(*args) for i, args in args_by_shard.items()}
        from ringwatch import runtime as rt

        refs = {i: getattr(self.shards[i], method).remote(*args) for i, args in args_by_shard.items()}
        return dict(zip(refs, rt.get(list(refs.values()))))

    # ---- the batch ---------------------------------------------------------------------------------------

    def process(self, batch: Batch, received_at: Sequence[float] | float | None = None, *,
                replay: bool = False) -> BatchResult:
        table = as_table(batch).select(PAYMENT_SCHEMA.names).combine_chunks()
        result = BatchResult()
        rows = table.num_rows
        if rows == 0:
            return result
        src_shard = shards_of_column(table.column("src"), self.num_shards)
        dst_shard = shards_of_column(table.column("dst"), self.num_shards)
        parts = {}
        for shard in range(self.num_shards):
            picked = np.flatnonzero((src_shard == shard) | (dst_shard == shard))
            if picked.size:
                parts[shard] = picked
        answers = self._call("apply", {s: (table.take(picked),) for s, picked in parts.items()})
        status = np.empty(rows, np.int8)
        newest_before = None
        for shard, picked in parts.items():
            shard_status, before = answers[shard]
            from_src = src_shard[picked] == shard
            status[picked[from_src]] = shard_status[from_src]
            if before is not None and (newest_before is None or before > newest_before):
                newest_before = before
        judge(status, table, result, self._horizon)
        new_rows = np.flatnonzero((status == NEW) | (replay & (status == DUPLICATE)))
        if new_rows.size == 0:
            return result
        fresh = table.take(new_rows)
        gathered, hubs = self._gather(fresh, newest_before)
        store = EdgeStore()
        if gathered.num_rows:
            store.apply(gathered.filter(pc.invert(pc.is_in(gathered.column("tx_id"), fresh.column("tx_id")))))
        _, new_ids = store.apply(fresh)
        store.mark_hubs(hubs)
        options = self.options if not hubs else _without_degree(self.options)
        rings = find_rings(store, new_ids, newest_before, options)
        result.late_payments = int(_count_late(fresh, newest_before))
        arrival = arrival_times(store, new_ids, new_rows, received_at, rows)
        result.alerts = build_alerts(store, rings, arrival, self.clock())
        result.truncated_searches = len(rings.cut)
        return result

    def _gather(self, fresh: pa.Table, newest_before: tuple[int, bytes] | None
                ) -> tuple[pa.Table, list[tuple[int, str]]]:
        """Rounds of `expand` calls: every edge the batch's searches (trigger and late) may use."""
        o = self.options
        strict, w, hops = o.order == "strict", o.window_ms, o.max_hops - 1
        src, dst = fresh.column("src").to_pylist(), fresh.column("dst").to_pylist()
        ts = fresh.column("ts").to_numpy().tolist()
        tx = fresh.column("tx_id").to_pylist()
        # frontier: (direction, account) -> [lo, hi, hops left]
        frontier: dict[tuple[int, str], list[int]] = {}

        def want(d: int, account: str, lo: int, hi: int, left: int) -> None:
            if left <= 0:
                return
            now = frontier.get((d, account))
            if now is None:
                frontier[(d, account)] = [lo, hi, left]
            else:
                now[0], now[1], now[2] = min(now[0], lo), max(now[1], hi), max(now[2], left)

        for s, d_, t, x in zip(src, dst, ts, tx):
            if s == d_:
                continue
            want(0, d_, t - w, t, (hops + 1) // 2)
            want(1, s, t - w, t, hops // 2)
            if newest_before is not None and (t, x.encode()) < newest_before:
                want(0, d_, t if strict else t - w, t + w, hops)  # the older trigger itself is one more hop
                want(1, s, t - w, t if strict else t + w, hops - 1)
        asked: dict[tuple[int, str], list[int]] = {}
        tables, hubs = [], []
        while frontier:
            requests = {}
            for key, (lo, hi, left) in frontier.items():
                done = asked.get(key)
                if done is not None and done[0] <= lo and done[1] >= hi and done[2] >= left:
                    continue
                if done is not None:
                    lo, hi, left = min(lo, done[0]), max(hi, done[1]), max(left, done[2])
                asked[key] = [lo, hi, left]
                requests[key] = (lo, hi, left)
            frontier = {}
            if not requests:
                break
            by_shard: dict[int, list] = {}
            for (d, account), bounds in requests.items():
                by_shard.setdefault(shard_of(account, self.num_shards), []).append((d, account, *bounds))
            answers = self._call("expand", {
                shard: (pa.table([pa.array([r[1] for r in reqs], pa.string()), pa.array([r[0] for r in reqs], pa.int8()),
                                  pa.array([r[2] for r in reqs], pa.int64()), pa.array([r[3] for r in reqs], pa.int64())],
                                 schema=REQUEST_SCHEMA), o.max_degree)
                for shard, reqs in by_shard.items()})
            for shard, (edges, shard_hubs) in answers.items():
                hubs.extend((int(d), a) for d, a in shard_hubs)
                if edges.num_rows == 0:
                    continue
                tables.append(edges)
                e_src, e_dst = edges.column("src").to_pylist(), edges.column("dst").to_pylist()
                e_ts = edges.column("ts").to_numpy().tolist()
                for a, b, t in zip(e_src, e_dst, e_ts):
                    out = requests.get((0, a))
                    if out is not None and out[0] <= t <= out[1]:
                        want(0, b, t if strict else out[0], out[1], out[2] - 1)
                    into = requests.get((1, b))
                    if into is not None and into[0] <= t <= into[1]:
                        want(1, a, into[0], t if strict else into[1], into[2] - 1)
        gathered = pa.concat_tables(tables) if tables else PAYMENT_SCHEMA.empty_table()
        return gathered, hubs

    # ---- upkeep and reads -------------------------------------------------------------------------------

    def evict(self, horizon_ts: int) -> int:
        self._horizon = max(horizon_ts, self._horizon if self._horizon is not None else horizon_ts)
        return sum(self._call("evict", {s: (horizon_ts,) for s in range(self.num_shards)}).values())

    def _by_owner(self, accounts: Sequence[str]) -> dict[int, list[str]]:
        owners: dict[int, list[str]] = {}
        for account in accounts:
            owners.setdefault(shard_of(account, self.num_shards), []).append(account)
        return owners

    def edges(self, accounts: Sequence[str], direction: str, since: int | None = None
              ) -> dict[str, list[StoredEdge]]:
        d = _direction(direction)
        answers = self._call("edges_of", {s: (names, d, since) for s, names in self._by_owner(accounts).items()})
        found: dict[str, list[StoredEdge]] = {}
        for tables in answers.values():
            for account, table in tables.items():
                found[account] = stored_edges(table)
        return {a: found.get(a, []) for a in accounts}

    def degrees(self, accounts: Sequence[str], direction: str) -> dict[str, int]:
        d = _direction(direction)
        answers = self._call("degrees", {s: (names, d) for s, names in self._by_owner(accounts).items()})
        return {a: n for part in answers.values() for a, n in part.items()}

    def edge_count(self) -> int:
        """Payments stored, counted once per shard that holds them (twice when src and dst part ways)."""
        return sum(self._call("edge_count", {s: () for s in range(self.num_shards)}).values())

    def nbytes(self) -> int:
        return sum(self._call("nbytes", {s: () for s in range(self.num_shards)}).values())

    def checkpoint(self) -> list[pa.Table]:
        answers = self._call("snapshot", {s: () for s in range(self.num_shards)})
        return [answers[s] for s in range(self.num_shards)]

    def restore(self, tables: Sequence[pa.Table]) -> None:
        if len(tables) != self.num_shards:
            raise ValueError(f"a checkpoint of {len(tables)} shards cannot restore {self.num_shards} shards")
        self._call("restore", {s: (tables[s],) for s in range(self.num_shards)})

    def close(self) -> None:
        if self._owned and not self._local:
            from ringwatch import runtime as rt

            for handle in self.shards:
                rt.kill(handle)


def stored_edges(table: pa.Table) -> list[StoredEdge]:
    return [StoredEdge(t, s, d, ts, Decimal(a) / AMOUNT_SCALE, c) for t, s, d, ts, a, c in zip(
        *(table.column(n).to_pylist() for n in PAYMENT_SCHEMA.names))]


def _without_degree(options: SearchOptions) -> SearchOptions:
    """The options for the gathered store: hubs are marked there (a partial store cannot count degrees)."""
    import dataclasses

    return dataclasses.replace(options, max_degree=None)


def _count_late(fresh: pa.Table, newest_before: tuple[int, bytes] | None) -> int:
    if newest_before is None:
        return 0
    return sum(1 for t, x in zip(fresh.column("ts").to_pylist(), fresh.column("tx_id").to_pylist())
               if (t, x.encode()) < newest_before)

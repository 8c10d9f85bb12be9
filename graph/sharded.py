"""The graph over several `GraphShard`s: runtime actors, or plain objects in this process.

Each shard keeps an `EdgeStore` of the payments that touch the accounts it
owns (`shard_of`): the out-list of an owned `src`, the in-list of an owned
`dst`. A batch goes to the shards of its payments' ends (one `apply` call per
shard). The search then runs in rounds (label_rounds.py), each one call per
shard for the whole batch:

1. label rounds: per new payment, forward and backward labels grown on the
   shards that own the frontier accounts (shard_kernel.py), the meet test in
   the driver — labels, not edges, cross per round, and almost every payment
   is proven ring-free here;
2. the few that meet (and the older payments a late one may complete) get
   their neighbourhoods gathered, in the same rounds: the edges within reach
   of either half of a ring, with all parallel edges;
3. those edges and the batch go into a small `EdgeStore` in the driver, and
   `find_rings` — the same compiled search as in-process — lists the rings,
   so there is one implementation of the ring definition.

Accounts cross shards as 64-bit gids (shard_kernel.py), never names, except
in gathered payments. Named shards (`ShardedRingGraph.create(name=...)`/
`attach`) let several engines share one set of actors: a round is stateless
on the shards.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ringwatch.runtime.checkpoints import DeferredState

from . import shard_kernel as sk
from .batch import PAYMENT_SCHEMA
from .kernel import EMPTY
from .label_rounds import (
    LATE,
    SEARCH,
    WRAP,
    Candidates,
    DegreeCache,
    FirstLayer,
    LabelReply,
    LabelRequest,
    LabelRounds,
    RoundFigures,
)
from .model import AMOUNT_SCALE, Transaction
from .options import SearchOptions
from .pickling import ArrayRecord
from .ring_graph import (
    Batch,
    BatchResult,
    arrival_times,
    as_table,
    build_alerts,
    direction_of,
    find_rings,
    judge,
    newest_key,
)
from .store import DUPLICATE, NEW, EdgeStore, StoredEdge, string_buffers


def shard_of(account: str, num_shards: int) -> int:
    """Stable partition of `account` (crc32, the same in every process, unlike `hash`)."""
    return zlib.crc32(account.encode()) % num_shards


def owners_of_column(column: pa.Array | pa.ChunkedArray, num_shards: int, gid_mask: int = int(sk.GID_MASK)
                     ) -> tuple[np.ndarray, np.ndarray]:
    """`shard_of` and the gid of every value of a string column, in compiled code."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if column.null_count:
        raise ValueError("account: a payment without one cannot be stored")
    buf, off = string_buffers(column)
    return sk.owners(buf, off, num_shards, sk.CRC_TABLE, np.uint64(gid_mask))


@dataclass
class BatchPart(ArrayRecord):
    """The rows of a batch one shard stores (`GraphShard.store_part`): one message, see `ArrayRecord`."""

    table: pa.Table
    rows: np.ndarray
    first: FirstLayer


@dataclass
class Stored(ArrayRecord):
    """A shard's answer to storing its part of a batch.

    `status` per row (NEW / DUPLICATE / CONFLICT), `newest_before` (the newest
    (ts, tx_id) it held before), `lengths` (rows x [src out, src in, dst out,
    dst in] list lengths, -1 where it does not own the account: the search's
    cost model), `first` per row (bit 0/1: it grew the forward/backward first
    layer; bit 2/3: and that side ran out there) and those layers' labels.
    """

    status: np.ndarray
    newest_before: tuple[int, bytes] | None
    lengths: np.ndarray
    first: np.ndarray
    labels: LabelReply | None
    seconds: float = 0.0  # the shard's compute time for this call

    def nbytes(self) -> int:
        return self.status.nbytes + self.lengths.nbytes + self.first.nbytes + (self.labels.nbytes() if self.labels
                                                                              else 0)


class GraphShard:
    """One shard of the graph: the payments touching the accounts it owns, as arrays.

    Runs as a runtime actor (`ShardedRingGraph.create`), or in process. Its
    actor checkpoint is an Arrow table of its payments (`__checkpoint__`).
    Besides the store it keeps, per account it has seen, the account's gid and
    owner, and a table from gid to the accounts it owns (label_rounds' entries
    name accounts by gid).
    """

    def __init__(self, index: int, num_shards: int, gid_mask: int = int(sk.GID_MASK)):
        self.index = index
        self.num_shards = num_shards
        self.gid_mask = gid_mask  # the driver's (`ShardedRingGraph`): narrower only where tests force collisions
        self._reset()
        load_compiled_code()

    def _reset(self) -> None:
        self.store = EdgeStore(owns=self._owns)
        self._newest: tuple[int, bytes] | None = None
        self._gid_of = np.zeros(1024, np.uint64)
        self._owner_of = np.zeros(1024, np.int16)
        self._g_next = np.full(1024, -1, np.int32)
        self._g_tab = np.full(2048, EMPTY, np.int32)
        self._indexed = 0
        self._owned = 0

    def _owns(self, buf: np.ndarray, off: np.ndarray) -> np.ndarray:
        """Which of these names (Arrow string buffers) this shard owns: `shard_of`, in compiled code."""
        owner, _ = sk.owners(buf, off, self.num_shards, sk.CRC_TABLE, np.uint64(self.gid_mask))
        return owner == self.index

    def _index(self) -> None:
        """Give the accounts new to the store their gid and owner; file the owned ones by gid."""
        store, start, stop = self.store, self._indexed, self.store.accounts.count
        if stop == start:
            return
        if stop > self._gid_of.shape[0]:
            size = max(stop, 2 * self._gid_of.shape[0])
            for name in ("_gid_of", "_owner_of", "_g_next"):
                old = getattr(self, name)
                grown = np.empty(size, old.dtype)
                grown[:start] = old[:start]
                setattr(self, name, grown)
        owner, gid = sk.owners(store.accounts.buf, store.accounts.off[start:stop + 1], self.num_shards, sk.CRC_TABLE,
                               np.uint64(self.gid_mask))
        self._owner_of[start:stop], self._gid_of[start:stop] = owner, gid
        owned = self._owner_of[:stop] == self.index
        self._owned += int(np.count_nonzero(owned[start:stop]))
        if 2 * self._owned > self._g_tab.shape[0]:
            size = self._g_tab.shape[0]
            while 2 * self._owned > size:
                size *= 2
            self._g_tab = np.empty(size, np.int32)
            sk.rebuild_gid_table(self._g_tab, self._gid_of, self._g_next, owned, stop)
        else:
            sk.index_accounts(start, stop, owned, self._gid_of, self._g_tab, self._g_next)
        self._indexed = stop

    def apply(self, table: pa.Table, rows: np.ndarray | None = None, first: FirstLayer | None = None) -> Stored:
        """Store rows (batch rows `rows`) and, with `first`, grow the first layer of their searches (see `Stored`)."""
        started = time.perf_counter()
        before = self._newest
        store = self.store
        old_end = store.n_edges
        status, eids = store.apply(table)
        self._index()
        newest = newest_key(store, np.arange(old_end, store.n_edges))
        if newest is not None and (before is None or newest > before):
            self._newest = newest
        flags, labels = np.zeros(len(status), np.int8), None
        if first is not None:
            *entries, flags = sk.first_layer(
                rows, status, eids, first.replay, first.window, first.min_amount, first.cheap, first.max_degree >= 0,
                self.index, self._owner_of, self._gid_of, store.e_hot, store.e_amt, store.a_seg)
            labels = self._expand(*entries, strict=first.strict, window=first.window, min_amount=first.min_amount,
                                  max_degree=first.max_degree)
            flags |= sk.ran_out(rows, flags, labels.job, labels.dir, labels.hubs)
        lengths = sk.list_lengths(eids, self.index, self._owner_of, store.e_hot, store.a_seg)
        return Stored(status, before, lengths, flags, labels, time.perf_counter() - started)

    def store_part(self, part: BatchPart) -> Stored:
        """`apply` for the driver's call: the shard's part of a batch, with the first layers to grow."""
        return self.apply(part.table, part.rows, part.first)

    def _expand(self, job: np.ndarray, tag: np.ndarray, gid: np.ndarray, label: np.ndarray, bound: np.ndarray, *,
                strict: bool, window: int, min_amount: int, max_degree: int) -> LabelReply:
        """`shard_kernel.expand` over this shard's lists; the labels as a reply (gathered rows included)."""
        store = self.store
        job, d, gid, owner, value, degree, hubs, scanned = sk.expand(
            job, tag, gid, label, bound, strict, window, min_amount, max_degree, self.index, self._g_tab, self._g_next,
            self._gid_of, self._owner_of, store.a_seg, store.p_eid, store.e_hot, store.e_amt, store.horizon)
        edges = store.edge_table(np.unique(scanned)) if scanned.size else None
        return LabelReply(job, d, gid, owner, value, degree, hubs, edges)

    def search_round(self, request: LabelRequest) -> LabelReply:
        """One round of label_rounds' search over the lists this shard owns."""
        started = time.perf_counter()
        r, store = request, self.store
        reply = self._expand(r.job, r.tag, r.gid, r.label, r.bound, strict=r.strict, window=r.window,
                             min_amount=r.min_amount, max_degree=r.max_degree)
        scans = r.scans
        if scans is not None:
            join = sk.fill_map(scans.join_gid, scans.join_job, scans.join_val, scans.join_hop,
                               _map_size(scans.join_gid.size))
            cand_job, found = sk.late_scan(
                scans.job, scans.gid, scans.start, scans.stop, scans.fd, scans.open_scan, r.strict, r.window,
                r.max_hops, r.min_amount, *join, self._g_tab, self._g_next, self._gid_of, store.a_seg, store.p_eid,
                store.e_hot, store.e_amt, store.horizon)
            if found.size:
                src, dst = store.e_src[found], store.e_dst[found]
                reply.candidates = Candidates(store.edge_table(found), cand_job, self._gid_of[src],
                                              self._owner_of[src], self._gid_of[dst], self._owner_of[dst])
        reply.seconds = time.perf_counter() - started
        return reply

    def hubs(self, accounts: list[str], max_degree: int) -> list[tuple[int, str]]:
        """The (direction, account) lists over the hub guard among these (owned) accounts."""
        return [(d, a) for a in accounts for d in range(2) if self.store.degree(a, d) > max_degree]

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

    def cpu_seconds(self) -> float:
        """CPU time of the process this shard runs in (all its threads): what its work cost, whatever the load."""
        return time.process_time()

    def snapshot(self) -> pa.Table:
        return self.store.to_table()

    def restore(self, table: pa.Table) -> None:
        self.__restore__(table)

    def __checkpoint__(self) -> DeferredState:
        """The store's snapshot (a few attribute reads); its Arrow table is built on the runtime's checkpoint
        writer thread while this shard serves the next calls (`runtime/checkpoints.py`)."""
        return DeferredState(self.store.snapshot().to_table)

    def __restore__(self, table: pa.Table) -> None:
        self._reset()
        self.store.apply(table)
        self._index()
        self._newest = newest_key(self.store, np.arange(self.store.n_edges))


_LOADED = False


def load_compiled_code() -> None:
    """Load the compiled code a shard or a driver over shard actors runs (numba's cache) once per process, when
    the first shard starts or the first graph over actors is made, so that the first batch does not pay for it
    (a third of a second of CPU in the driver, measured): a tiny sharded search with a ring and a late payment
    runs every path (about 0.5 s; compiling instead when the cache is cold)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True  # first: the search below starts shards of its own
    graph = ShardedRingGraph.in_process(SearchOptions(window_ms=10, max_hops=4), 2)
    graph.process([Transaction("w2", "a", "b", "1", 2), Transaction("w3", "b", "c", "1", 3)])
    graph.process([Transaction("w1", "c", "a", "1", 1), Transaction("w4", "c", "a", "1", 4)])
    # a store and its account tables grow past their first size (the code that grows them runs once)
    graph.process([Transaction(f"g{i}", f"g{i}", f"g{i + 1}", "1", 5) for i in range(3000)])
    graph.evict(6)  # and compact


def _map_size(n: int) -> int:
    size = 64
    while size < 2 * n:
        size *= 2
    return size


class ShardedRingGraph:
    """`RingGraph` over `GraphShard`s: actor handles, or `GraphShard` objects for an in-process run.

    `figures` holds the last batch's search figures (rounds, bytes each way).
    """

    def __init__(self, options: SearchOptions, shards: Sequence[Any], *, clock: Callable[[], float] = time.time,
                 owned: bool = False, gid_mask: int = int(sk.GID_MASK)):
        self.options = options
        self.gid_mask = gid_mask  # must be the shards' own
        self.clock = clock
        self.shards = list(shards)
        self.num_shards = len(self.shards)
        self._local = all(isinstance(s, GraphShard) for s in self.shards)
        if not self._local:
            load_compiled_code()  # the driver's half of the search too, before the first batch
        self._owned = owned
        self._degrees = DegreeCache()
        self.figures = RoundFigures()
        self._horizon: int | None = None  # the shards' eviction horizon (rejection reasons)

    @classmethod
    def in_process(cls, options: SearchOptions, num_shards: int, *, gid_mask: int = int(sk.GID_MASK)
                   ) -> "ShardedRingGraph":
        """`num_shards` GraphShards in this process. `gid_mask` narrows account gids (tests force collisions)."""
        return cls(options, [GraphShard(i, num_shards, gid_mask) for i in range(num_shards)], gid_mask=gid_mask)

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
        self.figures = RoundFigures()
        if rows == 0:
            return result
        o = self.options
        src_shard, src_gid = owners_of_column(table.column("src"), self.num_shards, self.gid_mask)
        dst_shard, dst_gid = owners_of_column(table.column("dst"), self.num_shards, self.gid_mask)
        search = LabelRounds(o, self.num_shards, self._degrees, rows)
        first = FirstLayer(replay, o.order == "strict", o.window_ms, o.min_amount_units,
                           -1 if o.max_degree is None else o.max_degree)
        status, newest_before, lengths, grown, labels = self._apply(table, src_shard, dst_shard, first, search)
        judge(status, table, result, self._horizon)
        fresh = (status == NEW) | (replay & (status == DUPLICATE))
        new_rows = np.flatnonzero(fresh)
        if new_rows.size == 0:
            return result
        ts = table.column("ts").to_numpy()
        late = _older(table, new_rows, ts, newest_before)
        result.late_payments = int(late.size)
        loop = pc.equal(table.column("src"), table.column("dst")).to_numpy(zero_copy_only=False)
        small = table.column("amount").to_numpy() < o.min_amount_units
        ends = (src_gid, src_shard, lengths[1], dst_gid, dst_shard, lengths[2])
        # job i is batch row i: the shards grew first layers under that number; a side that ran out there
        # leaves nothing to search
        triggers = fresh & ~loop & ~small
        search.add(SEARCH, np.arange(rows), ts, *ends, active=triggers & ((grown & 12) == 0), first=grown & 3,
                   replies=labels)
        search.figures.searches = int(np.count_nonzero(triggers))
        if late.size:  # under strict order a wrap search first (LATE jobs for those that meet), else LATE at once
            if o.order == "strict":
                # a ring through a late payment leaves its dst and enters its src: an empty list settles it
                search.add(WRAP, late, ts[late], *(column[late] for column in ends),
                           active=(lengths[1][late] != 0) & (lengths[2][late] != 0))
            else:
                search.add(LATE, late, ts[late], *(column[late] for column in ends))
        while True:
            requests = search.plan()
            if not requests:
                break
            started = time.perf_counter()
            answers = self._call("search_round", {s: (request,) for s, request in requests.items()})
            search.figures.call_s += time.perf_counter() - started
            search.absorb(list(answers.values()))
        self.figures = search.figures
        cut_rows = search.cut_refs()
        # the exact search's triggers: the payments whose search met, and the late ones whose rings at newer
        # triggers are looked for (their candidates come gathered)
        targets = np.union1d(search.survivor_refs(), search.late_refs())
        if targets.size == 0 and not search.gathered:
            result.truncated_searches = int(np.unique(cut_rows).size)
            return result
        rings, store, arrival = self._search_gathered(table, targets, new_rows, search, newest_before, cut_rows,
                                                      received_at)
        result.alerts = build_alerts(store, rings, arrival, self.clock())
        # searches cut on the shards that had no ring to raise count too
        result.truncated_searches = len(rings.cut) + int(np.setdiff1d(cut_rows, targets).size)
        return result

    def _search_gathered(self, table: pa.Table, targets: np.ndarray, new_rows: np.ndarray, search: LabelRounds,
                         newest_before: tuple[int, bytes] | None, cut_rows: np.ndarray,
                         received_at: Sequence[float] | float | None) -> tuple:
        """`find_rings` over the batch rows it must search (`targets`) and the gathered edges, in a small store."""
        store = EdgeStore()
        _, target_ids = store.apply(table.take(targets))
        eids, rows = [target_ids], [targets]
        if search.gathered:
            gathered = pa.concat_tables(search.gathered)
            _, gathered_ids = store.apply(gathered)
            # gathered copies of this batch's payments arrived with it (alert latency)
            fresh_tx = table.column("tx_id").take(pa.array(new_rows))
            at = pc.index_in(gathered.column("tx_id"), value_set=fresh_tx).to_numpy(zero_copy_only=False)
            known = ~np.isnan(at) if at.dtype.kind == "f" else at >= 0
            eids.append(gathered_ids[known])
            rows.append(new_rows[at[known].astype(np.int64)])
        options = self.options
        if options.max_degree is not None:
            store.mark_hubs(self._hubs(store.accounts.decode(0, store.accounts.count), options.max_degree))
            options = dataclasses.replace(options, max_degree=None)  # the marks stand for the shards' degrees
        rings = find_rings(store, target_ids, newest_before, options)
        cut = np.intersect1d(cut_rows, targets)
        for e in target_ids[np.searchsorted(targets, cut)].tolist():
            rings.cut[e] = rings.cut.get(e, 0) | 2
        arrival = arrival_times(store, np.concatenate(eids), np.concatenate(rows), received_at, table.num_rows)
        return rings, store, arrival

    def _apply(self, table: pa.Table, src_shard: np.ndarray, dst_shard: np.ndarray, first: FirstLayer,
               search: LabelRounds) -> tuple:
        """Store the batch on its shards, growing first layers there: each row's status (its src shard's
        word), the newest key stored before it, the ends' list lengths (src out, src in, dst out, dst in),
        which first layers were grown (bits per row) and their labels."""
        parts = {}
        for shard in range(self.num_shards):
            picked = np.flatnonzero((src_shard == shard) | (dst_shard == shard))
            if picked.size:
                parts[shard] = picked
        requests = {s: BatchPart(table.take(picked), picked.astype(np.int32), first) for s, picked in parts.items()}
        started = time.perf_counter()
        answers = self._call("store_part", {s: (part,) for s, part in requests.items()})
        search.figures.call_s += time.perf_counter() - started
        rows = table.num_rows
        status = np.empty(rows, np.int8)
        lengths = np.full((4, rows), -1, np.int32)
        grown = np.zeros(rows, np.int8)
        newest_before = None
        for shard, picked in parts.items():
            stored = answers[shard]
            from_src = src_shard[picked] == shard
            status[picked[from_src]] = stored.status[from_src]
            lengths[:2, picked[from_src]] = stored.lengths[:2, from_src]
            from_dst = dst_shard[picked] == shard
            lengths[2:, picked[from_dst]] = stored.lengths[2:, from_dst]
            grown[picked] |= stored.first
            before = stored.newest_before
            if before is not None and (newest_before is None or before > newest_before):
                newest_before = before
        search.count_store_call(sum(r.table.get_total_buffer_size() + r.rows.nbytes for r in requests.values()),
                                sum(a.nbytes() for a in answers.values()), max(a.seconds for a in answers.values()))
        labels = [a.labels for a in answers.values() if a.labels is not None]
        return status, newest_before, lengths, grown, labels

    def _hubs(self, accounts: Sequence[str], max_degree: int) -> list[tuple[int, str]]:
        """The lists over the hub guard among `accounts`, each judged by the shard that owns it."""
        answers = self._call("hubs", {s: (names, max_degree) for s, names in self._by_owner(accounts).items()})
        return [hub for part in answers.values() for hub in part]

    # ---- upkeep and reads -------------------------------------------------------------------------------

    def evict(self, horizon_ts: int) -> int:
        self._horizon = horizon_ts if self._horizon is None else max(self._horizon, horizon_ts)
        return sum(self._call("evict", {s: (horizon_ts,) for s in range(self.num_shards)}).values())

    def _by_owner(self, accounts: Sequence[str]) -> dict[int, list[str]]:
        owners: dict[int, list[str]] = {}
        for account in accounts:
            owners.setdefault(shard_of(account, self.num_shards), []).append(account)
        return owners

    def edges(self, accounts: Sequence[str], direction: str, since: int | None = None
              ) -> dict[str, list[StoredEdge]]:
        d = direction_of(direction)
        answers = self._call("edges_of", {s: (names, d, since) for s, names in self._by_owner(accounts).items()})
        found: dict[str, list[StoredEdge]] = {}
        for tables in answers.values():
            for account, table in tables.items():
                found[account] = stored_edges(table)
        return {a: found.get(a, []) for a in accounts}

    def degrees(self, accounts: Sequence[str], direction: str) -> dict[str, int]:
        d = direction_of(direction)
        answers = self._call("degrees", {s: (names, d) for s, names in self._by_owner(accounts).items()})
        return {a: n for part in answers.values() for a, n in part.items()}

    def edge_count(self) -> int:
        """Payments stored, counted once per shard that holds them (twice when src and dst part ways)."""
        return sum(self._call("edge_count", {s: () for s in range(self.num_shards)}).values())

    def nbytes(self) -> int:
        return sum(self._call("nbytes", {s: () for s in range(self.num_shards)}).values())

    def cpu_seconds(self) -> list[float]:
        """Each shard's process CPU time (`GraphShard.cpu_seconds`); in process, this process's, per shard."""
        answers = self._call("cpu_seconds", {s: () for s in range(self.num_shards)})
        return [answers[s] for s in range(self.num_shards)]

    def checkpoint(self) -> list[pa.Table]:
        answers = self._call("snapshot", {s: () for s in range(self.num_shards)})
        return [answers[s] for s in range(self.num_shards)]

    def restore(self, tables: Sequence[pa.Table]) -> None:
        if len(tables) != self.num_shards:
            raise ValueError(f"a checkpoint of {len(tables)} shards cannot restore {self.num_shards} shards")
        self._horizon = None
        self._call("restore", {s: (tables[s],) for s in range(self.num_shards)})

    def close(self) -> None:
        if self._owned and not self._local:
            from ringwatch import runtime as rt

            for handle in self.shards:
                rt.kill(handle)


def stored_edges(table: pa.Table) -> list[StoredEdge]:
    return [StoredEdge(t, s, d, ts, Decimal(a) / AMOUNT_SCALE, c) for t, s, d, ts, a, c in zip(
        *(table.column(n).to_pylist() for n in PAYMENT_SCHEMA.names))]


def _older(table: pa.Table, rows: np.ndarray, ts: np.ndarray, key: tuple[int, bytes] | None) -> np.ndarray:
    """The `rows` whose (ts, tx_id) is below `key`: the batch's late payments."""
    if key is None:
        return np.zeros(0, np.int64)
    tied = rows[ts[rows] == key[0]]
    if tied.size:
        tx = table.column("tx_id").take(pa.array(tied)).to_pylist()
        tied = tied[[t.encode() < key[1] for t in tx]]
    return np.sort(np.concatenate([rows[ts[rows] < key[0]], tied])).astype(np.int64)

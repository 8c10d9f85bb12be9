"""`EdgeStore`: one shard's payments as flat numpy arrays, worked on by the compiled kernel.

The store owns the arrays that `kernel.py` describes and grows them; the
kernel never allocates store memory. Account and currency names are interned
to small ints in compiled code (`NameTable`: hashed straight from the Arrow
string buffers, no Python object per row or per name), tx ids are copied as
UTF-8 bytes out of the Arrow string column. Python decodes names only to show
them (alerts, queries, checkpoints), and then in bulk through Arrow.

Invariants:
- an edge is stored once per tx id among edges not evicted; a replay with
  the same content (src, dst, ts, amount, currency, compared field by field)
  is a duplicate, with other content a conflict (both reported, neither
  stored);
- each account's out- and in-list is sorted by `(ts, tx_id)`; a store that
  does not own an account (sharding) keeps no list entry for it on that side;
- edges with `ts < horizon` are evicted: invisible to every reader (each
  bounds its time range by the horizon), dropped from a list's head when the
  list fills, and reclaimed for good by compaction; a payment that old
  arriving later is not stored (LATE: the stream layer should have refused it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from ringwatch.runtime.errors import RingwatchError

from . import kernel
from .batch import PAYMENT_SCHEMA
from .model import AMOUNT_SCALE

NEW, DUPLICATE, CONFLICT, LATE = kernel.NEW, kernel.DUPLICATE, kernel.CONFLICT, kernel.LATE
_NEVER = -(2**62)
_EDGE_ARRAYS = ("e_hot", "e_amt", "e_cur")
MAX_CURRENCIES = 32_000  # codes are int16; more distinct values are not currencies
_NO_BITMAP = np.zeros(0, np.uint8)
_NO_HUBS = np.zeros((0, 2), np.bool_)  # the search's a_hub when no list is marked
LATE_UNFILTERED = 64  # a late payment reaching at most this many later triggers has them all searched exactly


class StoreLimitError(RingwatchError, ValueError):
    """A store outgrew what its arrays can address (tx-id bytes, list entries): spread it over more shards."""


class StoredEdge(NamedTuple):
    """One stored payment as the query API reads it."""

    tx_id: str
    src: str
    dst: str
    ts: int
    amount: Decimal
    currency: str | None


class NameTable:
    """Byte strings (account or currency names) interned to consecutive ids 0, 1, ... in compiled code.

    The names' UTF-8 bytes live back to back in `buf` with int64 offsets
    `off`; `tab` indexes them (open addressing, two words a slot, kept at most
    half full; see `kernel.intern_names`).
    """

    def __init__(self, what: str):
        self.what = what
        self.count = 0
        self.buf = np.empty(4096, np.uint8)
        self.off = np.zeros(1025, np.int64)
        self.tab = np.zeros((2048, 2), np.uint64)

    def intern(self, column: pa.Array, *, nullable: bool = False) -> np.ndarray:
        """Ids of a string column's values (int32; -1 for a null, only when `nullable`), new names added."""
        if column.null_count and not nullable:
            raise ValueError(f"{self.what}: a payment without one cannot be stored")
        buf, off = string_buffers(column)
        rows = len(column)
        count = self.count
        if count + rows + 1 > self.off.shape[0]:
            self.off = _grown(self.off, count + rows + 1, count + 1)
        used = int(self.off[count])
        if used + int(off[-1]) > self.buf.shape[0]:
            self.buf = _grown(self.buf, used + int(off[-1]), used)
        if 2 * (count + rows) > self.tab.shape[0]:
            size = self.tab.shape[0]
            while 2 * (count + rows) > size:
                size *= 2
            self.tab = np.empty((size, 2), np.uint64)
            kernel.rebuild_names(self.tab, self.buf, self.off, count)
        valid = _NO_BITMAP
        if column.null_count:
            valid = np.frombuffer(column.buffers()[0], np.uint8)
        ids, self.count = kernel.intern_names(buf, off, valid, column.offset, self.tab, self.buf, self.off, count)
        return ids

    def find(self, name: str) -> int:
        """The id of `name`, or -1."""
        return int(kernel.find_name(self.tab, self.buf, self.off, np.frombuffer(name.encode(), np.uint8)))

    def arrow(self) -> pa.LargeStringArray:
        """Every name, id order, as an Arrow array over the table's own buffers (no copy)."""
        used = int(self.off[self.count])
        return pa.LargeStringArray.from_buffers(self.count, pa.py_buffer(self.off[:self.count + 1]),
                                                pa.py_buffer(self.buf[:used]))

    def take(self, ids: np.ndarray) -> pa.Array:
        return self.arrow().take(pa.array(np.asarray(ids, np.int64)))

    def decode(self, start: int, stop: int) -> list[str]:
        """Names with ids in [start, stop), as Python strings."""
        return self.arrow().slice(start, stop - start).to_pylist()

    def nbytes(self) -> int:
        return self.buf.nbytes + self.off.nbytes + self.tab.nbytes


class EdgeStore:
    """The payments one shard holds (all of them, in-process), with the search over them.

    `owns(buf, off)` says whose lists this store keeps, for new names as Arrow string buffers (the name table's
    bytes and the offsets of the names, one more than names): a bool per name, so a shard decides in compiled code,
    not with a Python call per account. By default every account's.
    """

    def __init__(self, owns: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None):
        self._owns = owns
        self._known_owners = 0  # accounts whose ownership `_own` holds
        self._hubs_marked = False
        self.horizon = _NEVER
        self.accounts = NameTable("account")
        self._currency_names = NameTable("currency")
        self.currencies: list[str | None] = [None]  # code 0: none; code c: currency name id c - 1
        self._alloc_accounts(1024)
        self.n_edges = 0
        self._checked_at = 0  # n_edges when eviction last counted the live edges
        self._alloc_edges(1024)
        self.tx_buf = np.empty(16 * 1024, np.uint8)
        self.tx_tab = np.full(2048, kernel.EMPTY, np.int32)
        self.tx_tags = np.zeros(2048, np.uint8)
        self.p_eid = np.empty(8192, np.int32)
        self.pool_used = 0
        self.work = np.zeros(6, np.int64)  # search counters, see kernel.search
        self.late_unfiltered = LATE_UNFILTERED  # see kernel.late_candidates

    # ---- memory --------------------------------------------------------------------------------------

    def _alloc_edges(self, capacity: int) -> None:
        self.e_hot = np.empty(capacity, kernel.HOT)
        self.e_amt = np.empty(capacity, np.int64)
        self.e_cur = np.empty(capacity, np.int16)
        self.tx_off = np.zeros(capacity + 1, np.uint32)

    def _alloc_accounts(self, capacity: int) -> None:
        self.a_seg = np.zeros((capacity, 2, 4), np.int32)  # (start, head, len, cap) of the out- and in-list
        self.a_hub = np.zeros((capacity, 2), np.bool_)  # marked hubs (a gathered store; see sharded.py)
        self.slot_f = np.full(capacity, -1, np.int32)  # the search's account -> label row maps
        self.slot_b = np.full(capacity, -1, np.int32)
        self._own = np.zeros(capacity if self._owns is not None else 0, np.bool_)

    @property
    def n_accounts(self) -> int:
        return self.accounts.count

    @property
    def e_ts(self) -> np.ndarray:
        return self.e_hot["ts"]

    @property
    def e_src(self) -> np.ndarray:
        return self.e_hot["src"]

    @property
    def e_dst(self) -> np.ndarray:
        return self.e_hot["dst"]

    def _reserve(self, rows: int, tx_bytes: int) -> None:
        """Room for `rows` more edges with `tx_bytes` of tx ids."""
        need = self.n_edges + rows
        if need > self.e_hot.shape[0]:
            capacity = max(need, self.e_hot.shape[0] * 3 // 2)
            for name in _EDGE_ARRAYS:
                setattr(self, name, _grown(getattr(self, name), capacity, self.n_edges))
            self.tx_off = _grown(self.tx_off, capacity + 1, self.n_edges + 1)
        used = int(self.tx_off[self.n_edges])
        if used + tx_bytes > self.tx_buf.shape[0]:
            if used + tx_bytes >= 2**32:
                raise StoreLimitError(f"a store holds more than 4 GiB of tx ids ({self.n_edges:,} payments): "
                                      "spread the graph over more shards")
            self.tx_buf = _grown(self.tx_buf, min(max(used + tx_bytes, used * 3 // 2), 2**32 - 1), used)
        if 10 * need > 7 * self.tx_tab.shape[0]:  # open addressing stays under 70% full
            size = self.tx_tab.shape[0]
            while 10 * need > 7 * size:
                size *= 2
            self.tx_tab, self.tx_tags = np.empty(size, np.int32), np.empty(size, np.uint8)
            kernel.rebuild_index(self.tx_tab, self.tx_tags, self.tx_buf, self.tx_off, self.n_edges)

    def _reserve_accounts(self) -> None:
        count = self.accounts.count
        if count > self.a_seg.shape[0]:
            capacity = max(count, self.a_seg.shape[0] * 3 // 2)
            old = (self.a_seg, self.a_hub, self.slot_f, self.slot_b, self._own)
            self._alloc_accounts(capacity)
            for new, previous in zip((self.a_seg, self.a_hub, self.slot_f, self.slot_b, self._own), old):
                new[:previous.shape[0]] = previous
        if self._owns is not None and self._known_owners < count:
            names = self.accounts
            self._own[self._known_owners:count] = self._owns(names.buf, names.off[self._known_owners:count + 1])
            self._known_owners = count

    def _grow_pool(self) -> None:
        size = self.p_eid.shape[0] * 3 // 2
        if size >= 2**31:
            raise StoreLimitError(f"a store's lists outgrew 2^31 entries ({self.n_edges:,} payments): "
                                  "spread the graph over more shards")
        self.p_eid = _grown(self.p_eid, size, self.pool_used)

    def nbytes(self) -> int:
        """Bytes allocated for payments: edge records, amounts, currencies, tx-id bytes, offsets and table, lists."""
        arrays = (self.e_hot, self.e_amt, self.e_cur, self.tx_off, self.tx_buf, self.tx_tab, self.tx_tags, self.p_eid)
        return sum(a.nbytes for a in arrays)

    def account_nbytes(self) -> int:
        """Bytes allocated for accounts: names and their table, list heads, hub marks, the search's row maps."""
        arrays = (self.a_seg, self.a_hub, self.slot_f, self.slot_b, self._own)
        return self.accounts.nbytes() + self._currency_names.nbytes() + sum(a.nbytes for a in arrays)

    # ---- names ---------------------------------------------------------------------------------------

    def _intern_currency(self, column: pa.Array) -> np.ndarray:
        if column.null_count == len(column):
            return np.zeros(len(column), np.int16)
        before = self._currency_names.count
        ids = self._currency_names.intern(column, nullable=True)
        count = self._currency_names.count
        if count > MAX_CURRENCIES:
            raise ValueError(f"more than {MAX_CURRENCIES:,} distinct currency codes: not currencies")
        if count > before:
            self.currencies.extend(self._currency_names.decode(before, count))
        return (ids + 1).astype(np.int16)

    def account_id(self, name: str) -> int | None:
        a = self.accounts.find(name)
        return None if a < 0 else a

    def account_names(self, ids: np.ndarray) -> np.ndarray:
        """Names of account ids, as an object array of str."""
        return self.accounts.take(ids).to_numpy(zero_copy_only=False)

    def mark_hubs(self, hubs: Iterable[tuple[int, str]]) -> None:
        """Treat these (direction, account) lists as over the hub guard: the search does not expand them."""
        for d, name in hubs:
            a = self.account_id(name)
            if a is not None:
                self.a_hub[a, d] = True
                self._hubs_marked = True

    # ---- writes ----------------------------------------------------------------------------------------

    def apply(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Store a batch (`PAYMENT_SCHEMA`); returns per row NEW, DUPLICATE, CONFLICT or LATE, and its edge id.

        New edges get consecutive ids from `n_edges` (as it was before the call) on;
        a duplicate's or conflict's id is the stored edge's; a payment older than
        the horizon is LATE (not stored, id -1).
        """
        rows = table.num_rows
        status = np.zeros(rows, np.int8)
        eids = np.full(rows, -1, np.int64)
        if rows == 0:
            return status, eids
        column = _column_reader(table)
        src = self.accounts.intern(column("src"))
        dst = self.accounts.intern(column("dst"))
        self._reserve_accounts()
        cur = self._intern_currency(column("currency"))
        ts = column("ts").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        amt = column("amount").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        tx_ids = column("tx_id")
        if tx_ids.null_count:
            raise ValueError("tx_id: a payment without one cannot be stored")
        buf, off = string_buffers(tx_ids)
        self._reserve(rows, int(off[-1]))
        own_all = self._owns is None
        row = 0
        while True:
            row, self.n_edges, self.pool_used = kernel.insert(
                src, dst, ts, amt, cur, buf, off, self._own, own_all, row, status, eids,
                self.e_hot, self.e_amt, self.e_cur, self.tx_off, self.tx_buf, self.n_edges, self.tx_tab,
                self.tx_tags, self.horizon, self.a_seg, self.p_eid, self.pool_used)
            if row >= rows:
                return status, eids
            self._grow_pool()

    def evict(self, horizon: int) -> int:
        """Forget payments with `ts < horizon` (at once for every reader); returns how many payments' storage
        this call reclaimed.

        Storage is reclaimed by compaction, once evicted payments are a fifth of
        those stored. Whether they are is counted (a pass over the edges) only
        after an eighth of the table's size has been stored since the last count,
        so a call per small batch costs nothing in between.
        """
        if horizon <= self.horizon:
            return 0
        self.horizon = horizon
        if self.n_edges - self._checked_at < max(1024, self._checked_at // 8):
            return 0
        self._checked_at = self.n_edges
        live = self.live_count()
        if self.n_edges > live + live // 4 + 1024:
            return self._compact()
        return 0

    def _compact(self) -> int:
        """Drop evicted edges for good: renumber the rest, rebuild the lists and the tx-id table."""
        before = self.n_edges
        keep = kernel.live_edges(self.e_hot, self.n_edges, self.horizon)
        n = keep.shape[0]
        new_id = np.full(self.n_edges, -1, np.int32)
        new_id[keep] = np.arange(n, dtype=np.int32)
        old = self.e_hot, self.e_amt, self.e_cur, self.tx_off, self.tx_buf
        self._alloc_edges(max(1024, n + n * 3 // 10))
        self.tx_buf = kernel.compact_edges(*old, keep, self.e_hot, self.e_amt, self.e_cur, self.tx_off)
        self.n_edges = n
        self.p_eid, self.pool_used = kernel.renumbered_pool(self.a_seg, self.p_eid, new_id, self.accounts.count)
        size = 2048
        while 10 * n > 7 * size:
            size *= 2
        self.tx_tab, self.tx_tags = np.empty(size, np.int32), np.empty(size, np.uint8)
        kernel.rebuild_index(self.tx_tab, self.tx_tags, self.tx_buf, self.tx_off, n)
        self._checked_at = n
        return before - n

    # ---- reads -----------------------------------------------------------------------------------------

    def live_count(self) -> int:
        """Payments in the window (ts >= horizon)."""
        return int(kernel.count_live(self.e_hot, self.n_edges, self.horizon))

    def tx_id(self, e: int) -> str:
        return self.tx_id_bytes(e).decode()

    def tx_id_bytes(self, e: int) -> bytes:
        return bytes(self.tx_buf[int(self.tx_off[e]):int(self.tx_off[e + 1])])

    def tx_ids(self, ids: np.ndarray) -> pa.LargeStringArray:
        """The tx ids of edge ids, as an Arrow array (decoded in bulk)."""
        return _tx_ids(self.tx_buf, self.tx_off, ids)

    def entries(self, account: int, direction: int, lo: int, hi: int) -> np.ndarray:
        """Edge ids in account id `account`'s out- (0) or in-list (1) with lo <= ts <= hi (and live), oldest first."""
        if not 0 <= account < self.accounts.count:
            return np.zeros(0, np.int32)
        i, j = kernel.list_range(self.a_seg, self.p_eid, self.e_hot, account, direction, max(lo, self.horizon), hi)
        return self.p_eid[i:j].copy()

    def list_of(self, account: str, direction: int, since: int | None = None) -> np.ndarray:
        """Edge ids in `account`'s out- (0) or in-list (1), oldest first, from `since` on."""
        a = self.accounts.find(account)
        return self.entries(a, direction, _NEVER if since is None else since, int(kernel.INF))

    def degree(self, account: str, direction: int) -> int:
        """Live payments in `account`'s out- (0) or in-list (1)."""
        return int(self.degrees(np.array([self.accounts.find(account)]), direction)[0])

    def degrees(self, account_ids: np.ndarray, direction: int) -> np.ndarray:
        """Live payments in each account id's list (0 for -1: an account never seen)."""
        return kernel.live_degrees(np.asarray(account_ids, np.int64), direction, self.a_seg, self.p_eid, self.e_hot,
                                   self.accounts.count, self.horizon)

    def edge_table(self, ids: np.ndarray) -> pa.Table:
        """Edges as a `PAYMENT_SCHEMA` table (checkpoints, gathered edges, queries)."""
        return self.snapshot().edge_table(ids)

    def to_table(self) -> pa.Table:
        """The live edges as a `PAYMENT_SCHEMA` table (checkpoints; a restore re-applies it)."""
        return self.snapshot().to_table()

    def snapshot(self) -> "EdgeSnapshot":
        """The payments as they are now, readable while this store goes on taking batches (`EdgeSnapshot`)."""
        return EdgeSnapshot(self.e_hot, self.e_amt, self.e_cur, self.tx_buf, self.tx_off, self.accounts.arrow(),
                            pa.array(self.currencies, pa.string()), self.n_edges, self.horizon)

    def edges(self, ids: Iterable[int]) -> list[StoredEdge]:
        table = self.edge_table(np.fromiter(ids, np.int64))
        return [StoredEdge(t, s, d, ts, Decimal(a) / AMOUNT_SCALE, c) for t, s, d, ts, a, c in zip(
            *(table.column(n).to_pylist() for n in PAYMENT_SCHEMA.names))]

    # ---- search ----------------------------------------------------------------------------------------

    def batch_mask(self, ids: np.ndarray) -> np.ndarray:
        """A per-edge flag array marking `ids` (the batch's edges)."""
        mask = np.zeros(max(self.n_edges, 1), np.bool_)
        mask[np.asarray(ids, np.int64)] = True
        return mask

    def search(self, triggers: np.ndarray, options, in_batch: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rings each trigger edge closes (see `kernel.search`); with `in_batch`, only those through it."""
        o = options
        return kernel.search(
            np.asarray(triggers, np.int64), in_batch if in_batch is not None else np.zeros(1, np.bool_),
            in_batch is not None, o.window_ms, o.max_hops, o.order == "strict", o.flow_rule,
            float(o.min_ratio or 0.0), float(o.max_ratio or 0.0), o.min_amount_units,
            -1 if o.max_rings_per_tx is None else o.max_rings_per_tx, -1 if o.max_degree is None else o.max_degree,
            self.horizon, self.e_hot, self.e_amt, self.tx_buf, self.tx_off, self.a_seg,
            self.a_hub if self._hubs_marked else _NO_HUBS, self.p_eid, self.accounts.count, self.slot_f, self.slot_b,
            self.work)

    def late_candidates(self, late: np.ndarray, in_batch: np.ndarray, options) -> np.ndarray:
        """Stored triggers outside the batch whose rings may run through the `late` edges."""
        o = options
        found = kernel.late_candidates(
            np.asarray(late, np.int64), in_batch, o.window_ms, o.max_hops, o.order == "strict", o.min_amount_units,
            self.horizon, self.e_hot, self.e_amt, self.tx_buf, self.tx_off, self.a_seg, self.p_eid,
            self.accounts.count, self.slot_f, self.slot_b, self.late_unfiltered)
        return np.unique(found)


class EdgeSnapshot(NamedTuple):
    """An `EdgeStore`'s payments at one moment, without a copy.

    Rows below `n_edges` never change once written: batches append, growth
    and compaction copy into new arrays, names are appended after the last.
    So the arrays held here stay what they were while the store goes on, and
    a checkpoint's table is built from them off the lock the store's writer
    holds (taking the snapshot is a few attribute reads).
    """

    e_hot: np.ndarray
    e_amt: np.ndarray
    e_cur: np.ndarray
    tx_buf: np.ndarray
    tx_off: np.ndarray
    accounts: pa.LargeStringArray
    currencies: pa.StringArray
    n_edges: int
    horizon: int

    def edge_table(self, ids: np.ndarray) -> pa.Table:
        """Edges as a `PAYMENT_SCHEMA` table."""
        ids = np.asarray(ids, np.int64)
        hot = self.e_hot[ids]
        return pa.table([
            _tx_ids(self.tx_buf, self.tx_off, ids).cast(pa.string()),
            self.accounts.take(pa.array(hot["src"].astype(np.int64))).cast(pa.string()),
            self.accounts.take(pa.array(hot["dst"].astype(np.int64))).cast(pa.string()),
            pa.array(hot["ts"]), pa.array(self.e_amt[ids]),
            # by code, in Arrow: a Python string per row was half of a checkpoint's to_table
            self.currencies.take(pa.array(self.e_cur[ids])),
        ], schema=PAYMENT_SCHEMA)

    def to_table(self) -> pa.Table:
        """The live edges (`ts >= horizon`)."""
        return self.edge_table(kernel.live_edges(self.e_hot, self.n_edges, self.horizon))


def _tx_ids(tx_buf: np.ndarray, tx_off: np.ndarray, ids: np.ndarray) -> pa.LargeStringArray:
    buf, off = kernel.gather_bytes(tx_buf, tx_off, np.asarray(ids, np.int64))
    return pa.LargeStringArray.from_buffers(off.shape[0] - 1, pa.py_buffer(off), pa.py_buffer(buf))


def _grown(array: np.ndarray, size: int, keep: int) -> np.ndarray:
    """A bigger copy of `array` (its first `keep` entries kept)."""
    out = np.empty(size, array.dtype) if array.ndim == 1 else np.empty((size,) + array.shape[1:], array.dtype)
    out[:keep] = array[:keep]
    return out


def _column_reader(table: pa.Table) -> Callable[[str], pa.Array]:
    """Columns of a table as single arrays (chunks combined only when there are several)."""
    def column(name: str) -> pa.Array:
        chunked = table.column(name)
        return chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
    return column


def string_buffers(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes and int64 offsets of a string column (its non-null rows' bytes), without a Python loop."""
    n = len(column)
    buffers = column.buffers()
    if pa.types.is_large_string(column.type):
        offsets = np.frombuffer(buffers[1], np.int64)[column.offset:column.offset + n + 1]
    else:
        offsets = np.frombuffer(buffers[1], np.int32)[column.offset:column.offset + n + 1].astype(np.int64)
    data = buffers[2]
    buf = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    start = int(offsets[0])
    if start:
        return buf[start:int(offsets[-1])], offsets - start
    return buf, offsets

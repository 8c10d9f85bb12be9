"""`EdgeStore`: one shard's payments as flat numpy arrays, worked on by the compiled kernel.

The store owns the arrays that `kernel.py` describes and grows them by
doubling; the kernel never allocates store memory. Accounts and currencies
are interned to small ints here, once per distinct name per batch (Arrow's
hash-based `dictionary_encode`, no per-row Python loop), tx ids are copied as
UTF-8 bytes straight out of the Arrow string column.

Invariants:
- an edge is stored once per tx id among edges not evicted; a replay with
  the same content (src, dst, ts, amount, currency, compared field by field)
  is a duplicate, with other content a conflict (both reported, neither
  stored);
- each account's out- and in-list is sorted by `(ts, tx_id)`; a store that
  does not own an account (sharding) keeps no list entry for it on that side;
- edges with `ts < horizon` are invisible (skipped by list heads and the
  tx-id table) and reclaimed by compaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from . import kernel
from .batch import PAYMENT_SCHEMA
from .model import AMOUNT_SCALE

NEW, DUPLICATE, CONFLICT = kernel.NEW, kernel.DUPLICATE, kernel.CONFLICT
_EDGE_COLUMNS = ("e_src", "e_dst", "e_ts", "e_amt", "e_cur")
_NEVER = -(2**62)


class StoredEdge(NamedTuple):
    """One stored payment as the query API reads it."""

    tx_id: str
    src: str
    dst: str
    ts: int
    amount: Decimal
    currency: str | None


class EdgeStore:
    """The payments one shard holds (all of them, in-process), with the search over them.

    `owns(account)` says whose lists this store keeps; by default every account's.
    """

    def __init__(self, owns: Callable[[str], bool] | None = None):
        self._owns = owns
        self.horizon = _NEVER
        self.names: list[str] = []  # decoded once per new account, for alerts and queries
        self._ids: dict[str, int] = {}
        self.n_buf = np.empty(64 * 1024, np.uint8)  # account names, UTF-8, interned in the kernel
        self.n_off = np.zeros(4097, np.int64)
        self.n_tab = np.full(8192, kernel.EMPTY, np.int32)
        self.currencies: list[str | None] = [None]
        self._currency_ids: dict[str, int] = {}
        self._own_flags = np.zeros(0, np.bool_)
        self.n_edges = 0
        self._alloc_edges(1024)
        self.tx_buf = np.empty(16 * 1024, np.uint8)
        self.tx_off = np.zeros(1025, np.int64)
        self.tx_tab = np.full(2048, kernel.EMPTY, np.int32)
        self._alloc_accounts(1024)
        self.p_eid = np.empty(8192, np.int32)
        self.p_ts = np.empty(8192, np.int64)
        self.pool_used = 0
        self._scratch: tuple = ()
        self._names_array = np.zeros(0, dtype=object)
        self._stamp = 0

    # ---- memory --------------------------------------------------------------------------------------

    def _alloc_edges(self, capacity: int) -> None:
        self.e_src = np.empty(capacity, np.int32)
        self.e_dst = np.empty(capacity, np.int32)
        self.e_ts = np.empty(capacity, np.int64)
        self.e_amt = np.empty(capacity, np.int64)
        self.e_cur = np.empty(capacity, np.int16)

    def _alloc_accounts(self, capacity: int) -> None:
        self.a_start = np.zeros((2, capacity), np.int64)
        self.a_head = np.zeros((2, capacity), np.int32)
        self.a_len = np.zeros((2, capacity), np.int32)
        self.a_cap = np.zeros((2, capacity), np.int32)
        self.a_hub = np.zeros((2, capacity), np.bool_)  # marked hubs (a gathered store; see sharded.py)

    def _reserve(self, rows: int, tx_bytes: int) -> None:
        need = self.n_edges + rows
        if need > self.e_src.shape[0]:
            capacity = max(need, self.e_src.shape[0] * 3 // 2)
            for name in _EDGE_COLUMNS:
                old = getattr(self, name)
                grown = np.empty(capacity, old.dtype)
                grown[:self.n_edges] = old[:self.n_edges]
                setattr(self, name, grown)
            off = np.zeros(capacity + 1, np.int64)
            off[:self.n_edges + 1] = self.tx_off[:self.n_edges + 1]
            self.tx_off = off
        used = int(self.tx_off[self.n_edges])
        if used + tx_bytes > self.tx_buf.shape[0]:
            buf = np.empty(max(used + tx_bytes, 2 * self.tx_buf.shape[0]), np.uint8)
            buf[:used] = self.tx_buf[:used]
            self.tx_buf = buf
        if 10 * need > 7 * self.tx_tab.shape[0]:  # open addressing stays under 70% full
            size = self.tx_tab.shape[0]
            while 10 * need > 7 * size:
                size *= 2
            self.tx_tab = np.empty(size, np.int32)
            kernel.rebuild_index(self.tx_tab, self.tx_buf, self.tx_off, self.n_edges)
        accounts = len(self.names)
        if accounts > self.a_start.shape[1]:
            capacity = max(accounts, 2 * self.a_start.shape[1])
            old = (self.a_start, self.a_head, self.a_len, self.a_cap, self.a_hub)
            self._alloc_accounts(capacity)
            for new, previous in zip((self.a_start, self.a_head, self.a_len, self.a_cap, self.a_hub), old):
                new[:, :previous.shape[1]] = previous

    def _grow_pool(self) -> None:
        size = 2 * self.p_eid.shape[0]
        for name in ("p_eid", "p_ts"):
            old = getattr(self, name)
            grown = np.empty(size, old.dtype)
            grown[:self.pool_used] = old[:self.pool_used]
            setattr(self, name, grown)

    def nbytes(self) -> int:
        """Bytes of the edge arrays, tx-id bytes and table, and list pools (allocated, not just used)."""
        arrays = (self.e_src, self.e_dst, self.e_ts, self.e_amt, self.e_cur, self.tx_off,
                  self.tx_buf, self.tx_tab, self.p_eid, self.p_ts)
        return sum(a.nbytes for a in arrays)

    def account_nbytes(self) -> int:
        """Bytes for accounts: the lists' heads, the interning arrays, the decoded names and their dict."""
        per_name = sum(49 + len(n) for n in self.names) + 100 * len(self.names)
        arrays = (self.a_start, self.a_head, self.a_len, self.a_cap, self.a_hub, self.n_buf, self.n_off, self.n_tab)
        return per_name + sum(a.nbytes for a in arrays)

    # ---- interning ---------------------------------------------------------------------------------------

    def _intern(self, column: pa.Array) -> np.ndarray:
        """Account ids for a string column, in the kernel: Python sees only the names new to this store."""
        buf, off = _string_buffers(column, "account")
        count = len(self.names)
        rows = len(column)
        if count + rows + 1 > self.n_off.shape[0]:
            grown = np.zeros(max(count + rows + 1, 2 * self.n_off.shape[0]), np.int64)
            grown[:count + 1] = self.n_off[:count + 1]
            self.n_off = grown
        used = int(self.n_off[count])
        if used + int(off[-1]) > self.n_buf.shape[0]:
            grown = np.empty(max(used + int(off[-1]), 2 * self.n_buf.shape[0]), np.uint8)
            grown[:used] = self.n_buf[:used]
            self.n_buf = grown
        if 2 * (count + rows) > self.n_tab.shape[0]:
            size = self.n_tab.shape[0]
            while 2 * (count + rows) > size:
                size *= 2
            self.n_tab = np.empty(size, np.int32)
            kernel.rebuild_index(self.n_tab, self.n_buf, self.n_off, count)
        ids, total = kernel.intern_names(buf, off, self.n_tab, self.n_buf, self.n_off, count)
        for a in range(count, total):
            name = bytes(self.n_buf[self.n_off[a]:self.n_off[a + 1]]).decode()
            self._ids[name] = a
            self.names.append(name)
        return ids

    def _intern_currency(self, column: pa.Array) -> np.ndarray:
        encoded = column.dictionary_encode()
        codes = np.zeros(len(encoded.dictionary), np.int16)
        for i, name in enumerate(encoded.dictionary.to_pylist()):
            ident = self._currency_ids.get(name)
            if ident is None:
                if len(self.currencies) >= 32_000:
                    raise ValueError("more than 32,000 distinct currency codes: not currencies")
                ident = self._currency_ids[name] = len(self.currencies)
                self.currencies.append(name)
            codes[i] = ident
        indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        out = np.where(indices >= 0, codes[np.maximum(indices, 0)] if len(codes) else 0, 0)
        return out.astype(np.int16)

    def owned(self, account_ids: np.ndarray) -> np.ndarray:
        if self._owns is None:
            return np.ones(account_ids.shape[0], np.bool_)
        if self._own_flags.shape[0] < len(self.names):
            extra = [self._owns(n) for n in self.names[self._own_flags.shape[0]:]]
            self._own_flags = np.concatenate([self._own_flags, np.array(extra, np.bool_)])
        return self._own_flags[account_ids]

    def names_array(self) -> np.ndarray:
        """The account names as a numpy object array (for indexing by id arrays), extended as names arrive."""
        if self._names_array.shape[0] < len(self.names):
            self._names_array = np.array(self.names, dtype=object)
        return self._names_array

    def mark_hubs(self, hubs: Iterable[tuple[int, str]]) -> None:
        """Treat these (direction, account) lists as over the hub guard: the search does not expand them."""
        for d, name in hubs:
            a = self._ids.get(name)
            if a is not None and a < self.a_hub.shape[1]:
                self.a_hub[d, a] = True

    def account_id(self, name: str) -> int | None:
        return self._ids.get(name)

    # ---- writes ----------------------------------------------------------------------------------------

    def apply(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Store a batch (`PAYMENT_SCHEMA`); returns per row NEW, DUPLICATE or CONFLICT, and its edge id.

        New edges get consecutive ids from `n_edges` (as it was before the call) on;
        a duplicate's or conflict's id is the stored edge's.
        """
        rows = table.num_rows
        status = np.zeros(rows, np.int8)
        eids = np.full(rows, -1, np.int64)
        if rows == 0:
            return status, eids
        table = table.select(PAYMENT_SCHEMA.names).combine_chunks()
        src = self._intern(table.column("src").chunk(0))
        dst = self._intern(table.column("dst").chunk(0))
        cur = self._intern_currency(table.column("currency").chunk(0))
        ts = table.column("ts").chunk(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        amt = table.column("amount").chunk(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        buf, off = _string_buffers(table.column("tx_id").chunk(0))
        self._reserve(rows, int(off[-1]))
        own_src, own_dst = self.owned(src), self.owned(dst)
        row = 0
        while True:
            row, self.n_edges, self.pool_used = kernel.insert(
                src, dst, ts, amt, cur, buf, off, own_src, own_dst, row, status, eids,
                self.e_src, self.e_dst, self.e_ts, self.e_amt, self.e_cur, self.tx_off, self.tx_buf,
                self.n_edges, self.tx_tab, self.horizon, self.a_start, self.a_head, self.a_len, self.a_cap,
                self.p_eid, self.p_ts, self.pool_used)
            if row >= rows:
                return status, eids
            self._grow_pool()

    def evict(self, horizon: int) -> int:
        """Forget edges with `ts < horizon`; returns how many list entries were dropped."""
        if horizon <= self.horizon:
            return 0
        self.horizon = horizon
        dropped = int(kernel.evict(self.a_head, self.a_len, self.a_start, self.p_ts, len(self.names), horizon))
        live = int(np.count_nonzero(self.e_ts[:self.n_edges] >= horizon))
        if self.n_edges > live + live // 4 + 1024:  # evicted edges are at most a fifth of the table
            self._compact()
        return dropped

    def _compact(self) -> None:
        """Drop evicted edges for good: renumber the rest, rebuild pools and the tx-id table."""
        keep = kernel.live_edges(self.e_ts, self.n_edges, self.horizon)
        new_id = np.full(self.n_edges, -1, np.int32)
        new_id[keep] = np.arange(keep.shape[0], dtype=np.int32)
        capacity = max(1024, keep.shape[0] + keep.shape[0] // 2)
        old = {name: getattr(self, name) for name in _EDGE_COLUMNS}
        self._alloc_edges(capacity)
        for name, values in old.items():
            getattr(self, name)[:keep.shape[0]] = values[keep]
        self.tx_buf, off = kernel.compact_tx(self.tx_buf, self.tx_off, keep)
        self.tx_off = np.zeros(capacity + 1, np.int64)
        self.tx_off[:off.shape[0]] = off
        self.n_edges = keep.shape[0]
        entries = (self.a_len - self.a_head)[:, :len(self.names)].astype(np.int64)
        # what renumber_pools gives each list (an upper bound: evicted entries are not counted there)
        caps = np.where(entries > 0, np.maximum(kernel.MIN_SEGMENT, entries + entries // 4), 0)
        size = max(8192, int(caps.sum()) * 5 // 4)
        p_eid, p_ts = np.empty(size, np.int32), np.empty(size, np.int64)
        self.pool_used = int(kernel.renumber_pools(self.a_start, self.a_head, self.a_len, self.a_cap, self.p_eid,
                                                   self.p_ts, new_id, len(self.names), p_eid, p_ts))
        self.p_eid, self.p_ts = p_eid, p_ts
        size = 2048
        while 10 * keep.shape[0] > 7 * size:
            size *= 2
        self.tx_tab = np.empty(size, np.int32)
        kernel.rebuild_index(self.tx_tab, self.tx_buf, self.tx_off, self.n_edges)

    # ---- reads -----------------------------------------------------------------------------------------

    def live_count(self) -> int:
        return int(np.count_nonzero(self.e_ts[:self.n_edges] >= self.horizon))

    def tx_id(self, e: int) -> str:
        return bytes(self.tx_buf[self.tx_off[e]:self.tx_off[e + 1]]).decode()

    def edge(self, e: int) -> StoredEdge:
        return StoredEdge(self.tx_id(e), self.names[self.e_src[e]], self.names[self.e_dst[e]], int(self.e_ts[e]),
                          Decimal(int(self.e_amt[e])) / AMOUNT_SCALE, self.currencies[self.e_cur[e]])

    def list_of(self, account: str, direction: int, since: int | None = None) -> np.ndarray:
        """Edge ids in `account`'s out- (0) or in-list (1), oldest first, from `since` on."""
        a = self._ids.get(account)
        if a is None or a >= self.a_start.shape[1]:
            return np.zeros(0, np.int32)
        base, head, n = int(self.a_start[direction, a]), int(self.a_head[direction, a]), int(self.a_len[direction, a])
        entries = self.p_eid[base + head:base + n]
        if since is not None:
            entries = entries[self.p_ts[base + head:base + n] >= since]
        return entries

    def degree(self, account: str, direction: int) -> int:
        a = self._ids.get(account)
        if a is None or a >= self.a_start.shape[1]:
            return 0
        return int(self.a_len[direction, a] - self.a_head[direction, a])

    def to_table(self) -> pa.Table:
        """The live edges as a `PAYMENT_SCHEMA` table (checkpoints; a restore re-applies it)."""
        keep = kernel.live_edges(self.e_ts, self.n_edges, self.horizon)
        names = np.array(self.names, dtype=object)
        currencies = np.array(self.currencies, dtype=object)
        tx_buf, tx_off = kernel.compact_tx(self.tx_buf, self.tx_off, keep)
        tx = pa.StringArray.from_buffers(keep.shape[0], pa.py_buffer(tx_off.astype(np.int32)),
                                         pa.py_buffer(tx_buf[:int(tx_off[-1])].tobytes()))
        return pa.table([
            tx, pa.array(names[self.e_src[keep]], pa.string()), pa.array(names[self.e_dst[keep]], pa.string()),
            pa.array(self.e_ts[keep]), pa.array(self.e_amt[keep]),
            pa.array(currencies[self.e_cur[keep]], pa.string()),
        ], schema=PAYMENT_SCHEMA)

    # ---- search ----------------------------------------------------------------------------------------

    def batch_mask(self, ids: np.ndarray) -> np.ndarray:
        """A per-edge flag array marking `ids` (the batch's edges)."""
        mask = np.zeros(max(self.n_edges, 1), np.bool_)
        mask[np.asarray(ids, np.int64)] = True
        return mask

    def scratch(self, max_hops: int) -> tuple:
        """The search's work arrays, kept between calls; new ones when accounts or hops outgrow them."""
        need = len(self.names) + 1
        if not self._scratch or self._scratch[0].shape[0] < max_hops or self._scratch[2].shape[0] < need:
            self._scratch = kernel.new_scratch(max(max_hops, 6), max(need, 2 * self.a_start.shape[1]))
        return self._scratch

    def search(self, triggers: np.ndarray, options, in_batch: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rings each trigger edge closes (see `kernel.search`); with `in_batch`, only those through it."""
        o = options
        *found, self._stamp = kernel.search(
            np.asarray(triggers, np.int64), in_batch if in_batch is not None else np.zeros(1, np.bool_),
            in_batch is not None, o.window_ms, o.max_hops, o.order == "strict", o.flow_rule,
            float(o.min_ratio or 0.0), float(o.max_ratio or 0.0), o.min_amount_units,
            -1 if o.max_rings_per_tx is None else o.max_rings_per_tx, -1 if o.max_degree is None else o.max_degree,
            self.e_src, self.e_dst, self.e_ts, self.e_amt, self.tx_buf, self.tx_off, self.a_start, self.a_head,
            self.a_len, self.a_hub, self.p_eid, self.p_ts, len(self.names), self.scratch(o.max_hops), self._stamp)
        return tuple(found)

    def late_candidates(self, late: np.ndarray, in_batch: np.ndarray, options) -> np.ndarray:
        """Stored triggers outside the batch whose rings may run through the `late` edges."""
        o = options
        found = kernel.late_candidates(
            np.asarray(late, np.int64), in_batch, o.window_ms, o.max_hops, o.order == "strict", o.min_amount_units,
            self.e_src, self.e_dst, self.e_ts, self.e_amt, self.tx_buf, self.tx_off, self.a_start, self.a_head,
            self.a_len, np.zeros_like(self.a_hub), self.p_eid, self.p_ts, len(self.names), self.scratch(o.max_hops))
        return np.unique(found)

    def newest(self, upto: int) -> int:
        """Edge id of the newest edge in (ts, tx_id) order among ids below `upto`, or -1."""
        if upto <= 0:
            return -1
        ts = self.e_ts[:upto]
        best = int(ts.max())
        if best < self.horizon:
            return -1
        candidates = np.flatnonzero(ts == best)
        return max(candidates.tolist(), key=self.tx_id_bytes)

    def tx_id_bytes(self, e: int) -> bytes:
        return bytes(self.tx_buf[self.tx_off[e]:self.tx_off[e + 1]])

    def edges(self, ids: Iterable[int]) -> list[StoredEdge]:
        return [self.edge(int(e)) for e in ids]


def _string_buffers(column: pa.Array, name: str = "tx_id") -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes and int64 offsets of a string column, without a Python loop."""
    if column.null_count:
        raise ValueError(f"{name}: a payment without one cannot be stored")
    column = pa.concat_arrays([column]) if column.offset else column
    if column.type == pa.large_string():
        offsets = np.frombuffer(column.buffers()[1], np.int64)[:len(column) + 1]
    else:
        offsets = np.frombuffer(column.buffers()[1], np.int32)[:len(column) + 1].astype(np.int64)
    data = column.buffers()[2]
    buf = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    start = offsets[0]
    return buf[start:offsets[-1]].copy() if start else buf, offsets - start


def ids_sorted_by_key(store: EdgeStore, ids: Sequence[int]) -> list[int]:
    """Edge ids in (ts, tx_id) order."""
    return sorted((int(e) for e in ids), key=lambda e: (int(store.e_ts[e]), store.tx_id_bytes(e)))

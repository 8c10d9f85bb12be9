"""The compiled hot path: the edge store's interning, insert and compaction, and the exact ring search, in numba.

Everything here works on plain numpy arrays that `EdgeStore` (store.py) owns;
Python hands whole batches over, never one payment at a time. The functions
are `@njit(cache=True)`: compiled once per machine into numba's cache next to
this file (or `NUMBA_CACHE_DIR`), loaded from there by every later process.

Layout (see store.py for the owner):
- edges, by edge id `e`: `e_hot[e]` = (ts, src, dst) in one 16-byte record
  (what the search reads per list entry, one cache line), `e_amt` (int64,
  1/10,000 units), `e_cur` (interned currency, 0 = none), the tx id's UTF-8
  bytes in `tx_buf[tx_off[e]:tx_off[e+1]]` (uint32 offsets);
- byte-string tables, open addressing: tx ids with an int32 edge id per slot
  (-1 empty) and a uint8 tag of the hash per slot, so a probe compares bytes
  only when the tag matches; account and currency names with two words per
  slot (hash tag, length, id; the name's first 8 bytes), so a short name is
  found in one memory access;
- per account `a` and direction `d` (0 = out, 1 = in) a segment of the pool
  `p_eid` (edge ids, sorted by the event-time key `(ts, tx_id bytes)`):
  `a_seg[a, d]` = (start, head, len, cap), entries `p_eid[start+head:start+len]`.
  A full segment first drops its evicted head; when at least half of it is
  free then, it shifts in place, else it moves to the pool's end at twice its
  live size (the pool grows in Python, on demand).
- Eviction is lazy: the store only raises `horizon`; every reader bounds its
  time range below by it, and list heads are advanced when a segment fills.

The ring search for a trigger `T = u -> v` (witnesses: edges with key < key(T)
and ts >= max(ts(T) - window, horizon); see `search`) is bidirectional:
forward labels (earliest arrival from v) and backward labels (latest
departure that still reaches u), one value per hop count, kept for the
accounts a search touches only (`slot_f`/`slot_b` map an account to its row
of small per-call arrays, -1 when untouched). Each label write checks the
other side: an account whose forward label is at most its backward label
within the hop budget is a meet. Without a meet, no time-respecting walk of
at most max_hops - 1 witnesses joins v to u, so there is no ring: that test
settles almost every payment. The rest run a depth-first search over
accounts, pruned by the backward labels, that lists every ring with its
canonical (lexicographically smallest) witness tuple.
"""

from __future__ import annotations

import numpy as np
from numba import njit

INF = np.int64(2**62)
NEG = np.int64(-(2**62))
EMPTY = np.int32(-1)
EDGE_BITS = np.int64(0xFFFFFFFF)  # a cached DFS candidate is peer << 32 | edge id (see `_children`)
UNKNOWN = np.int64(-(2**62) + 1)  # a lazily computed backward label not asked for yet (see `_reach`)

NEW, DUPLICATE, CONFLICT, LATE = 0, 1, 2, 3
MIN_SEGMENT = 2  # smallest list segment: most accounts hold one or two payments per window
SEG_START, SEG_HEAD, SEG_LEN, SEG_CAP = 0, 1, 2, 3
HOT = np.dtype([("ts", np.int64), ("src", np.int32), ("dst", np.int32)])
FIRST_SLOTS = 256  # rows of the per-call label arrays to begin with; they double when a search needs more


# ---- keys and hashes ---------------------------------------------------------------------------------


@njit(cache=True)
def _at(off, i):
    """An offset as int64 (offsets may be stored as uint32)."""
    return np.int64(off[i])


@njit(cache=True)
def tx_less(tx_buf, tx_off, a, b):
    """tx id of edge a < tx id of edge b, as UTF-8 bytes."""
    ia, ja = _at(tx_off, a), _at(tx_off, a + 1)
    ib, jb = _at(tx_off, b), _at(tx_off, b + 1)
    na, nb = ja - ia, jb - ib
    n = na if na < nb else nb
    for i in range(n):
        x, y = tx_buf[ia + i], tx_buf[ib + i]
        if x != y:
            return x < y
    return na < nb


@njit(cache=True)
def key_less(e_hot, tx_buf, tx_off, a, b):
    """Event-time order: (ts, tx_id) of edge a < that of edge b."""
    ta, tb = e_hot[a].ts, e_hot[b].ts
    if ta != tb:
        return ta < tb
    return tx_less(tx_buf, tx_off, a, b)


@njit(cache=True)
def newest_edge(ids, e_hot, tx_buf, tx_off):
    """The edge among `ids` (at least one) with the largest (ts, tx_id)."""
    best = ids[0]
    for i in range(1, ids.shape[0]):
        if key_less(e_hot, tx_buf, tx_off, best, ids[i]):
            best = ids[i]
    return best


@njit(cache=True)
def fnv1a(buf, start, stop):
    h = np.uint64(14695981039346656037)
    for i in range(start, stop):
        h = (h ^ np.uint64(buf[i])) * np.uint64(1099511628211)
    return h


@njit(cache=True)
def _tag(h):
    return np.uint8(h >> np.uint64(56))


@njit(cache=True)
def same_bytes(buf, off, e, b_buf, b_start, b_stop):
    base = _at(off, e)
    n = _at(off, e + 1) - base
    if n != b_stop - b_start:
        return False
    for i in range(n):
        if buf[base + i] != b_buf[b_start + i]:
            return False
    return True


@njit(cache=True)
def tab_put(tab, tags, h, e):
    mask = np.uint64(tab.shape[0] - 1)
    slot = h & mask
    while tab[slot] >= 0:
        slot = (slot + np.uint64(1)) & mask
    tab[slot] = e
    tags[slot] = _tag(h)


@njit(cache=True)
def rebuild_index(tab, tags, buf, off, count):
    """The tx-id table of the byte strings buf[off[i]:off[i+1]], i < count (a bigger table, or after compaction)."""
    tab[:] = EMPTY
    for i in range(count):
        tab_put(tab, tags, fnv1a(buf, _at(off, i), _at(off, i + 1)), i)


@njit(cache=True)
def _name_key(buf, s, t):
    """A name's hash, its slot word (hash tag, length; the id goes in the low 32 bits) and its first 8 bytes."""
    h = fnv1a(buf, s, t)
    word = ((h >> np.uint64(40)) << np.uint64(40)) | (np.uint64(min(t - s, 255)) << np.uint64(32))
    prefix = np.uint64(0)
    for i in range(min(t - s, 8)):
        prefix |= np.uint64(buf[s + i]) << np.uint64(8 * i)
    return h, word, prefix


@njit(cache=True)
def _name_slot(tab, n_buf, n_off, b_buf, s, t):
    """(slot, id) of the name b_buf[s:t] in a name table, or (the empty slot where it goes, -1).

    A slot is two words: tag | length | id + 1 (0: empty), and the name's first
    8 bytes, so a name of up to 8 bytes is found without reading the names' buffer.
    """
    h, word, prefix = _name_key(b_buf, s, t)
    mask = np.uint64(tab.shape[0] - 1)
    slot = h & mask
    while True:
        w = tab[slot, 0]
        if w == 0:
            return slot, np.int64(-1)
        if (w >> np.uint64(32)) == (word >> np.uint64(32)) and tab[slot, 1] == prefix:
            a = np.int64(w & np.uint64(0xFFFFFFFF)) - 1
            if t - s <= 8 or same_bytes(n_buf, n_off, a, b_buf, s, t):
                return slot, a
        slot = (slot + np.uint64(1)) & mask


@njit(cache=True)
def _name_put(tab, slot, n_buf, n_off, a):
    h, word, prefix = _name_key(n_buf, n_off[a], n_off[a + 1])
    tab[slot, 0] = word | np.uint64(a + 1)
    tab[slot, 1] = prefix


@njit(cache=True)
def rebuild_names(tab, n_buf, n_off, count):
    """The name table of names 0..count-1 (a bigger table)."""
    tab[:] = 0
    mask = np.uint64(tab.shape[0] - 1)
    for a in range(count):
        slot = fnv1a(n_buf, n_off[a], n_off[a + 1]) & mask
        while tab[slot, 0] != 0:
            slot = (slot + np.uint64(1)) & mask
        _name_put(tab, slot, n_buf, n_off, a)


@njit(cache=True)
def find_name(tab, n_buf, n_off, b_buf):
    """Id of the name whose UTF-8 bytes are b_buf, or -1."""
    return _name_slot(tab, n_buf, n_off, b_buf, 0, b_buf.shape[0])[1]


@njit(cache=True)
def _same_run(buf, s0, t0, s, t):
    if t - s != t0 - s0:
        return False
    for j in range(t - s):
        if buf[s0 + j] != buf[s + j]:
            return False
    return True


@njit(cache=True)
def intern_names(b_buf, b_off, valid, v_offset, tab, n_buf, n_off, count):
    """Id of each name (UTF-8 in b_buf[b_off[i]:b_off[i+1]]), adding new names at the end; -1 for a null row.

    `valid` is the column's Arrow validity bitmap (empty: no nulls), bit `v_offset + i` for row i.
    The caller leaves room for every name to be new. Returns (ids, count).
    """
    rows = b_off.shape[0] - 1
    ids = np.empty(rows, np.int32)
    last = -1  # the previous non-null row: a run of one value (a currency) is looked up once
    for i in range(rows):
        if valid.shape[0] > 0 and not (valid[(v_offset + i) >> 3] >> ((v_offset + i) & 7)) & 1:
            ids[i] = -1
            continue
        s, t = b_off[i], b_off[i + 1]
        if last >= 0 and _same_run(b_buf, b_off[last], b_off[last + 1], s, t):
            ids[i] = ids[last]
            last = i
            continue
        last = i
        slot, a = _name_slot(tab, n_buf, n_off, b_buf, s, t)
        if a < 0:
            base = n_off[count]
            for j in range(t - s):
                n_buf[base + j] = b_buf[s + j]
            n_off[count + 1] = base + (t - s)
            _name_put(tab, slot, n_buf, n_off, count)
            a = count
            count += 1
        ids[i] = a
    return ids, count


@njit(cache=True)
def lookup(tx_tab, tx_tags, tx_buf, tx_off, e_hot, horizon, b_buf, b_start, b_stop, h):
    """Edge id holding this tx id (and not evicted), or -1."""
    mask = np.uint64(tx_tab.shape[0] - 1)
    slot = h & mask
    tag = _tag(h)
    while True:
        e = tx_tab[slot]
        if e == EMPTY:
            return -1
        if tx_tags[slot] == tag and same_bytes(tx_buf, tx_off, e, b_buf, b_start, b_stop) \
                and e_hot[e].ts >= horizon:
            return e
        slot = (slot + np.uint64(1)) & mask


@njit(cache=True, nogil=True)  # also run by a checkpoint writer thread beside the actor's
def gather_bytes(buf, off, ids):
    """The byte strings of `ids`, back to back, and their int64 offsets (tx ids or names to decode)."""
    total = 0
    for i in range(ids.shape[0]):
        total += _at(off, ids[i] + 1) - _at(off, ids[i])
    out = np.empty(total, np.uint8)
    out_off = np.zeros(ids.shape[0] + 1, np.int64)
    at = 0
    for i in range(ids.shape[0]):
        for j in range(_at(off, ids[i]), _at(off, ids[i] + 1)):
            out[at] = buf[j]
            at += 1
        out_off[i + 1] = at
    return out, out_off


# ---- lists -------------------------------------------------------------------------------------------


@njit(cache=True)
def _first_at(p_eid, e_hot, lo, hi, t):
    """First pool position in [lo, hi) whose edge has ts >= t (a list is sorted by ts)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if e_hot[p_eid[mid]].ts < t:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def list_range(a_seg, p_eid, e_hot, a, d, lo, hi):
    """Pool positions [i, j) of account a's list d with lo <= ts <= hi."""
    base = np.int64(a_seg[a, d, SEG_START])
    first, stop = base + a_seg[a, d, SEG_HEAD], base + a_seg[a, d, SEG_LEN]
    return _first_at(p_eid, e_hot, first, stop, lo), _first_at(p_eid, e_hot, first, stop, hi + 1)


@njit(cache=True)
def live_len(a_seg, p_eid, e_hot, a, d, horizon):
    """Entries of account a's list d not evicted (ts >= horizon): its degree in the window."""
    base = np.int64(a_seg[a, d, SEG_START])
    stop = base + a_seg[a, d, SEG_LEN]
    return stop - _first_at(p_eid, e_hot, base + a_seg[a, d, SEG_HEAD], stop, horizon)


@njit(cache=True)
def live_degrees(ids, d, a_seg, p_eid, e_hot, n_accounts, horizon):
    """`live_len` of each account id (0 for ids never seen: -1 or beyond the store's accounts)."""
    out = np.zeros(ids.shape[0], np.int64)
    for i in range(ids.shape[0]):
        a = ids[i]
        if 0 <= a < n_accounts:
            out[i] = live_len(a_seg, p_eid, e_hot, a, d, horizon)
    return out


# ---- insert ------------------------------------------------------------------------------------------


@njit(cache=True)
def _place(a_seg, p_eid, pool_used, e_hot, tx_buf, tx_off, d, acct, e, horizon):
    """Insert edge e into account acct's list d in key order; returns the new pool_used or -1 if no room."""
    start, head, ln, cap = (np.int64(a_seg[acct, d, SEG_START]), np.int64(a_seg[acct, d, SEG_HEAD]),
                            np.int64(a_seg[acct, d, SEG_LEN]), np.int64(a_seg[acct, d, SEG_CAP]))
    if ln == cap:
        head = _first_at(p_eid, e_hot, start + head, start + ln, horizon) - start
        live = ln - head
        if 2 * live <= cap and live < cap:  # at least half free once the evicted head is dropped: shift
            for i in range(live):
                p_eid[start + i] = p_eid[start + head + i]
        else:
            cap = max(MIN_SEGMENT, 2 * live)
            if pool_used + cap > p_eid.shape[0]:
                return -1
            for i in range(live):
                p_eid[pool_used + i] = p_eid[start + head + i]
            start = pool_used
            pool_used += cap
            a_seg[acct, d, SEG_START] = start
            a_seg[acct, d, SEG_CAP] = cap
        head, ln = 0, live
        a_seg[acct, d, SEG_HEAD] = 0
    # Late edges go to their sorted place; in-order ones stay at the end.
    pos = start + ln
    first = start + head
    while pos > first and key_less(e_hot, tx_buf, tx_off, e, p_eid[pos - 1]):
        p_eid[pos] = p_eid[pos - 1]
        pos -= 1
    p_eid[pos] = e
    a_seg[acct, d, SEG_LEN] = ln + 1
    return pool_used


@njit(cache=True)
def insert(b_src, b_dst, b_ts, b_amt, b_cur, b_buf, b_off, own, own_all, start_row, status, b_eid,
           e_hot, e_amt, e_cur, tx_off, tx_buf, n_edges, tx_tab, tx_tags, horizon, a_seg, p_eid, pool_used):
    """Store batch rows from `start_row` on; `status[row]` = NEW / DUPLICATE / CONFLICT / LATE, `b_eid[row]` its edge.

    Returns (next row, n_edges, pool_used); next row < rows when the pool is
    full: the caller grows it and calls again from there. Edge arrays, tx_buf
    and tx_tab must have room for the whole batch (the caller sees to it).
    The store keeps the out entry of an owned src and the in entry of an owned
    dst (`own[account]`, or every account with `own_all`: sharding).
    """
    rows = b_src.shape[0]
    row = start_row
    while row < rows:
        if b_ts[row] < horizon:  # older than what the store has evicted: the caller should have refused it
            status[row] = LATE
            row += 1
            continue
        s, t = b_off[row], b_off[row + 1]
        h = fnv1a(b_buf, s, t)
        src, dst = b_src[row], b_dst[row]
        found = lookup(tx_tab, tx_tags, tx_buf, tx_off, e_hot, horizon, b_buf, s, t, h)
        if found >= 0:
            r = e_hot[found]
            same = (r.src == src and r.dst == dst and r.ts == b_ts[row] and e_amt[found] == b_amt[row]
                    and e_cur[found] == b_cur[row])
            status[row] = DUPLICATE if same else CONFLICT
            b_eid[row] = found
            row += 1
            continue
        keep_out = own_all or own[src]
        keep_in = own_all or own[dst]
        # Room in the pool for both sides, even if each segment must move.
        need = 0
        if keep_out:
            need += max(MIN_SEGMENT, 2 * (a_seg[src, 0, SEG_LEN] - a_seg[src, 0, SEG_HEAD]))
        if keep_in:
            need += max(MIN_SEGMENT, 2 * (a_seg[dst, 1, SEG_LEN] - a_seg[dst, 1, SEG_HEAD]))
        if pool_used + need > p_eid.shape[0]:
            return row, n_edges, pool_used
        e = n_edges
        e_hot[e].ts = b_ts[row]
        e_hot[e].src = src
        e_hot[e].dst = dst
        e_amt[e], e_cur[e] = b_amt[row], b_cur[row]
        b_eid[row] = e
        base = _at(tx_off, e)
        for i in range(t - s):
            tx_buf[base + i] = b_buf[s + i]
        tx_off[e + 1] = base + (t - s)
        n_edges += 1
        tab_put(tx_tab, tx_tags, h, e)
        if keep_out:
            pool_used = _place(a_seg, p_eid, pool_used, e_hot, tx_buf, tx_off, 0, src, e, horizon)
        if keep_in:
            pool_used = _place(a_seg, p_eid, pool_used, e_hot, tx_buf, tx_off, 1, dst, e, horizon)
        status[row] = NEW
        row += 1
    return row, n_edges, pool_used


# ---- eviction and compaction -------------------------------------------------------------------------


@njit(cache=True)
def count_live(e_hot, n_edges, horizon):
    live = 0
    for e in range(n_edges):
        if e_hot[e].ts >= horizon:
            live += 1
    return live


@njit(cache=True, nogil=True)  # also run by a checkpoint writer thread beside the actor's
def live_edges(e_hot, n_edges, horizon):
    keep = np.empty(n_edges, np.int64)
    k = 0
    for e in range(n_edges):
        if e_hot[e].ts >= horizon:
            keep[k] = e
            k += 1
    return keep[:k]


@njit(cache=True)
def compact_edges(e_hot, e_amt, e_cur, tx_off, tx_buf, keep, out_hot, out_amt, out_cur, out_off):
    """Copy the kept edges (ids `keep`, ascending) into the out arrays; returns the tx-id bytes, back to back."""
    total = 0
    for i in range(keep.shape[0]):
        total += _at(tx_off, keep[i] + 1) - _at(tx_off, keep[i])
    buf = np.empty(max(total + total // 4, 64), np.uint8)
    at = 0
    out_off[0] = 0
    for i in range(keep.shape[0]):
        e = keep[i]
        out_hot[i] = e_hot[e]
        out_amt[i] = e_amt[e]
        out_cur[i] = e_cur[e]
        for j in range(_at(tx_off, e), _at(tx_off, e + 1)):
            buf[at] = tx_buf[j]
            at += 1
        out_off[i + 1] = at
    return buf


@njit(cache=True)
def renumbered_pool(a_seg, p_eid, new_id, n_accounts):
    """A fresh pool holding each list's live entries, renumbered (new_id), with 25% room per list.

    A list is sorted by ts, so its live entries (new_id >= 0: ts >= horizon)
    are a suffix, found scanning back from the end. The pool is sized from
    the lists' lengths (an upper bound): what the live counts leave over is
    room at the pool's end for lists that grow.
    """
    total = 0
    for a in range(n_accounts):
        for d in range(2):
            n = a_seg[a, d, SEG_LEN] - a_seg[a, d, SEG_HEAD]
            total += 0 if n == 0 else max(MIN_SEGMENT, n + n // 4)
    out = np.empty(max(1024, total), np.int32)
    used = 0
    for a in range(n_accounts):
        for d in range(2):
            base = np.int64(a_seg[a, d, SEG_START])
            first, stop = base + a_seg[a, d, SEG_HEAD], base + a_seg[a, d, SEG_LEN]
            i = stop
            while i > first and new_id[p_eid[i - 1]] >= 0:
                i -= 1
            k = stop - i
            for j in range(k):
                out[used + j] = new_id[p_eid[i + j]]
            cap = 0 if k == 0 else max(MIN_SEGMENT, k + k // 4)
            a_seg[a, d, SEG_START], a_seg[a, d, SEG_HEAD], a_seg[a, d, SEG_LEN], a_seg[a, d, SEG_CAP] = used, 0, k, cap
            used += cap
    return out, used


# ---- search ------------------------------------------------------------------------------------------


@njit(cache=True)
def _witness_ok(e_hot, tx_buf, tx_off, e, trig, ts_t):
    """Edge e may witness trigger trig: strictly before it in (ts, tx_id) order."""
    ts = e_hot[e].ts
    if ts < ts_t:
        return True
    return ts == ts_t and e != trig and tx_less(tx_buf, tx_off, e, trig)


@njit(cache=True)
def _flow_ok(earlier, later, min_ratio, max_ratio):
    a, b = np.float64(earlier), np.float64(later)
    return min_ratio * a <= b <= max_ratio * a


@njit(cache=True)
def _hub(a_seg, a_hub, p_eid, e_hot, x, d, max_degree, horizon):
    """Is x's list d over the hub guard (or marked a hub in a gathered store: a_hub is empty when none is)?"""
    if a_hub.shape[0] and a_hub[x, d]:
        return True
    return max_degree >= 0 and live_len(a_seg, p_eid, e_hot, x, d, horizon) > max_degree


@njit(cache=True)
def _new_slot(lab, slot, touched, nt, y, k, empty):
    """Give account y the next label row (labels below depth k empty); returns the row or -1 when full."""
    if nt == lab.shape[0]:
        return -1
    slot[y] = nt
    touched[nt] = y
    for j in range(k):
        lab[nt, j] = empty
    return nt


@njit(cache=True)
def _layer(d, k, lab, slot, touched, nt, frontier, nf, nxt, o_lab, o_slot, o_done, lo, hi, strict,
           a_seg, a_hub, p_eid, e_hot, e_amt, tx_buf, tx_off, trig, ts_t, min_amt, max_degree, horizon, check_key,
           f_depth):
    """Labels over walks of at most k edges (lab[:, k]) from those of at most k - 1, expanding `frontier` (rows).

    d = 0: forward over out-edges, the earliest arrival (min); d = 1: backward
    over in-edges, the latest departure that still reaches the root (max).
    Times stay in [lo, hi]; strict order relaxes an edge only when it keeps
    time order (order "none": every label is lo / hi, only reachability
    counts). Accounts reached for the first time get a row. The rows improved
    in this layer go to `nxt`. Under strict order a frontier row that had a
    label before relaxes only its edges between the old label and the new
    one: the others gave their labels when the old one was expanded (labels
    only improve with depth, and a filter below only tightens with it). Each write is checked against the other side's
    labels at depth o_done (o_lab, o_slot): a meet.
    With f_depth >= 0 (backward only, o_lab the forward labels), an account
    gets a label only if the forward side reaches it within f_depth hops, and
    (strict) only by an edge leaving it no earlier than it is reached: the
    depth-first search asks for the backward label at depth k only of accounts
    it enters after L - k witnesses, so no other label at this depth is read.
    Returns (n_touched, n_next, hub_met, meet); n_touched -1: out of rows.
    """
    forward = d == 0
    empty = INF if forward else NEG
    for s in range(nt):
        lab[s, k] = lab[s, k - 1]
    nn = 0
    hub = False
    meet = False
    for fi in range(nf):
        sx = frontier[fi]
        x = touched[sx]
        at = lab[sx, k - 1]
        if _hub(a_seg, a_hub, p_eid, e_hot, x, d, max_degree, horizon):
            hub = True
            continue
        base = np.int64(a_seg[x, d, SEG_START])
        first, stop = base + a_seg[x, d, SEG_HEAD], base + a_seg[x, d, SEG_LEN]
        if forward:
            i = _first_at(p_eid, e_hot, first, stop, at if strict else lo)
            bound = hi
            if strict and k >= 2 and lab[sx, k - 2] != INF:  # edges at or after the old label gave theirs already
                bound = min(hi, lab[sx, k - 2] - 1)
        else:
            i = _first_at(p_eid, e_hot, first, stop, lo)
            bound = at if strict else hi
            if strict and k >= 2 and lab[sx, k - 2] != NEG:  # edges at or before the old label gave theirs already
                i = _first_at(p_eid, e_hot, i, stop, lab[sx, k - 2] + 1)
        value = lo if forward else hi
        while i < stop:
            e = p_eid[i]
            i += 1
            r = e_hot[e]
            ts = r.ts
            if ts > bound:
                break
            if check_key and ts == ts_t and not _witness_ok(e_hot, tx_buf, tx_off, e, trig, ts_t):
                continue
            if min_amt > 0 and e_amt[e] < min_amt:
                continue
            y = r.dst if forward else r.src
            if f_depth >= 0:
                sf = o_slot[y]
                if sf < 0:
                    continue
                reached = o_lab[sf, f_depth]
                if reached == INF or (strict and ts < reached):
                    continue
            if strict:
                value = ts
            sy = slot[y]
            if sy < 0:
                sy = _new_slot(lab, slot, touched, nt, y, k, empty)
                if sy < 0:
                    return -1, 0, hub, meet
                nt += 1
                lab[sy, k] = value
                nxt[nn] = sy
                nn += 1
            else:
                old = lab[sy, k]
                if (value >= old) if forward else (value <= old):
                    continue
                if old == lab[sy, k - 1]:  # first improvement of y in this layer
                    nxt[nn] = sy
                    nn += 1
                lab[sy, k] = value
            so = o_slot[y]
            if so >= 0 and ((value <= o_lab[so, o_done]) if forward else (o_lab[so, o_done] <= value)):
                meet = True
    return nt, nn, hub, meet


@njit(cache=True)
def _cost(d, frontier, nf, touched, a_seg):
    """List entries the next layer from `frontier` may scan: the bidirectional search grows the cheaper side."""
    total = 0
    for i in range(nf):
        x = touched[frontier[i]]
        total += a_seg[x, d, SEG_LEN] - a_seg[x, d, SEG_HEAD]
    return total


@njit(cache=True)
def _pull_cost(f_lab, f_touched, nt_f, f_depth, a_seg):
    """Out-list entries `_pull_layer` may scan: those of the accounts forward-reached within f_depth hops."""
    total = 0
    for s in range(nt_f):
        if f_lab[s, f_depth] != INF:
            y = f_touched[s]
            total += a_seg[y, 0, SEG_LEN] - a_seg[y, 0, SEG_HEAD]
    return total


@njit(cache=True)
def _pull_layer(k, lab, slot, touched, nt, frontier, nf, nxt, f_lab, f_touched, nt_f, f_depth, lo, hi, strict,
                a_seg, a_hub, p_eid, e_hot, e_amt, tx_buf, tx_off, trig, ts_t, min_amt, max_degree, horizon):
    """A backward `_layer` with its forward filter (f_depth >= 0), worked from the other end: each account the
    forward side reaches within f_depth hops reads its out-list for edges into accounts labelled at depth k - 1.

    The same labels, improved rows and hub flag as `_layer` (an account not
    improved at k - 1 gave its edges' labels at an earlier depth already, so
    reading every labelled account equals expanding the frontier), at the
    cost of those out-lists instead of the frontier's in-lists: near the end
    of the completion few accounts pass the filter, and the frontier's lists
    are the dense core's. Returns (n_touched, n_next, hub_met); -1: out of rows.
    """
    for s in range(nt):
        lab[s, k] = lab[s, k - 1]
    hub = False
    for fi in range(nf):  # the frontier lists `_layer` would have skipped as hubs
        if _hub(a_seg, a_hub, p_eid, e_hot, touched[frontier[fi]], 1, max_degree, horizon):
            hub = True
    nn = 0
    for sf in range(nt_f):
        reached = f_lab[sf, f_depth]
        if reached == INF:
            continue
        y = f_touched[sf]
        base = np.int64(a_seg[y, 0, SEG_START])
        first, stop = base + a_seg[y, 0, SEG_HEAD], base + a_seg[y, 0, SEG_LEN]
        best = NEG
        for i in range(_first_at(p_eid, e_hot, first, stop, reached if strict else lo), stop):
            e = p_eid[i]
            r = e_hot[e]
            ts = r.ts
            if ts > hi:
                break
            if ts == ts_t and not _witness_ok(e_hot, tx_buf, tx_off, e, trig, ts_t):
                continue
            if min_amt > 0 and e_amt[e] < min_amt:
                continue
            sx = slot[r.dst]
            if sx < 0:
                continue
            at = lab[sx, k - 1]
            if at == NEG or (strict and ts > at):
                continue
            if _hub(a_seg, a_hub, p_eid, e_hot, r.dst, 1, max_degree, horizon):
                continue
            value = ts if strict else hi
            if value > best:
                best = value
        if best == NEG:
            continue
        sy = slot[y]
        if sy < 0:
            sy = _new_slot(lab, slot, touched, nt, y, k, NEG)
            if sy < 0:
                return -1, 0, hub
            nt += 1
        elif best <= lab[sy, k]:
            continue
        lab[sy, k] = best
        nxt[nn] = sy
        nn += 1
    return nt, nn, hub


@njit(cache=True)
def _release(slot, touched, nt):
    """Mark the touched accounts untouched again (the slot arrays persist across calls)."""
    for s in range(nt):
        slot[touched[s]] = -1


@njit(cache=True)
def grown(arr, need):
    """`arr` if it has room for `need` items, else a copy at least twice as long with its items first."""
    if need <= arr.shape[0]:
        return arr
    out = np.empty(max(need, 2 * arr.shape[0]), arr.dtype)
    out[:arr.shape[0]] = arr
    return out


@njit(cache=True)
def _label_rows(rows, H):
    """A search's per-call arrays for `rows` touched accounts a side: labels, touched lists, frontiers, DFS marks,
    the DFS's cached candidate ranges (see `_children`), the lazy labels' scan positions (see `_reach`) and
    each account's edges into u (see `_edges_into`)."""
    return (np.empty((rows, H), np.int64), np.empty((rows, H), np.int64), np.empty(rows, np.int64),
            np.empty(rows, np.int64), np.empty(rows, np.int64), np.empty(rows, np.int64), np.empty(rows, np.int64),
            np.empty(rows, np.int64), np.zeros(rows, np.bool_), np.zeros((rows, H, 4), np.int64),
            np.empty((rows, H), np.int64), np.empty((rows, 2), np.int64))


@njit(cache=True)
def search(triggers, in_batch, only_batch, window, max_hops, strict, flow, min_ratio, max_ratio, min_amt, max_rings,
           max_degree, horizon, e_hot, e_amt, tx_buf, tx_off, a_seg, a_hub, p_eid, n_accounts, slot_f, slot_b, work):
    """The rings each trigger edge closes, with canonical witnesses.

    `slot_f`/`slot_b` (one int32 per account, -1) map the accounts a search
    touches to rows of per-call label arrays; they are -1 again on return.
    `work` accumulates counters: [0] triggers, [1] label layers, [2] list
    entries the layers scanned, [3] triggers that met (ran the depth-first
    search), [4] depth-first frames, [5] rings.

    Returns (ring_trigger, ring_off, ring_edges, cut): ring r belongs to
    triggers[ring_trigger[r]], its witnesses in ring order (from the trigger's
    dst round to its src) are ring_edges[ring_off[r]:ring_off[r+1]];
    cut[i] bit 1: max_rings cut trigger i's list, bit 2: a hub was skipped.
    With only_batch only rings with a witness e where in_batch[e] are returned
    (a late payment's re-search of older triggers); the ring cap applies
    before that filter, so it cuts the same rings either way.
    """
    L = max_hops - 1
    H = max_hops
    lab_f, lab_b, touched_f, touched_b, fa, fb, ba, bb, on_path, c_span, r_pos, u_at = _label_rows(
        min(FIRST_SLOTS, n_accounts + 1), H)
    c_edges = np.empty(64, np.int64)
    stamp = 0
    ring_trigger = np.empty(16, np.int64)
    ring_off = np.zeros(17, np.int64)
    ring_edges = np.empty(64, np.int64)
    n_rings = 0
    cut = np.zeros(triggers.shape[0], np.int64)
    # DFS stacks: per frame the account, its label row, the edge chosen, the range of candidate edges
    f_acct = np.empty(L + 1, np.int64)
    f_slot = np.empty(L + 1, np.int64)
    f_edge = np.empty(L + 1, np.int64)
    f_pos = np.empty(L + 1, np.int64)
    f_end = np.empty(L + 1, np.int64)
    kids = np.empty(64, np.int64)
    seen = np.zeros(0, np.int64)  # per account: the last DFS frame that listed an edge to it (at the first DFS)
    stack = np.empty((H + 1, 4), np.int64)  # `_reach`'s frames
    into_u = np.empty(64, np.int64)  # u's in-edges grouped by source (`_edges_into`)
    lz = np.zeros(2, np.int64)  # the lazy labels' row count and out-of-rows flag
    n_dfs = 0  # depth-first searches run: tells the entries of c_span this one wrote
    ti = 0
    while ti < triggers.shape[0]:
        trig = triggers[ti]
        u, v, ts_t = e_hot[trig].src, e_hot[trig].dst, e_hot[trig].ts
        if u == v or ts_t < horizon or (min_amt > 0 and e_amt[trig] < min_amt):
            ti += 1
            continue
        work[0] += 1
        lo = max(ts_t - window, horizon)
        # Bidirectional labels: grow the side whose frontier has fewer list entries to scan, until the
        # depths add up to L, a side runs out (its labels are then final for any depth) or they meet. A side
        # that ran out after skipping a hub is not final: the other side may still reach it (the depth-first
        # search enters u without u's in-list), so the other grows alone; else the answer would hang on which
        # side happened to grow first.
        slot_f[v] = 0
        touched_f[0] = v
        lab_f[0, 0] = lo
        nt_f = 1
        front_f, next_f = fa, fb
        front_f[0] = 0
        nf_f = 1
        slot_b[u] = 0
        touched_b[0] = u
        lab_b[0, 0] = ts_t
        nt_b = 1
        front_b, next_b = ba, bb
        front_b[0] = 0
        nf_b = 1
        done_f = 0
        done_b = 0
        meet = False
        full = False
        hub_cut = False
        hub_f = False
        hub_b = False
        while not meet and done_f + done_b < L and (nf_f > 0 or nf_b > 0):
            if (nf_f == 0 and not hub_f) or (nf_b == 0 and not hub_b):
                break
            work[1] += 1
            cost_f = _cost(0, front_f, nf_f, touched_f, a_seg)
            cost_b = _cost(1, front_b, nf_b, touched_b, a_seg)
            if nf_b == 0 or (nf_f > 0 and cost_f <= cost_b):
                work[2] += cost_f
                done_f += 1
                nt_f, nn, hub, meet = _layer(0, done_f, lab_f, slot_f, touched_f, nt_f, front_f, nf_f, next_f, lab_b,
                                             slot_b, done_b, lo, ts_t, strict, a_seg, a_hub, p_eid, e_hot, e_amt,
                                             tx_buf, tx_off, trig, ts_t, min_amt, max_degree, horizon, True, -1)
                front_f, next_f = next_f, front_f
                nf_f = nn
                hub_f = hub_f or hub
            else:
                work[2] += cost_b
                done_b += 1
                nt_b, nn, hub, meet = _layer(1, done_b, lab_b, slot_b, touched_b, nt_b, front_b, nf_b, next_b, lab_f,
                                             slot_f, done_f, lo, ts_t, strict, a_seg, a_hub, p_eid, e_hot, e_amt,
                                             tx_buf, tx_off, trig, ts_t, min_amt, max_degree, horizon, True, -1)
                front_b, next_b = next_b, front_b
                nf_b = nn
                hub_b = hub_b or hub
            hub_cut = hub_cut or hub
            if nt_f < 0 or nt_b < 0:
                full = True
                break
        # The depth-first search prunes with backward labels up to L - 1 hops. Without a hub guard the deeper
        # ones are worked out lazily, only where it asks (`_reach`), over the first hop from u's in-list.
        lazy = False
        lz[1] = 0
        if not full and meet and max_degree < 0 and a_hub.shape[0] == 0:
            if done_b == 0:
                work[1] += 1
                work[2] += _cost(1, front_b, nf_b, touched_b, a_seg)
                done_b = 1
                nt_b, nf_b, _, _ = _layer(1, 1, lab_b, slot_b, touched_b, nt_b, front_b, nf_b, next_b, lab_f, slot_f,
                                          done_f, lo, ts_t, strict, a_seg, a_hub, p_eid, e_hot, e_amt, tx_buf, tx_off,
                                          trig, ts_t, min_amt, max_degree, horizon, True, -1)
                front_b, next_b = next_b, front_b
                full = nt_b < 0
            lazy = not full and nf_b > 0 and done_b < L - 1  # else the labels are final or deep enough
            if lazy:
                for s in range(nt_b):
                    for j in range(done_b + 1, H):
                        lab_b[s, j] = UNKNOWN
                        r_pos[s, j] = -1
                lz[0] = nt_b
                if slot_b[v] < 0:  # v gets a row: the search marks it on its path
                    full = _lazy_row(lab_b, slot_b, touched_b, r_pos, lz, v, done_b) < 0
        while not full and meet and not lazy and done_b < L - 1 and nf_b > 0:
            work[1] += 1
            push = _cost(1, front_b, nf_b, touched_b, a_seg)
            done_b += 1
            # only accounts the search can enter with done_b hops left: forward-reached in L - done_b
            f_depth = L - done_b if L - done_b <= done_f else -1
            pull = _pull_cost(lab_f, touched_f, nt_f, f_depth, a_seg) if f_depth >= 0 else push
            work[2] += min(push, pull)
            if pull < push:
                nt_b, nn, hub = _pull_layer(done_b, lab_b, slot_b, touched_b, nt_b, front_b, nf_b, next_b, lab_f,
                                            touched_f, nt_f, f_depth, lo, ts_t, strict, a_seg, a_hub, p_eid, e_hot,
                                            e_amt, tx_buf, tx_off, trig, ts_t, min_amt, max_degree, horizon)
            else:
                nt_b, nn, hub, _ = _layer(1, done_b, lab_b, slot_b, touched_b, nt_b, front_b, nf_b, next_b, lab_f,
                                          slot_f, done_f, lo, ts_t, strict, a_seg, a_hub, p_eid, e_hot, e_amt, tx_buf,
                                          tx_off, trig, ts_t, min_amt, max_degree, horizon, True, f_depth)
            front_b, next_b = next_b, front_b
            nf_b = nn
            hub_cut = hub_cut or hub
            full = nt_b < 0
        if hub_cut:
            cut[ti] |= 2
        first_ring = n_rings
        if meet and not full:
            work[3] += 1
            # Depth-first over accounts from v. Frame k sits at account f_acct[k] (label row f_slot[k], -1 for
            # v when it has none) after k witnesses; its candidate edges are kids[f_pos[k]:f_end[k]] (deeper
            # frames append after them).
            found_here = 0
            n_dfs += 1
            if seen.shape[0] == 0:
                seen = np.zeros(n_accounts + 1, np.int64)
            if lazy:
                into_u = _edges_into(u, lo, ts_t, trig, min_amt, slot_b, u_at, into_u, a_seg, p_eid, e_hot, e_amt,
                                     tx_buf, tx_off)
            n_cached = 0
            f_acct[0] = v
            f_slot[0] = slot_b[v]
            if f_slot[0] >= 0:
                on_path[f_slot[0]] = True
            stamp += 1
            n_kids, kids, c_edges, n_cached = _children(
                kids, 0, v, lo, -1, stamp, seen, on_path, u, 0, L, strict, flow, min_ratio, max_ratio, min_amt,
                max_degree, horizon, lo, ts_t, trig, lab_b, slot_b, done_b, a_seg, a_hub, p_eid, e_hot, e_amt, tx_buf,
                tx_off, cut, ti, c_span, n_dfs, c_edges, n_cached, lazy, u_at, into_u)
            f_pos[0] = 0
            f_end[0] = n_kids
            depth = 0
            while depth >= 0:
                if f_pos[depth] == f_end[depth]:
                    if f_slot[depth] >= 0:
                        on_path[f_slot[depth]] = False
                    depth -= 1
                    continue
                e = kids[f_pos[depth]]
                f_pos[depth] += 1
                f_edge[depth] = e
                y = e_hot[e].dst
                if y != u:
                    if lazy and L - depth - 1 > done_b:
                        got = _reach(y, L - depth - 1, e_hot[e].ts if strict else lo, u, lo, ts_t, trig, strict,
                                     min_amt, done_b, lab_b, slot_b, touched_b, r_pos, lz, stack, a_seg, p_eid, e_hot,
                                     e_amt, tx_buf, tx_off)
                        if got < 0:
                            break
                        if got == 0:
                            continue
                    work[4] += 1
                    nd = depth + 1
                    f_acct[nd] = y
                    f_slot[nd] = slot_b[y]
                    on_path[f_slot[nd]] = True
                    stamp += 1
                    n_kids, kids, c_edges, n_cached = _children(
                        kids, f_end[depth], y, e_hot[e].ts, e, stamp, seen, on_path, u, nd, L, strict, flow,
                        min_ratio, max_ratio, min_amt, max_degree, horizon, lo, ts_t, trig, lab_b, slot_b, done_b,
                        a_seg, a_hub, p_eid, e_hot, e_amt, tx_buf, tx_off, cut, ti, c_span, n_dfs, c_edges, n_cached,
                        lazy, u_at, into_u)
                    f_pos[nd] = f_end[depth]
                    f_end[nd] = n_kids
                    depth = nd
                    continue
                # a ring of depth+1 witnesses; with a flow rule the trigger must follow the last hop
                if flow and not _flow_ok(e_amt[e], e_amt[trig], min_ratio, max_ratio):
                    continue
                if flow and _known(ring_off, ring_edges, first_ring, n_rings, f_edge, depth, e_hot):
                    continue
                if max_rings >= 0 and found_here == max_rings:
                    cut[ti] |= 1
                    for k in range(depth + 1):
                        if f_slot[k] >= 0:
                            on_path[f_slot[k]] = False
                    break
                found_here += 1
                ring_trigger = grown(ring_trigger, n_rings + 1)
                ring_off = grown(ring_off, n_rings + 2)
                ring_edges = grown(ring_edges, ring_off[n_rings] + depth + 1)
                base = ring_off[n_rings]
                for k in range(depth + 1):
                    ring_edges[base + k] = f_edge[k]
                ring_trigger[n_rings] = ti
                ring_off[n_rings + 1] = base + depth + 1
                n_rings += 1
            work[5] += found_here
            if lazy:
                nt_b = lz[0]
                full = lz[1] != 0
            if full:
                n_rings = first_ring
            elif only_batch:
                n_rings = _keep_batch_rings(ring_trigger, ring_off, ring_edges, first_ring, n_rings, in_batch)
        if full:
            # out of label rows: release what this trigger touched, double the rows and search it again
            cut[ti] = 0
            _release(slot_f, touched_f, lab_f.shape[0] if nt_f < 0 else nt_f)
            _release(slot_b, touched_b, lab_b.shape[0] if nt_b < 0 else nt_b)
            lab_f, lab_b, touched_f, touched_b, fa, fb, ba, bb, on_path, c_span, r_pos, u_at = _label_rows(
                min(2 * lab_f.shape[0], n_accounts + 1), H)
            continue
        _release(slot_f, touched_f, nt_f)
        _release(slot_b, touched_b, nt_b)
        ti += 1
    return ring_trigger[:n_rings].copy(), ring_off[:n_rings + 1].copy(), ring_edges[:ring_off[n_rings]].copy(), cut


@njit(cache=True)
def _keep_batch_rings(ring_trigger, ring_off, ring_edges, first_ring, n_rings, in_batch):
    """Keep, of the rings from first_ring on, those through an edge of this batch; compacted in place."""
    w = first_ring
    for r in range(first_ring, n_rings):
        keep = False
        for k in range(ring_off[r], ring_off[r + 1]):
            if in_batch[ring_edges[k]]:
                keep = True
        if keep:
            length = ring_off[r + 1] - ring_off[r]
            src_at = ring_off[r]
            dst_at = ring_off[w]
            for k in range(length):
                ring_edges[dst_at + k] = ring_edges[src_at + k]
            ring_trigger[w] = ring_trigger[r]
            ring_off[w + 1] = dst_at + length
            w += 1
    return w


@njit(cache=True)
def _known(ring_off, ring_edges, first, n_rings, f_edge, depth, e_hot):
    """Has this trigger already a ring over the same accounts (flow rule: only the first, canonical, counts)?"""
    for r in range(first, n_rings):
        if ring_off[r + 1] - ring_off[r] != depth + 1:
            continue
        same = True
        for k in range(depth + 1):
            if e_hot[ring_edges[ring_off[r] + k]].src != e_hot[f_edge[k]].src:
                same = False
                break
        if same:
            return True
    return False


@njit(cache=True)
def _children(kids, n_kids, x, arrival, prev, stamp, seen, on_path, u, depth, L, strict, flow, min_ratio,
              max_ratio, min_amt, max_degree, horizon, lo, ts_t, trig, lab_b, slot_b, done_b, a_seg, a_hub, p_eid,
              e_hot, e_amt, tx_buf, tx_off, cut, ti, c_span, n_dfs, c_edges, n_cached, lazy, u_at, into_u):
    """The edges the DFS tries next from account x after `depth` witnesses, in key order.

    Without a flow rule only the first usable edge to each peer (its canonical
    witness: earliest in key order, and under strict order the earliest that
    keeps time order); with one, every usable edge. An edge is usable when it
    may witness the trigger, keeps time order, leads to u or to an account
    off the path from which u is still reachable in the remaining hops (it
    has a backward label: every account the DFS enters has a label row).

    What does not depend on the path (the edge may witness, its peer reaches u
    in the hops left, in time) is worked out once per account and hops left
    for the trigger: those edges go to `c_edges` (each with its peer:
    peer << 32 | edge, so listing the kids reads no edge record), their range to
    `c_span[row of x, hops left]` (start, stop, the depth-first search that
    wrote it, the time it starts at). A dense graph enters the same accounts
    over many paths, and x's out-list is scanned only the first time. Under
    strict order the scan starts at that first arrival (a later path arriving
    earlier scans again) and, without a hub guard, ends at x's own backward
    label for hops left + 1: no edge after the latest departure from x that
    still reaches u can be usable. (A hub guard skips lists when labelling
    that the depth-first search still walks, so there the scan runs to ts_t.)
    With `lazy` labels (`_reach`) an edge whose peer's label is not known yet
    is listed, and the depth-first search asks `_reach` when it takes it: a
    search the ring cap stops early asks about few of them. Listing the first
    such edge to each peer loses nothing: if its peer cannot reach u in time
    after it, neither can it after a later edge. x's own label for left + 1
    hops was worked out when the edge into x was taken.
    Returns (n_kids, kids, c_edges, n_cached).
    """
    if _hub(a_seg, a_hub, p_eid, e_hot, x, 0, max_degree, horizon):
        cut[ti] |= 2
        return n_kids, kids, c_edges, n_cached
    left = L - depth - 1  # witnesses still allowed after this one
    sx = slot_b[x]
    since = arrival if strict else lo
    if sx >= 0 and c_span[sx, left, 2] == n_dfs and c_span[sx, left, 3] <= since:
        start, stop = c_span[sx, left, 0], c_span[sx, left, 1]
    else:
        start = n_cached
        until = ts_t
        # x's label for left + 1 hops: computed when left < done_b or lazily, final for any depth when
        # done_b < L - 1 (v's, at depth 0, is not needed: ts_t bounds it)
        if strict and sx >= 0 and max_degree < 0 and a_hub.shape[0] == 0:
            if lazy:
                if depth > 0:
                    until = lab_b[sx, left + 1]
            elif left < done_b or done_b < L - 1:
                until = lab_b[sx, left + 1 if left < done_b else done_b]
        c_edges, n_cached = _usable(x, left, u, strict, min_amt, since, until, ts_t, trig, lab_b, slot_b, done_b,
                                    a_seg, p_eid, e_hot, e_amt, tx_buf, tx_off, c_edges, n_cached, lazy, u_at, into_u)
        stop = n_cached
        if sx >= 0:
            c_span[sx, left, 0], c_span[sx, left, 1], c_span[sx, left, 2] = start, stop, n_dfs
            c_span[sx, left, 3] = since
    if strict:  # the cached edges are in key order: skip those before the arrival at x
        hi = stop
        while start < hi:
            mid = (start + hi) >> 1
            if e_hot[c_edges[mid] & EDGE_BITS].ts < arrival:
                start = mid + 1
            else:
                hi = mid
    for i in range(start, stop):
        e = c_edges[i] & EDGE_BITS
        y = c_edges[i] >> 32
        if not flow and seen[y] == stamp:
            continue
        if y != u and slot_b[y] >= 0 and on_path[slot_b[y]]:
            continue
        if flow and prev >= 0 and not _flow_ok(e_amt[prev], e_amt[e], min_ratio, max_ratio):
            continue
        seen[y] = stamp
        kids = grown(kids, n_kids + 1)
        kids[n_kids] = e
        n_kids += 1
    return n_kids, kids, c_edges, n_cached


@njit(cache=True)
def _usable(x, left, u, strict, min_amt, since, until, ts_t, trig, lab_b, slot_b, done_b, a_seg, p_eid, e_hot,
            e_amt, tx_buf, tx_off, c_edges, n_cached, lazy, u_at, into_u):
    """Append to c_edges x's out-edges with since <= ts <= until that may be a witness with `left` witnesses
    after it, on any path (with `lazy` labels deeper than done_b, also those whose peer's label is not known yet).

    With lazy labels the last witness (left 0) can only go into u: those
    edges are read from x's group of u's in-edges (`_edges_into`), not found
    among all of x's out-edges."""
    if lazy and left == 0:
        sx = slot_b[x]
        if lab_b[sx, 1] == NEG:  # no edge from x into u may witness
            return c_edges, n_cached
        stop = u_at[sx, 0] + u_at[sx, 1]
        i = _first_at(into_u, e_hot, u_at[sx, 0], stop, since)
        while i < stop and e_hot[into_u[i]].ts <= until:
            c_edges = grown(c_edges, n_cached + 1)
            c_edges[n_cached] = (np.int64(u) << 32) | into_u[i]
            n_cached += 1
            i += 1
        return c_edges, n_cached
    base = np.int64(a_seg[x, 0, SEG_START])
    first, stop = base + a_seg[x, 0, SEG_HEAD], base + a_seg[x, 0, SEG_LEN]
    k = left if left < done_b else done_b
    for i in range(_first_at(p_eid, e_hot, first, stop, since), stop):
        e = p_eid[i]
        r = e_hot[e]
        ts = r.ts
        if ts > until:
            break
        if ts == ts_t and not _witness_ok(e_hot, tx_buf, tx_off, e, trig, ts_t):
            continue
        if min_amt > 0 and e_amt[e] < min_amt:
            continue
        y = r.dst
        if y != u:
            if left <= 0:
                continue
            if lazy and left > done_b:
                sy = slot_b[y]
                if sy >= 0:
                    reach = lab_b[sy, left]
                    if reach != UNKNOWN and (reach == NEG or (strict and reach < ts)):
                        continue
            else:
                sy = slot_b[y]
                if sy < 0:  # u is not reachable from y in time
                    continue
                reach = lab_b[sy, k]
                if reach == NEG or (strict and reach < ts):
                    continue
        c_edges = grown(c_edges, n_cached + 1)
        c_edges[n_cached] = (np.int64(y) << 32) | e
        n_cached += 1
    return c_edges, n_cached


@njit(cache=True)
def _edges_into(u, lo, ts_t, trig, min_amt, slot_b, u_at, into_u, a_seg, p_eid, e_hot, e_amt, tx_buf, tx_off):
    """u's in-edges that may witness the trigger, grouped by source: account x's (label row sx) are
    into_u[u_at[sx, 0]:u_at[sx, 0] + u_at[sx, 1]], in key order. Returns into_u (grown if needed).

    Only for an x whose backward label for one hop is set (the first eager
    layer gave every such source a row; the others' u_at is stale). The
    depth-first search's last witness must go into u, and an account's out-
    list is mostly edges elsewhere: read from here, it costs what it finds.
    """
    base = np.int64(a_seg[u, 1, SEG_START])
    first, stop = base + a_seg[u, 1, SEG_HEAD], base + a_seg[u, 1, SEG_LEN]
    start = _first_at(p_eid, e_hot, first, stop, lo)
    n = 0
    for step in range(3):  # clear the groups, count them, fill them
        for i in range(start, stop):
            e = p_eid[i]
            ts = e_hot[e].ts
            if ts > ts_t:
                break
            if (ts == ts_t and not _witness_ok(e_hot, tx_buf, tx_off, e, trig, ts_t)) or \
                    (min_amt > 0 and e_amt[e] < min_amt):
                continue
            s = slot_b[e_hot[e].src]
            if step == 0:
                u_at[s, 0], u_at[s, 1] = -1, 0
            elif step == 1:
                u_at[s, 1] += 1
                n += 1
            else:
                if u_at[s, 0] < 0:
                    u_at[s, 0] = n
                    n += u_at[s, 1]
                    u_at[s, 1] = 0
                into_u[u_at[s, 0] + u_at[s, 1]] = e
                u_at[s, 1] += 1
        if step == 1:
            into_u = grown(into_u, n)
            n = 0
    return into_u


@njit(cache=True)
def _lazy_row(lab, slot, touched, r_pos, lz, y, done):
    """A backward label row for account y, first met by `_reach`: no label up to depth `done` (the eager layers
    would have given one), the deeper ones unknown. Returns the row, or -1 when the rows are full (lz[1] set)."""
    nt = lz[0]
    if nt == lab.shape[0]:
        lz[1] = 1
        return -1
    slot[y] = nt
    touched[nt] = y
    for j in range(lab.shape[1]):
        lab[nt, j] = NEG if j <= done else UNKNOWN
        r_pos[nt, j] = -1
    lz[0] = nt + 1
    return nt


@njit(cache=True)
def _reach(y, k, t, u, lo, ts_t, trig, strict, min_amt, done, lab, slot, touched, r_pos, lz, stack, a_seg, p_eid,
           e_hot, e_amt, tx_buf, tx_off):
    """Is y's backward label for k hops (k > done, the eager layers' depth) at least t? 1 yes, 0 no, -1 out of rows.

    That is: a time-respecting walk of at most k witnesses leads from y to u
    leaving y at or after t (order "none": t is lo, any walk in the window).
    The depth-first search asks only for accounts it may enter, so most of
    the window is never labelled, and a search the ring cap stops early asks
    little. Each label is worked out at most once per trigger, scanning the
    account's out-list from its latest usable edge back: the first edge into
    u, or into an account whose label for k - 1 hops is no earlier than the
    edge, gives it (the latest departure). The scan stops at the first edge
    before t and keeps its place in r_pos: the edges it passed fail whatever
    is asked, so a later question with an earlier t goes on from there.
    Questions one hop shallower go on an explicit stack (at most k frames).
    """
    sy = slot[y]
    if sy < 0:
        sy = _lazy_row(lab, slot, touched, r_pos, lz, y, done)
        if sy < 0:
            return -1
    if lab[sy, k] != UNKNOWN:
        return 1 if lab[sy, k] >= t else 0
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = y, sy, k, t
    sp = 1
    answer = -1  # a finished frame's answer for its parent's edge at r_pos - 1
    while True:
        x, sx, kx, tx = stack[sp - 1, 0], stack[sp - 1, 1], stack[sp - 1, 2], stack[sp - 1, 3]
        base = np.int64(a_seg[x, 0, SEG_START])
        first = base + a_seg[x, 0, SEG_HEAD]
        p = r_pos[sx, kx]
        if p < 0:
            p = _first_at(p_eid, e_hot, first, base + a_seg[x, 0, SEG_LEN], ts_t + 1)
        result = -1
        if answer == 1:
            lab[sx, kx] = e_hot[p_eid[p - 1]].ts if strict else ts_t
            result = 1
        elif answer == 0:
            p -= 1
        answer = -1
        z, sz, need = np.int64(-1), np.int64(-1), np.int64(0)
        while result < 0:
            if p <= first or e_hot[p_eid[p - 1]].ts < lo:
                lab[sx, kx] = NEG
                result = 0
                break
            e = p_eid[p - 1]
            r = e_hot[e]
            ts = r.ts
            if ts < tx:
                result = 0
                break
            if (ts == ts_t and not _witness_ok(e_hot, tx_buf, tx_off, e, trig, ts_t)) or \
                    (min_amt > 0 and e_amt[e] < min_amt):
                p -= 1
                continue
            z = r.dst
            if z == u:
                lab[sx, kx] = ts if strict else ts_t
                result = 1
                break
            if kx == 1:
                p -= 1
                continue
            need = ts if strict else lo
            sz = slot[z]
            if kx - 1 <= done:
                got = NEG if sz < 0 else lab[sz, kx - 1]
            else:
                if sz < 0:
                    sz = _lazy_row(lab, slot, touched, r_pos, lz, z, done)
                    if sz < 0:
                        return -1
                got = lab[sz, kx - 1]
                if got == UNKNOWN:
                    break  # ask z first
            if got >= need:
                lab[sx, kx] = ts if strict else ts_t
                result = 1
                break
            p -= 1
        r_pos[sx, kx] = p
        if result < 0:
            stack[sp, 0], stack[sp, 1], stack[sp, 2], stack[sp, 3] = z, sz, kx - 1, need
            sp += 1
            continue
        sp -= 1
        if sp == 0:
            return result
        answer = result


@njit(cache=True)
def _labels(d, root, root_label, depth, lab, slot, touched, front, nxt, o_lab, o_slot, lo, hi, strict,
            a_seg, a_hub, p_eid, e_hot, e_amt, tx_buf, tx_off, trig, ts_t, min_amt, horizon):
    """All layers from `root` up to `depth` (or until one changes nothing). Returns (done, n_touched); -1: full."""
    slot[root] = 0
    touched[0] = root
    lab[0, 0] = root_label
    nt = 1
    front[0] = 0
    nf = 1
    done = 0
    for k in range(1, depth + 1):
        nt, nn, _, _ = _layer(d, k, lab, slot, touched, nt, front, nf, nxt, o_lab, o_slot, 0, lo, hi, strict,
                              a_seg, a_hub, p_eid, e_hot, e_amt, tx_buf, tx_off, trig, ts_t, min_amt, -1, horizon,
                              False, -1)
        if nt < 0:
            return done, -1
        done = k
        if nn == 0:
            break
        for i in range(nn):
            front[i] = nxt[i]
        nf = nn
    return done, nt


@njit(cache=True)
def late_candidates(late, in_batch, window, max_hops, strict, min_amt, horizon, e_hot, e_amt, tx_buf, tx_off,
                    a_seg, p_eid, n_accounts, slot_f, slot_b, max_unfiltered):
    """Older triggers whose rings may run through a late edge: a superset, to be searched exactly.

    For a late payment p (x -> y at ts), a ring of an older trigger T = a -> b
    through p reads b ~> x, p, y ~> a, T: forward from y (times >= ts(p)) to a
    in i hops, backward from x (times <= ts(p)) to b in j hops, i + j <= max_hops - 2,
    T not in this batch (in_batch[T] false: the batch's own payments are
    searched as triggers), after p in (ts, tx_id) order and at most a window
    after it. Hubs are not skipped here: the exact search applies the guard.

    The forward side runs first: it only sees payments after p, few when p is
    a little late. When it finds at most `max_unfiltered` triggers they are
    all returned (the exact search of each is cheap); only more are filtered
    by backward labels from x, which span the whole window behind p.
    """
    L = max_hops - 1
    H = max_hops
    rows = min(FIRST_SLOTS, n_accounts + 1)
    lab_f, lab_b = np.empty((rows, H), np.int64), np.empty((rows, H), np.int64)
    touched_f, touched_b = np.empty(rows, np.int64), np.empty(rows, np.int64)
    front, nxt = np.empty(rows, np.int64), np.empty(rows, np.int64)
    no_hubs = np.zeros((0, 2), np.bool_)
    out = np.empty(16, np.int64)
    found = np.empty(32, np.int64)  # (trigger, backward hops left) pairs of one late payment
    n_out = 0
    pi = 0
    while pi < late.shape[0]:
        p = late[pi]
        x, y, ts_p = e_hot[p].src, e_hot[p].dst, e_hot[p].ts
        if x == y or ts_p < horizon or (min_amt > 0 and e_amt[p] < min_amt):
            pi += 1
            continue
        hi = ts_p + window
        lo = max(ts_p - window, horizon)
        done_f, nt_f = _labels(0, y, ts_p, L - 1, lab_f, slot_f, touched_f, front, nxt, lab_b, slot_b,
                               ts_p if strict else lo, hi, strict, a_seg, no_hubs, p_eid, e_hot, e_amt, tx_buf,
                               tx_off, p, hi, min_amt, horizon)
        n_found = 0
        if nt_f >= 0:
            # the triggers out of forward-reached accounts, each with the backward hops it leaves
            for s in range(nt_f):
                a = touched_f[s]
                fd = -1  # fewest hops that reach a (labels only improve with depth)
                for k in range(done_f + 1):
                    if lab_f[s, k] != INF:
                        fd = k
                        break
                if fd < 0 or a == x or L - 1 - fd < 0:
                    continue
                arrival = lab_f[s, done_f]
                base = np.int64(a_seg[a, 0, SEG_START])
                first, stop = base + a_seg[a, 0, SEG_HEAD], base + a_seg[a, 0, SEG_LEN]
                for j in range(_first_at(p_eid, e_hot, first, stop, max(arrival if strict else ts_p, horizon)), stop):
                    t = p_eid[j]
                    r = e_hot[t]
                    if r.ts > hi:
                        break
                    if in_batch[t] or (min_amt > 0 and e_amt[t] < min_amt) or r.dst == a:
                        continue
                    if r.ts == ts_p and not tx_less(tx_buf, tx_off, p, t):
                        continue
                    found = grown(found, 2 * (n_found + 1))
                    found[2 * n_found] = t
                    found[2 * n_found + 1] = L - 1 - fd
                    n_found += 1
        _release(slot_f, touched_f, max(nt_f, 0))
        if nt_f >= 0 and n_found <= max_unfiltered:
            out = grown(out, n_out + n_found)
            for i in range(n_found):
                out[n_out + i] = found[2 * i]
            n_out += n_found
            pi += 1
            continue
        done_b, nt_b = 0, 0
        if nt_f >= 0:
            done_b, nt_b = _labels(1, x, ts_p, L - 1, lab_b, slot_b, touched_b, front, nxt, lab_f, slot_f, lo,
                                   ts_p if strict else hi, strict, a_seg, no_hubs, p_eid, e_hot, e_amt, tx_buf,
                                   tx_off, p, ts_p, min_amt, horizon)
        if nt_f < 0 or nt_b < 0:
            # out of label rows: release what this payment touched, double the rows and look again
            if nt_f < 0:
                _release(slot_f, touched_f, lab_f.shape[0])
            else:
                _release(slot_b, touched_b, lab_b.shape[0])
            rows = min(2 * lab_f.shape[0], n_accounts + 1)
            lab_f, lab_b = np.empty((rows, H), np.int64), np.empty((rows, H), np.int64)
            touched_f, touched_b = np.empty(rows, np.int64), np.empty(rows, np.int64)
            front, nxt = np.empty(rows, np.int64), np.empty(rows, np.int64)
            continue
        for i in range(n_found):
            t = found[2 * i]
            sb = slot_b[e_hot[t].dst]
            if sb < 0:
                continue
            budget = found[2 * i + 1]
            reach = lab_b[sb, budget if budget < done_b else done_b]
            if reach == NEG or (strict and reach < e_hot[t].ts - window):
                continue
            out = grown(out, n_out + 1)
            out[n_out] = t
            n_out += 1
        _release(slot_b, touched_b, nt_b)
        pi += 1
    return out[:n_out].copy()

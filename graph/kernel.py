"""The compiled hot path: the edge store's insert/evict/compact and the exact ring search, in numba.

Everything here works on plain numpy arrays that `EdgeStore` (store.py) owns;
Python hands whole batches over, never one payment at a time. The functions
are `@njit(cache=True)`: compiled once per machine into numba's cache next to
this file (or `NUMBA_CACHE_DIR`), loaded from there by every later process.

Layout (see store.py for the owner):
- edges, by edge id `e`: `e_src`, `e_dst` (account ids), `e_ts` (epoch ms),
  `e_amt` (int64, 1/10,000 units), `e_cur` (interned currency, 0 = none),
  the tx id's UTF-8 bytes in `tx_buf[tx_off[e]:tx_off[e+1]]`;
- a tx-id hash table `tx_tab` (open addressing, -1 empty, -2 deleted);
- per account and direction (0 = out, 1 = in) a segment of the pools `p_eid`,
  `p_ts` (peer read from the edge): `a_start`, `a_head` (first live entry,
  advanced by eviction), `a_len`, `a_cap`; entries sorted by the event-time
  key `(ts, tx_id bytes)`; a full segment moves to the pool's end at twice
  its size (the pool itself grows by doubling in Python, on demand).

The ring search for a trigger `T = u -> v` (witnesses: edges with key < key(T)
and ts >= ts(T) - window; see `search`) is bidirectional: forward labels
(earliest arrival from v) and backward labels (latest departure that still
reaches u), one array per hop count. If no account carries a forward label
at most its backward label within the hop budget, no time-respecting walk of
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
DELETED = np.int32(-2)

NEW, DUPLICATE, CONFLICT, NEED_ROOM = 0, 1, 2, 3
MIN_SEGMENT = 2  # smallest list segment: most accounts hold one or two payments per window


# ---- keys and hashes ---------------------------------------------------------------------------------


@njit(cache=True)
def tx_less(tx_buf, tx_off, a, b):
    """tx id of edge a < tx id of edge b, as UTF-8 bytes."""
    i, ia, ja = 0, tx_off[a], tx_off[a + 1]
    ib, jb = tx_off[b], tx_off[b + 1]
    na, nb = ja - ia, jb - ib
    n = na if na < nb else nb
    while i < n:
        x, y = tx_buf[ia + i], tx_buf[ib + i]
        if x != y:
            return x < y
        i += 1
    return na < nb


@njit(cache=True)
def key_less(e_ts, tx_buf, tx_off, a, b):
    """Event-time order: (ts, tx_id) of edge a < that of edge b."""
    if e_ts[a] != e_ts[b]:
        return e_ts[a] < e_ts[b]
    return tx_less(tx_buf, tx_off, a, b)


@njit(cache=True)
def fnv1a(buf, start, stop):
    h = np.uint64(14695981039346656037)
    for i in range(start, stop):
        h = (h ^ np.uint64(buf[i])) * np.uint64(1099511628211)
    return h


@njit(cache=True)
def same_tx(tx_buf, tx_off, e, b_buf, b_start, b_stop):
    n = tx_off[e + 1] - tx_off[e]
    if n != b_stop - b_start:
        return False
    base = tx_off[e]
    for i in range(n):
        if tx_buf[base + i] != b_buf[b_start + i]:
            return False
    return True


@njit(cache=True)
def lookup(tx_tab, tx_buf, tx_off, e_ts, horizon, b_buf, b_start, b_stop, h):
    """Edge id holding this tx id (and not evicted), or -1."""
    mask = np.uint64(tx_tab.shape[0] - 1)
    slot = h & mask
    while True:
        e = tx_tab[slot]
        if e == EMPTY:
            return -1
        if e >= 0 and e_ts[e] >= horizon and same_tx(tx_buf, tx_off, e, b_buf, b_start, b_stop):
            return e
        slot = (slot + np.uint64(1)) & mask


@njit(cache=True)
def tab_put(tx_tab, h, e):
    mask = np.uint64(tx_tab.shape[0] - 1)
    slot = h & mask
    while tx_tab[slot] >= 0:
        slot = (slot + np.uint64(1)) & mask
    tx_tab[slot] = e


@njit(cache=True)
def intern_names(b_buf, b_off, tab, n_buf, n_off, count):
    """Account id of each name (UTF-8 in b_buf[b_off[i]:b_off[i+1]]), adding new names at the end.

    The caller leaves room for every name to be new. Returns (ids, count).
    """
    rows = b_off.shape[0] - 1
    ids = np.empty(rows, np.int32)
    mask = np.uint64(tab.shape[0] - 1)
    for i in range(rows):
        s, t = b_off[i], b_off[i + 1]
        slot = fnv1a(b_buf, s, t) & mask
        while True:
            a = tab[slot]
            if a == EMPTY:
                base = n_off[count]
                for j in range(t - s):
                    n_buf[base + j] = b_buf[s + j]
                n_off[count + 1] = base + (t - s)
                tab[slot] = count
                ids[i] = count
                count += 1
                break
            if same_tx(n_buf, n_off, a, b_buf, s, t):
                ids[i] = a
                break
            slot = (slot + np.uint64(1)) & mask
    return ids, count


# ---- insert ------------------------------------------------------------------------------------------


@njit(cache=True)
def _place(a_start, a_head, a_len, a_cap, p_eid, p_ts, pool_used, e_ts, tx_buf, tx_off, d, acct, e):
    """Insert edge e into account acct's list d in key order; returns the new pool_used or -1 if no room."""
    if a_len[d, acct] == a_cap[d, acct]:
        live = a_len[d, acct] - a_head[d, acct]
        cap = max(MIN_SEGMENT, 2 * live)
        if pool_used + cap > p_eid.shape[0]:
            return -1
        old, head = a_start[d, acct], a_head[d, acct]
        for i in range(live):
            p_eid[pool_used + i] = p_eid[old + head + i]
            p_ts[pool_used + i] = p_ts[old + head + i]
        a_start[d, acct] = pool_used
        a_head[d, acct] = 0
        a_len[d, acct] = live
        a_cap[d, acct] = cap
        pool_used += cap
    base = a_start[d, acct]
    pos = a_len[d, acct]
    head = a_head[d, acct]
    # Late edges go to their sorted place; in-order ones stay at the end.
    while pos > head and key_less(e_ts, tx_buf, tx_off, e, p_eid[base + pos - 1]):
        p_eid[base + pos] = p_eid[base + pos - 1]
        p_ts[base + pos] = p_ts[base + pos - 1]
        pos -= 1
    p_eid[base + pos] = e
    p_ts[base + pos] = e_ts[e]
    a_len[d, acct] += 1
    return pool_used


@njit(cache=True)
def insert(b_src, b_dst, b_ts, b_amt, b_cur, b_buf, b_off, own_src, own_dst, start_row, status, b_eid,
           e_src, e_dst, e_ts, e_amt, e_cur, tx_off, tx_buf, n_edges, tx_tab, horizon,
           a_start, a_head, a_len, a_cap, p_eid, p_ts, pool_used):
    """Store batch rows from `start_row` on; `status[row]` = NEW / DUPLICATE / CONFLICT, `b_eid[row]` its edge.

    Returns (next row, n_edges, pool_used); next row < rows when
    the pool is full: the caller grows it and calls again from there. Edge arrays, tx_buf and
    tx_tab must have room for the whole batch (the caller sees to it).
    `own_src[row]`/`own_dst[row]` say whether this store keeps the out/in entry (a shard keeps
    the sides of the accounts it owns).
    """
    rows = b_src.shape[0]
    row = start_row
    while row < rows:
        s, t = b_off[row], b_off[row + 1]
        h = fnv1a(b_buf, s, t)
        found = lookup(tx_tab, tx_buf, tx_off, e_ts, horizon, b_buf, s, t, h)
        if found >= 0:
            same = (e_src[found] == b_src[row] and e_dst[found] == b_dst[row] and e_ts[found] == b_ts[row]
                    and e_amt[found] == b_amt[row] and e_cur[found] == b_cur[row])
            status[row] = DUPLICATE if same else CONFLICT
            b_eid[row] = found
            row += 1
            continue
        # Room in the pool for both sides, even if each segment must move.
        need = 0
        if own_src[row]:
            need += max(MIN_SEGMENT, 2 * (a_len[0, b_src[row]] - a_head[0, b_src[row]]))
        if own_dst[row]:
            need += max(MIN_SEGMENT, 2 * (a_len[1, b_dst[row]] - a_head[1, b_dst[row]]))
        if pool_used + need > p_eid.shape[0]:
            return row, n_edges, pool_used
        e = n_edges
        e_src[e], e_dst[e], e_ts[e], e_amt[e], e_cur[e] = b_src[row], b_dst[row], b_ts[row], b_amt[row], b_cur[row]
        b_eid[row] = e
        base = tx_off[e]
        for i in range(t - s):
            tx_buf[base + i] = b_buf[s + i]
        tx_off[e + 1] = base + (t - s)
        n_edges += 1
        tab_put(tx_tab, h, e)
        if own_src[row]:
            pool_used = _place(a_start, a_head, a_len, a_cap, p_eid, p_ts, pool_used, e_ts, tx_buf, tx_off,
                               0, b_src[row], e)
        if own_dst[row]:
            pool_used = _place(a_start, a_head, a_len, a_cap, p_eid, p_ts, pool_used, e_ts, tx_buf, tx_off,
                               1, b_dst[row], e)
        status[row] = NEW
        row += 1
    return row, n_edges, pool_used


# ---- evict and compact -------------------------------------------------------------------------------


@njit(cache=True)
def evict(a_head, a_len, a_start, p_ts, n_accounts, horizon):
    """Advance every list's start past entries older than `horizon`; returns entries dropped."""
    dropped = 0
    for d in range(2):
        for a in range(n_accounts):
            base, head, n = a_start[d, a], a_head[d, a], a_len[d, a]
            while head < n and p_ts[base + head] < horizon:
                head += 1
                dropped += 1
            a_head[d, a] = head
    return dropped


@njit(cache=True)
def live_edges(e_ts, n_edges, horizon):
    keep = np.empty(n_edges, np.int64)
    k = 0
    for e in range(n_edges):
        if e_ts[e] >= horizon:
            keep[k] = e
            k += 1
    return keep[:k]


@njit(cache=True)
def renumber_pools(a_start, a_head, a_len, a_cap, p_eid, p_ts, new_id, n_accounts, out_eid, out_ts):
    """Copy every list's live entries, renumbered, into fresh pools with 25% room; returns pool_used."""
    used = 0
    for d in range(2):
        for a in range(n_accounts):
            base, head, n = a_start[d, a], a_head[d, a], a_len[d, a]
            live = 0
            for i in range(head, n):
                if new_id[p_eid[base + i]] >= 0:
                    live += 1
            cap = 0 if live == 0 else max(MIN_SEGMENT, live + live // 4)
            k = 0
            for i in range(head, n):
                e = new_id[p_eid[base + i]]
                if e >= 0:
                    out_eid[used + k] = e
                    out_ts[used + k] = p_ts[base + i]
                    k += 1
            a_start[d, a], a_head[d, a], a_len[d, a], a_cap[d, a] = used, 0, live, cap
            used += cap
    return used


@njit(cache=True)
def compact_tx(tx_buf, tx_off, keep):
    """The tx-id bytes of the kept edges, back to back, and their offsets."""
    total = 0
    for i in range(keep.shape[0]):
        total += tx_off[keep[i] + 1] - tx_off[keep[i]]
    buf = np.empty(max(total + total // 4, 64), np.uint8)
    off = np.zeros(keep.shape[0] + 1, np.int64)
    at = 0
    for i in range(keep.shape[0]):
        e = keep[i]
        for j in range(tx_off[e], tx_off[e + 1]):
            buf[at] = tx_buf[j]
            at += 1
        off[i + 1] = at
    return buf, off


@njit(cache=True)
def rebuild_index(tab, buf, off, count):
    """The open-addressing table of the byte strings buf[off[i]:off[i+1]], i < count (tx ids, account names)."""
    tab[:] = EMPTY
    for i in range(count):
        tab_put(tab, fnv1a(buf, off[i], off[i + 1]), i)


# ---- search ------------------------------------------------------------------------------------------


@njit(cache=True)
def _first_at(p_ts, base, head, n, t):
    """First position in [head, n) with p_ts >= t (lists are sorted by ts)."""
    lo, hi = head, n
    while lo < hi:
        mid = (lo + hi) >> 1
        if p_ts[base + mid] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def _witness_ok(e_ts, tx_buf, tx_off, e, trig, ts_t):
    """Edge e may witness trigger trig: strictly before it in (ts, tx_id) order."""
    if e_ts[e] < ts_t:
        return True
    return e_ts[e] == ts_t and e != trig and tx_less(tx_buf, tx_off, e, trig)


@njit(cache=True)
def _flow_ok(earlier, later, min_ratio, max_ratio):
    a, b = np.float64(earlier), np.float64(later)
    return min_ratio * a <= b <= max_ratio * a


@njit(cache=True)
def _layer(d, k, lab, touched, nt, frontier, nf, nxt, lo, hi, strict, a_start, a_head, a_len, a_hub, p_eid, p_ts,
           e_src, e_dst, e_ts, e_amt, tx_buf, tx_off, trig, ts_t, min_amt, max_degree, check_key):
    """Labels over walks of at most k edges (lab[k]) from those of at most k - 1, expanding `frontier`.

    d = 0: forward over out-edges, the earliest arrival (min); d = 1: backward over
    in-edges, the latest departure that still reaches the root (max). Times stay
    in [lo, hi]; strict order relaxes an edge only when it keeps time order
    (order "none": every label is lo / hi, only reachability counts). Every
    entry of an account not in `touched` is empty (INF forward, NEG backward);
    `_clear` restores that. The accounts improved in this layer go to `nxt`.
    Returns (n_touched, n_next, hub_met).
    """
    forward = d == 0
    empty = INF if forward else NEG
    for i in range(nt):
        x = touched[i]
        lab[k, x] = lab[k - 1, x]
    nn = 0
    hub = False
    for fi in range(nf):
        x = frontier[fi]
        at = lab[k - 1, x]
        base, head, n = a_start[d, x], a_head[d, x], a_len[d, x]
        if a_hub[d, x] or (max_degree >= 0 and n - head > max_degree):
            hub = True
            continue
        if forward:
            start = _first_at(p_ts, base, head, n, at if strict else lo)
            stop = n
        else:
            start = _first_at(p_ts, base, head, n, lo)
            stop = _first_at(p_ts, base, head, n, (at if strict else hi) + 1)
        for i in range(start, stop):
            ts = p_ts[base + i]
            if ts > hi:
                break
            e = p_eid[base + i]
            if check_key and ts == ts_t and not _witness_ok(e_ts, tx_buf, tx_off, e, trig, ts_t):
                continue
            if e_amt[e] < min_amt:
                continue
            y = e_dst[e] if forward else e_src[e]
            old = lab[k, y]
            if forward:
                value = ts if strict else lo
                better = value < old
            else:
                value = ts if strict else hi
                better = value > old
            if better:
                if old == empty and lab[k - 1, y] == empty:
                    touched[nt] = y
                    nt += 1
                if old == lab[k - 1, y]:  # first improvement of y in this layer
                    nxt[nn] = y
                    nn += 1
                lab[k, y] = value
    return nt, nn, hub


@njit(cache=True)
def _cost(d, frontier, nf, a_head, a_len):
    """List entries the next layer from `frontier` may scan: the bidirectional search grows the cheaper side."""
    total = 0
    for i in range(nf):
        x = frontier[i]
        total += a_len[d, x] - a_head[d, x]
    return total


@njit(cache=True)
def _labels(d, root, root_label, depth, lab, touched, frontier, nxt, lo, hi, strict,
            a_start, a_head, a_len, a_hub, p_eid, p_ts, e_src, e_dst, e_ts, e_amt, tx_buf, tx_off, trig, ts_t,
            min_amt, max_degree, check_key):
    """All layers from `root` up to `depth` (or until one changes nothing). Returns (done, n_touched, hub_met)."""
    lab[0, root] = root_label
    touched[0] = root
    nt = 1
    frontier[0] = root
    nf = 1
    hub = False
    done = 0
    for k in range(1, depth + 1):
        nt, nn, h = _layer(d, k, lab, touched, nt, frontier, nf, nxt, lo, hi, strict, a_start, a_head, a_len,
                           a_hub, p_eid, p_ts, e_src, e_dst, e_ts, e_amt, tx_buf, tx_off, trig, ts_t, min_amt,
                           max_degree, check_key)
        hub = hub or h
        done = k
        if nn == 0:
            break
        for i in range(nn):
            frontier[i] = nxt[i]
        nf = nn
    return done, nt, hub


def new_scratch(max_hops: int, n_accounts: int) -> tuple:
    """The arrays `search` and `late_candidates` work in, for up to `n_accounts` accounts."""
    n = n_accounts + 1
    return (np.full((max_hops, n), INF, np.int64), np.full((max_hops, n), NEG, np.int64),
            np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64),
            np.empty(n, np.int64), np.empty(n, np.int64), np.zeros(n, np.bool_), np.full(n, -1, np.int64))


@njit(cache=True)
def _clear(lab, touched, n_touched, depth, empty):
    for i in range(n_touched):
        x = touched[i]
        for k in range(depth + 1):
            lab[k, x] = empty


@njit(cache=True)
def _meets(touched, nt, lab_f, done_f, lab_b, done_b):
    """Some account reached both ways, the forward arrival no later than the backward departure."""
    for i in range(nt):
        x = touched[i]
        if lab_f[done_f, x] != INF and lab_b[done_b, x] != NEG and lab_f[done_f, x] <= lab_b[done_b, x]:
            return True
    return False


@njit(cache=True)
def _grow(arr, need):
    if need <= arr.shape[0]:
        return arr
    out = np.empty(max(need, 2 * arr.shape[0]), arr.dtype)
    out[:arr.shape[0]] = arr
    return out


@njit(cache=True)
def search(triggers, in_batch, only_batch, window, max_hops, strict, flow, min_ratio, max_ratio, min_amt, max_rings,
           max_degree, e_src, e_dst, e_ts, e_amt, tx_buf, tx_off, a_start, a_head, a_len, a_hub, p_eid, p_ts,
           n_accounts, scratch, stamp):
    """The rings each trigger edge closes, with canonical witnesses.

    `scratch` (see `new_scratch`) holds the per-account label and DFS arrays,
    reused across calls so a call costs what it touches, not the accounts'
    number; labels are left empty and `on_path` clear on return. `stamp`
    numbers the DFS frames across calls (returned advanced), so `seen` never
    needs a reset.

    Returns (ring_trigger, ring_off, ring_edges, cut): ring r belongs to
    triggers[ring_trigger[r]], its witnesses in ring order (from the trigger's
    dst round to its src) are ring_edges[ring_off[r]:ring_off[r+1]];
    cut[i] bit 1: max_rings cut trigger i's list, bit 2: a hub was skipped.
    With only_batch only rings with a witness e where in_batch[e] are returned
    (a late payment's re-search of older triggers); the ring cap applies
    before that filter, so it cuts the same rings either way.
    """
    L = max_hops - 1
    lab_f, lab_b, touched_f, touched_b, front_f, next_f, front_b, next_b, on_path, seen = scratch
    ring_trigger = np.empty(16, np.int64)
    ring_off = np.zeros(17, np.int64)
    ring_edges = np.empty(64, np.int64)
    n_rings = 0
    cut = np.zeros(triggers.shape[0], np.int64)
    # DFS stacks: per frame the account, the edge chosen, the range of candidate edges
    f_acct = np.empty(L + 1, np.int64)
    f_edge = np.empty(L + 1, np.int64)
    f_pos = np.empty(L + 1, np.int64)
    f_end = np.empty(L + 1, np.int64)
    kids = np.empty(64, np.int64)
    for ti in range(triggers.shape[0]):
        trig = triggers[ti]
        u, v = e_src[trig], e_dst[trig]
        ts_t = e_ts[trig]
        if u == v or e_amt[trig] < min_amt:
            continue
        lo = ts_t - window
        # Bidirectional labels: grow the side whose frontier has fewer list entries to scan, until the
        # depths add up to L or a side runs out (then its labels are final for any depth).
        lab_f[0, v] = lo
        touched_f[0] = v
        nt_f = 1
        front_f[0] = v
        nf_f = 1
        lab_b[0, u] = ts_t
        touched_b[0] = u
        nt_b = 1
        front_b[0] = u
        nf_b = 1
        done_f = 0
        done_b = 0
        # A side that ran out is final only if it skipped no hub; one emptied by skipping a hub leaves the
        # other side to grow alone (else the answer would hang on which side happened to grow first).
        hub_f = False
        hub_b = False
        while done_f + done_b < L and (nf_f > 0 or nf_b > 0):
            if (nf_f == 0 and not hub_f) or (nf_b == 0 and not hub_b):
                break
            if nf_b == 0 or (nf_f > 0 and _cost(0, front_f, nf_f, a_head, a_len) <= _cost(1, front_b, nf_b, a_head,
                                                                                          a_len)):
                done_f += 1
                nt_f, nn, hub = _layer(0, done_f, lab_f, touched_f, nt_f, front_f, nf_f, next_f, lo, ts_t, strict,
                                       a_start, a_head, a_len, a_hub, p_eid, p_ts, e_src, e_dst, e_ts, e_amt, tx_buf,
                                       tx_off, trig, ts_t, min_amt, max_degree, True)
                front_f, next_f = next_f, front_f
                nf_f = nn
                hub_f = hub_f or hub
            else:
                done_b += 1
                nt_b, nn, hub = _layer(1, done_b, lab_b, touched_b, nt_b, front_b, nf_b, next_b, lo, ts_t, strict,
                                       a_start, a_head, a_len, a_hub, p_eid, p_ts, e_src, e_dst, e_ts, e_amt, tx_buf,
                                       tx_off, trig, ts_t, min_amt, max_degree, True)
                front_b, next_b = next_b, front_b
                nf_b = nn
                hub_b = hub_b or hub
            if hub:
                cut[ti] |= 2
        if nt_f <= nt_b:
            meet = _meets(touched_f, nt_f, lab_f, done_f, lab_b, done_b)
        else:
            meet = _meets(touched_b, nt_b, lab_f, done_f, lab_b, done_b)
        # the depth-first search prunes with backward labels up to L - 1 hops: finish them
        while meet and done_b < L - 1 and nf_b > 0:
            done_b += 1
            nt_b, nn, hub = _layer(1, done_b, lab_b, touched_b, nt_b, front_b, nf_b, next_b, lo, ts_t, strict,
                                   a_start, a_head, a_len, a_hub, p_eid, p_ts, e_src, e_dst, e_ts, e_amt, tx_buf,
                                   tx_off, trig, ts_t, min_amt, max_degree, True)
            front_b, next_b = next_b, front_b
            nf_b = nn
            if hub:
                cut[ti] |= 2
        if meet:
            # Depth-first over accounts from v. Frame k sits at account f_acct[k] after k witnesses;
            # its candidate edges are kids[f_pos[k]:f_end[k]] (deeper frames append after them).
            found_here = 0
            first_ring = n_rings
            f_acct[0] = v
            on_path[v] = True
            stamp += 1
            n_kids, kids = _children(kids, 0, v, lo, -1, stamp, seen, on_path, u, 0, L, strict, flow, min_ratio,
                                     max_ratio, min_amt, max_degree, lo, ts_t, trig, lab_b, done_b, a_start,
                                     a_head, a_len, a_hub, p_eid, p_ts, e_dst, e_ts, e_amt, tx_buf, tx_off, cut, ti)
            f_pos[0] = 0
            f_end[0] = n_kids
            depth = 0
            while depth >= 0:
                if f_pos[depth] == f_end[depth]:
                    on_path[f_acct[depth]] = False
                    depth -= 1
                    continue
                e = kids[f_pos[depth]]
                f_pos[depth] += 1
                f_edge[depth] = e
                y = e_dst[e]
                if y != u:
                    nd = depth + 1
                    f_acct[nd] = y
                    on_path[y] = True
                    stamp += 1
                    n_kids, kids = _children(kids, f_end[depth], y, e_ts[e], e, stamp, seen, on_path, u, nd, L,
                                             strict, flow, min_ratio, max_ratio, min_amt, max_degree, lo, ts_t,
                                             trig, lab_b, done_b, a_start, a_head, a_len, a_hub, p_eid, p_ts, e_dst,
                                             e_ts, e_amt, tx_buf, tx_off, cut, ti)
                    f_pos[nd] = f_end[depth]
                    f_end[nd] = n_kids
                    depth = nd
                    continue
                # a ring of depth+1 witnesses; with a flow rule the trigger must follow the last hop
                if flow and not _flow_ok(e_amt[e], e_amt[trig], min_ratio, max_ratio):
                    continue
                if flow and _known(ring_off, ring_edges, first_ring, n_rings, f_edge, depth, e_src):
                    continue
                if max_rings >= 0 and found_here == max_rings:
                    cut[ti] |= 1
                    for k in range(depth + 1):
                        on_path[f_acct[k]] = False
                    break
                found_here += 1
                ring_trigger = _grow(ring_trigger, n_rings + 1)
                ring_off = _grow(ring_off, n_rings + 2)
                ring_edges = _grow(ring_edges, ring_off[n_rings] + depth + 1)
                base = ring_off[n_rings]
                for k in range(depth + 1):
                    ring_edges[base + k] = f_edge[k]
                ring_trigger[n_rings] = ti
                ring_off[n_rings + 1] = base + depth + 1
                n_rings += 1
            if only_batch:
                # keep only rings through an edge of this batch; compact in place
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
                n_rings = w
        _clear(lab_f, touched_f, nt_f, L, INF)
        _clear(lab_b, touched_b, nt_b, L, NEG)
    return (ring_trigger[:n_rings].copy(), ring_off[:n_rings + 1].copy(), ring_edges[:ring_off[n_rings]].copy(), cut,
            stamp)


@njit(cache=True)
def _known(ring_off, ring_edges, first, n_rings, f_edge, depth, e_src):
    """Has this trigger already a ring over the same accounts (flow rule: only the first, canonical, counts)?"""
    for r in range(first, n_rings):
        if ring_off[r + 1] - ring_off[r] != depth + 1:
            continue
        same = True
        for k in range(depth + 1):
            if e_src[ring_edges[ring_off[r] + k]] != e_src[f_edge[k]]:
                same = False
                break
        if same:
            return True
    return False


@njit(cache=True)
def _children(kids, n_kids, x, arrival, prev, stamp, seen, on_path, u, depth, L, strict, flow, min_ratio,
              max_ratio, min_amt, max_degree, lo, ts_t, trig, lab_b, done_b, a_start, a_head, a_len, a_hub, p_eid,
              p_ts, e_dst, e_ts, e_amt, tx_buf, tx_off, cut, ti):
    """The edges the DFS tries next from account x after `depth` witnesses, in key order.

    Without a flow rule only the first usable edge to each peer (its canonical
    witness: earliest in key order, and under strict order the earliest that
    keeps time order); with one, every usable edge. An edge is usable when it
    may witness the trigger, keeps time order, leads to u or to an account
    off the path from which u is still reachable in the remaining hops.
    """
    base, head, n = a_start[0, x], a_head[0, x], a_len[0, x]
    if a_hub[0, x] or (max_degree >= 0 and n - head > max_degree):
        cut[ti] |= 2
        return n_kids, kids
    left = L - depth - 1  # witnesses still allowed after this one
    start = _first_at(p_ts, base, head, n, arrival if strict else lo)
    for i in range(start, n):
        ts = p_ts[base + i]
        if ts > ts_t:
            break
        e = p_eid[base + i]
        if ts == ts_t and not _witness_ok(e_ts, tx_buf, tx_off, e, trig, ts_t):
            continue
        if e_amt[e] < min_amt:
            continue
        y = e_dst[e]
        if not flow and seen[y] == stamp:
            continue
        if y != u:
            if on_path[y] or left <= 0:
                continue
            k = left if left < done_b else done_b
            reach = lab_b[k, y]
            if reach == NEG or (strict and reach < ts):
                continue
        if flow and prev >= 0 and not _flow_ok(e_amt[prev], e_amt[e], min_ratio, max_ratio):
            continue
        seen[y] = stamp
        kids = _grow(kids, n_kids + 1)
        kids[n_kids] = e
        n_kids += 1
    return n_kids, kids


@njit(cache=True)
def late_candidates(late, in_batch, window, max_hops, strict, min_amt, e_src, e_dst, e_ts, e_amt, tx_buf, tx_off,
                    a_start, a_head, a_len, a_hub, p_eid, p_ts, n_accounts, scratch):
    """Older triggers whose rings may run through a late edge: a superset, to be searched exactly.

    For a late payment p (x -> y at ts), a ring of an older trigger T = a -> b
    through p reads b ~> x, p, y ~> a, T: forward from y (times >= ts(p)) to a
    in i hops, backward from x (times <= ts(p)) to b in j hops, i + j <= max_hops - 2,
    T not in this batch (in_batch[T] false: the batch's own payments are
    searched as triggers), after p in (ts, tx_id) order and at most a window
    after it.
    """
    L = max_hops - 1
    lab_f, lab_b, touched_f, touched_b, frontier, nxt = scratch[0], scratch[1], scratch[2], scratch[3], scratch[4], \
        scratch[5]
    out = np.empty(16, np.int64)
    n_out = 0
    for pi in range(late.shape[0]):
        p = late[pi]
        x, y, ts_p = e_src[p], e_dst[p], e_ts[p]
        if x == y or e_amt[p] < min_amt:
            continue
        hi = ts_p + window
        lo = ts_p - window
        done_f, nt_f, _ = _labels(0, y, ts_p, L - 1, lab_f, touched_f, frontier, nxt, ts_p if strict else lo, hi,
                                  strict,
                                  a_start, a_head, a_len, a_hub, p_eid, p_ts, e_src, e_dst, e_ts, e_amt, tx_buf, tx_off,
                                  p, hi, min_amt, -1, False)
        done_b, nt_b, _ = _labels(1, x, ts_p, L - 1, lab_b, touched_b, frontier, nxt, lo, ts_p if strict else hi,
                                  strict,
                                  a_start, a_head, a_len, a_hub, p_eid, p_ts, e_src, e_dst, e_ts, e_amt, tx_buf, tx_off,
                                  p, ts_p, min_amt, -1, False)
        for i in range(nt_f):
            a = touched_f[i]
            # fewest hops that reach a (labels only improve with depth)
            fd = -1
            for k in range(done_f + 1):
                if lab_f[k, a] != INF:
                    fd = k
                    break
            if fd < 0 or a == x:
                continue
            arrival = lab_f[done_f, a]
            base, head, n = a_start[0, a], a_head[0, a], a_len[0, a]
            start = _first_at(p_ts, base, head, n, arrival if strict else ts_p)
            for j in range(start, n):
                ts = p_ts[base + j]
                if ts > hi:
                    break
                t = p_eid[base + j]
                if in_batch[t] or e_amt[t] < min_amt:
                    continue
                if ts == ts_p and not tx_less(tx_buf, tx_off, p, t):
                    continue
                b = e_dst[t]
                if b == a:
                    continue
                budget = L - 1 - fd
                if budget < 0:
                    continue
                kb = budget if budget < done_b else done_b
                reach = lab_b[kb, b]
                if reach == NEG or (strict and reach < ts - window):
                    continue
                out = _grow(out, n_out + 1)
                out[n_out] = t
                n_out += 1
        _clear(lab_f, touched_f, nt_f, L - 1, INF)
        _clear(lab_b, touched_b, nt_b, L - 1, NEG)
    return out[:n_out].copy()

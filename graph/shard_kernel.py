"""The compiled half of the sharded search that runs on a `GraphShard`: label rounds over its own lists.

Across shards an account is named by a 64-bit id, `gid`: its owning shard in
the top 16 bits, the low 48 bits of the FNV-1a hash of its name's UTF-8 bytes
below (0 mapped to 1), computed the same way by the driver (from Arrow string
buffers) and by each shard (from its interned names), so label entries carry 8
bytes per account and never a string. Two names may share a gid, but only
names owned by the same shard (the owner is part of it, so the entry for a gid
always goes to the shard holding every account under it): that shard chains
every account it owns under the gid, and an entry for it expands all of them.
That merges their labels, which only makes labels more permissive (they are
necessary conditions: a merged label can never prove "no ring" where a ring
exists), so a collision costs work, never a ring.

A round's request is arrays of entries `(job, tag, gid, label, bound)`; the
tag says the direction (bit 0: 0 = forward over the out-list, 1 = backward
over the in-list), whether to return the edges scanned (bit 1: a gather) and
whether the hub guard applies (bit 2). Forward, an entry scans the account's
out-edges with `label <= ts <= bound`; backward, its in-edges with
`bound <= ts <= label`. Each edge yields the peer a new label: its `ts` under
strict order, the entry's label under `order="none"` (there only
reachability counts). The shard keeps the best label per (job, direction,
state, peer) — min forward, max backward — and answers those (`dir`: the
direction, plus 2 for the post-wrap state).

A wrap entry (bit 3, label_rounds' WRAP jobs, strict order only) belongs to
the search for the rings a late payment p = x -> y closes at a newer trigger
T: around the ring from y, payments after p up to T (pre-wrap, state 0),
then from T's dst back to x payments no older than ts(T) - window (post-wrap,
bit 4 set). Forward, a pre-wrap entry (its bound ts(p) + window) gives each
edge's dst a pre-wrap label (the edge's ts) and, the edge taken as T, a
post-wrap one (ts - window: the earliest the next payment may be); a
post-wrap entry's bound is ts(p). Backward, a post-wrap entry (its bound
ts(p) - window) scans its in-edges up to label + window: those up to the
label give post-wrap labels, those from ts(p) on, taken as T, pre-wrap ones;
a pre-wrap entry's bound is ts(p). Payments at exactly
the trigger's time are all let through: the driver does not send tx ids,
and a larger label set is still a valid necessary condition (the exact
search on the gathered edges applies the `(ts, tx_id)` rule).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernel import DUPLICATE, EMPTY, NEW, SEG_HEAD, SEG_LEN, fnv1a, grown, list_range, live_len

POST_TAG = 16
WRAP_TAG = 8
GUARD_TAG = 4
COLLECT_TAG = 2
BACKWARD_TAG = 1


@njit(cache=True)
def mix(k1, k2):
    """A 64-bit hash of a (uint64, int64) key pair (splitmix64's finaliser)."""
    z = k1 ^ (np.uint64(k2) * np.uint64(0x9E3779B97F4A7C15))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


GID_MASK = np.uint64(2**48 - 1)  # the hash bits a gid keeps; a narrower mask forces collisions (tests)


@njit(cache=True)
def gid_of_bytes(buf, start, stop, mask, owner):
    g = (fnv1a(buf, start, stop) & mask & GID_MASK) | (np.uint64(owner) << np.uint64(48))
    return g if g != np.uint64(0) else np.uint64(1)


# ---- a (uint64, int64) -> slot map with linear probing --------------------------------------------------


@njit(cache=True)
def map_probe(k1s, k2s, k1, k2):
    """The slot holding the key, else the empty slot where it would go. `k2s[slot] == -1` marks an empty slot."""
    mask = np.uint64(k2s.shape[0] - 1)
    slot = mix(k1, k2) & mask
    while k2s[slot] != -1 and not (k2s[slot] == k2 and k1s[slot] == k1):
        slot = (slot + np.uint64(1)) & mask
    return np.int64(slot)


@njit(cache=True)
def map_find(k1s, k2s, k1, k2):
    """Slot of the key, or -1."""
    slot = map_probe(k1s, k2s, k1, k2)
    return slot if k2s[slot] != -1 else np.int64(-1)


@njit(cache=True)
def map_slot(k1s, k2s, k1, k2):
    """Slot of the key, claiming an empty one if absent: (slot, is_new). The caller keeps the load under 1/2."""
    slot = map_probe(k1s, k2s, k1, k2)
    if k2s[slot] != -1:
        return slot, False
    k1s[slot] = k1
    k2s[slot] = k2
    return slot, True


def new_map(capacity: int) -> tuple[np.ndarray, np.ndarray]:
    size = 64
    while size < 2 * capacity:
        size *= 2
    return np.zeros(size, np.uint64), np.full(size, -1, np.int64)


# ---- the shard's account index -----------------------------------------------------------------------------


@njit(cache=True)
def _chain(g_tab, gid_of, g_next, a):
    """File owned account a under its gid: a table slot for the first name, a chain for the rest."""
    mask = np.uint64(g_tab.shape[0] - 1)
    g = gid_of[a]
    slot = g & mask
    while True:
        b = g_tab[slot]
        if b == EMPTY:
            g_tab[slot] = a
            return
        if gid_of[b] == g:  # another owned name with this gid
            while g_next[b] >= 0:
                b = g_next[b]
            g_next[b] = a
            return
        slot = (slot + np.uint64(1)) & mask


@njit(cache=True)
def index_accounts(start, stop, owned, gid_of, g_tab, g_next):
    """File the owned accounts of [start, stop) under their gids (the caller keeps `g_tab` under half full)."""
    for a in range(start, stop):
        g_next[a] = -1
        if owned[a]:
            _chain(g_tab, gid_of, g_next, a)


@njit(cache=True)
def rebuild_gid_table(g_tab, gid_of, g_next, owned, count):
    """File every owned account of [0, count) again, in a new (bigger) table."""
    g_tab[:] = EMPTY
    for a in range(count):
        g_next[a] = -1
    for a in range(count):
        if owned[a]:
            _chain(g_tab, gid_of, g_next, a)


@njit(cache=True)
def owned_account(g_tab, gid_of, g):
    """The first owned account with this gid, or -1 (the rest follow in `g_next`)."""
    mask = np.uint64(g_tab.shape[0] - 1)
    slot = g & mask
    while True:
        b = g_tab[slot]
        if b == EMPTY:
            return -1
        if gid_of[b] == g:
            return b
        slot = (slot + np.uint64(1)) & mask


# ---- one round on a shard ----------------------------------------------------------------------------------


@njit(cache=True)
def first_layer(rows, status, eids, replay, window, min_amt, cheap, guard, me, owner_of, gid_of, e_hot, e_amt,
                a_seg):
    """Entries for the first layer of each new payment's search whose root list this shard owns and that has
    at most `cheap` entries (`label_rounds.FirstLayer`): forward from the payment's dst, backward from its src.

    Returns the entries (job = batch row) and, per row, bit 0/1: forward/backward entry made.
    """
    n = rows.shape[0]
    job = np.empty(2 * n, np.int32)
    tag = np.empty(2 * n, np.int8)
    gid = np.empty(2 * n, np.uint64)
    label = np.empty(2 * n, np.int64)
    bound = np.empty(2 * n, np.int64)
    flags = np.zeros(n, np.int8)
    extra = GUARD_TAG if guard else 0
    k = 0
    for i in range(n):
        if not (status[i] == NEW or (replay and status[i] == DUPLICATE)):
            continue
        e = eids[i]
        r = e_hot[e]
        x, y = r.src, r.dst
        if x == y or e_amt[e] < min_amt:
            continue
        ts = r.ts
        # list lengths here count evicted entries not yet dropped: a cost hint, no more
        if owner_of[y] == me and a_seg[y, 0, SEG_LEN] - a_seg[y, 0, SEG_HEAD] <= cheap:
            job[k], tag[k], gid[k], label[k], bound[k] = rows[i], extra, gid_of[y], ts - window, ts
            flags[i] |= 1
            k += 1
        if owner_of[x] == me and a_seg[x, 1, SEG_LEN] - a_seg[x, 1, SEG_HEAD] <= cheap:
            job[k], tag[k], gid[k], label[k], bound[k] = rows[i], extra | BACKWARD_TAG, gid_of[x], ts, ts - window
            flags[i] |= 2
            k += 1
    return job[:k], tag[:k], gid[:k], label[:k], bound[:k], flags


@njit(cache=True)
def ran_out(rows, flags, job, dirs, hubs):
    """Bits 2/3 (4, 8) for the rows (sorted) whose first forward/backward layer was grown (`flags` bit 0/1) and
    found nothing: no label of that direction (`job`, `dirs` of `expand`'s answer) and no hub skipped (`hubs`:
    job * 2 + direction)."""
    n = rows.shape[0]
    found = np.zeros((2, n), np.bool_)
    for i in range(job.shape[0]):
        found[dirs[i] & 1, np.searchsorted(rows, job[i])] = True
    for i in range(hubs.shape[0]):
        found[hubs[i] % 2, np.searchsorted(rows, hubs[i] // 2)] = True
    out = np.zeros(n, np.int8)
    for i in range(n):
        if (flags[i] & 1) != 0 and not found[0, i]:
            out[i] |= 4
        if (flags[i] & 2) != 0 and not found[1, i]:
            out[i] |= 8
    return out


@njit(cache=True)
def list_lengths(eids, me, owner_of, e_hot, a_seg):
    """Rows x [src out, src in, dst out, dst in] list lengths of the stored rows' ends this shard owns (-1
    elsewhere), evicted entries not yet dropped included: cost hints."""
    n = eids.shape[0]
    out = np.full((4, n), -1, np.int32)
    for i in range(n):
        e = eids[i]
        if e < 0:
            continue
        r = e_hot[e]
        x, y = r.src, r.dst
        if owner_of[x] == me:
            for d in range(2):
                out[d, i] = a_seg[x, d, SEG_LEN] - a_seg[x, d, SEG_HEAD]
        if owner_of[y] == me:
            for d in range(2):
                out[2 + d, i] = a_seg[y, d, SEG_LEN] - a_seg[y, d, SEG_HEAD]
    return out


@njit(cache=True)
def expand(job, tag, gid, label, bound, strict, window, min_amt, max_degree, me, g_tab, g_next, gid_of, owner_of,
           a_seg, p_eid, e_hot, e_amt, horizon):
    """Expand each entry over the lists of the accounts this shard owns under its gid.

    Returns (job, direction (+ 2: post-wrap), gid, owner, value, degree) of the best new label per
    (job, direction, state, peer) — `degree` is the peer's list length in that direction
    when this shard owns the peer (-1 otherwise: the driver estimates) — the
    (job * 2 + direction) codes that met a hub under the guard, and the edge ids
    scanned by collecting entries (repeats possible). Edges older than `horizon`
    are evicted: no scan sees them (`kernel.list_range` below it would).
    """
    n = job.shape[0]
    size = 1024
    while size < 2 * n:  # sized for about one label per entry: fewer rehashes (measured 25-30% less time than
        size *= 2        # 1024 always; 8n was slower: zeroing and scanning the slots)
    k1s, k2s = np.zeros(size, np.uint64), np.full(size, -1, np.int64)
    vals = np.empty(size, np.int64)
    peers = np.empty(size, np.int64)
    used = 0
    hubs = np.empty(16, np.int64)
    n_hubs = 0
    edges = np.empty(64, np.int64)
    n_edges = 0
    for i in range(n):
        d = tag[i] & BACKWARD_TAG
        collect = (tag[i] & COLLECT_TAG) != 0
        guard = (tag[i] & GUARD_TAG) != 0 and max_degree >= 0
        wrap = (tag[i] & WRAP_TAG) != 0
        post = (tag[i] & POST_TAG) != 0
        key = job[i] * 4 + d
        lo, hi = (label[i], bound[i]) if d == 0 else (bound[i], label[i])
        if wrap and d == 1 and post:  # also the in-edges that may be the trigger T: from ts(p) on
            hi = label[i] + window
        x = owned_account(g_tab, gid_of, gid[i])
        while x >= 0:
            if guard and live_len(a_seg, p_eid, e_hot, x, d, horizon) > max_degree:
                hubs = grown(hubs, n_hubs + 1)
                hubs[n_hubs] = job[i] * 2 + d
                n_hubs += 1
                x = g_next[x]
                continue
            start, stop = list_range(a_seg, p_eid, e_hot, x, d, max(lo, horizon), hi)
            for k in range(start, stop):
                e = p_eid[k]
                r = e_hot[e]
                ts = r.ts
                if e_amt[e] < min_amt:
                    continue
                if collect:
                    edges = grown(edges, n_edges + 1)
                    edges[n_edges] = e
                    n_edges += 1
                y = r.dst if d == 0 else r.src
                value = ts if strict else label[i]
                if not wrap:
                    k1s, k2s, vals, peers, used = _keep(k1s, k2s, vals, peers, used, y, key, value, d)
                elif d == 0:
                    k1s, k2s, vals, peers, used = _keep(k1s, k2s, vals, peers, used, y, key + 2, ts - window if not post
                                                        else ts, d)
                    if not post:
                        k1s, k2s, vals, peers, used = _keep(k1s, k2s, vals, peers, used, y, key, ts, d)
                elif not post:
                    k1s, k2s, vals, peers, used = _keep(k1s, k2s, vals, peers, used, y, key, ts, d)
                else:
                    if ts <= label[i]:
                        k1s, k2s, vals, peers, used = _keep(k1s, k2s, vals, peers, used, y, key + 2, ts, d)
                    if ts >= bound[i] + window:
                        k1s, k2s, vals, peers, used = _keep(k1s, k2s, vals, peers, used, y, key, ts, d)
            x = g_next[x]
    out_job = np.empty(used, np.int32)
    out_dir = np.empty(used, np.int8)
    out_gid = np.empty(used, np.uint64)
    out_owner = np.empty(used, np.int16)
    out_val = np.empty(used, np.int64)
    out_deg = np.empty(used, np.int32)
    for slot in range(k2s.shape[0]):
        if k2s[slot] == -1:
            continue
        j = peers[slot]
        y = np.int64(k1s[slot])
        d = k2s[slot] & 1
        out_job[j] = k2s[slot] >> 2
        out_dir[j] = k2s[slot] & 3
        out_gid[j] = gid_of[y]
        out_owner[j] = owner_of[y]
        out_val[j] = vals[slot]
        out_deg[j] = a_seg[y, d, SEG_LEN] - a_seg[y, d, SEG_HEAD] if owner_of[y] == me else -1  # a cost hint
    return out_job, out_dir, out_gid, out_owner, out_val, out_deg, hubs[:n_hubs].copy(), edges[:n_edges].copy()


@njit(cache=True)
def _keep(k1s, k2s, vals, peers, used, y, key, value, d):
    """Keep the best label of peer y under key (job * 4 + state * 2 + direction): min forward, max backward."""
    if 2 * (used + 1) > k2s.shape[0]:
        k1s, k2s, vals, peers = _rehash(k1s, k2s, vals, peers)
    slot, new = map_slot(k1s, k2s, np.uint64(y), key)
    if new:
        vals[slot] = value
        peers[slot] = used
        used += 1
    elif (d == 0 and value < vals[slot]) or (d == 1 and value > vals[slot]):
        vals[slot] = value
    return k1s, k2s, vals, peers, used


@njit(cache=True)
def _rehash(k1s, k2s, vals, peers):
    size = 2 * k2s.shape[0]
    n1, n2 = np.zeros(size, np.uint64), np.full(size, -1, np.int64)
    nv, npeer = np.empty(size, np.int64), np.empty(size, np.int64)
    for s in range(k2s.shape[0]):
        if k2s[s] != -1:
            slot, _ = map_slot(n1, n2, k1s[s], k2s[s])
            nv[slot] = vals[s]
            npeer[slot] = peers[s]
    return n1, n2, nv, npeer


@njit(cache=True)
def late_scan(job, gid, start, stop, fd, open_, strict, window, max_hops, min_amt, join_k1, join_k2, join_val,
              join_hop, g_tab, g_next, gid_of, a_seg, p_eid, e_hot, e_amt, horizon):
    """Older payments T = a -> b that may close a ring through a late payment p (`kernel.late_candidates`).

    Entry i: a forward label of p's job at account `gid` (a), first reached in
    `fd` hops; T leaves a at a time in [start, stop]. T is a candidate when b
    carries a backward label of the same job (`join_*`, a map keyed (b's gid,
    job)) reached in at most `max_hops - 2 - fd` hops and, under strict order,
    no earlier than ts(T) - window; `open_[i]`: no join (the job's forward side
    alone, label_rounds' first look). Returns (job, edge id) per candidate.
    """
    L = max_hops - 1
    out_job = np.empty(16, np.int64)
    out_edge = np.empty(16, np.int64)
    n_out = 0
    for i in range(job.shape[0]):
        budget = L - 1 - fd[i]
        if budget < 0:
            continue
        a = owned_account(g_tab, gid_of, gid[i])
        while a >= 0:
            first, last = list_range(a_seg, p_eid, e_hot, a, 0, max(start[i], horizon), stop[i])
            for k in range(first, last):
                t = p_eid[k]
                ts = e_hot[t].ts
                if e_amt[t] < min_amt:
                    continue
                b = e_hot[t].dst
                if b == a:
                    continue
                if not open_[i]:
                    slot = map_find(join_k1, join_k2, gid_of[b], job[i])
                    if slot < 0 or join_hop[slot] > budget:
                        continue
                    if strict and join_val[slot] < ts - window:
                        continue
                out_job = grown(out_job, n_out + 1)
                out_edge = grown(out_edge, n_out + 1)
                out_job[n_out] = job[i]
                out_edge[n_out] = t
                n_out += 1
            a = g_next[a]
    return out_job[:n_out].copy(), out_edge[:n_out].copy()


@njit(cache=True)
def fill_map(k1, k2, vals, hops, size):
    """A map of (k1, k2) -> (val, hop), for `late_scan`'s join."""
    k1s, k2s = np.zeros(size, np.uint64), np.full(size, -1, np.int64)
    mv, mh = np.empty(size, np.int64), np.empty(size, np.int64)
    for i in range(k1.shape[0]):
        slot, _ = map_slot(k1s, k2s, k1[i], k2[i])
        mv[slot] = vals[i]
        mh[slot] = hops[i]
    return k1s, k2s, mv, mh


# ---- ownership: crc32 of the name, as `zlib.crc32` -----------------------------------------------------------


def _crc_table() -> np.ndarray:
    table = np.empty(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else c >> 1
        table[i] = c
    return table


CRC_TABLE = _crc_table()


@njit(cache=True)
def owners(buf, off, num_shards, table, gid_mask):
    """`zlib.crc32(name) % num_shards` and the gid of every string of an Arrow string column."""
    n = off.shape[0] - 1
    shard = np.empty(n, np.int16)
    gid = np.empty(n, np.uint64)
    for i in range(n):
        c = np.uint32(0xFFFFFFFF)
        for k in range(off[i], off[i + 1]):
            c = table[(c ^ np.uint32(buf[k])) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
        shard[i] = (c ^ np.uint32(0xFFFFFFFF)) % np.uint32(num_shards)
        gid[i] = gid_of_bytes(buf, off[i], off[i + 1], gid_mask, shard[i])
    return shard, gid

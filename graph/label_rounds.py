"""The driver's half of the sharded search: per-payment label jobs, advanced in rounds over the shards.

`ShardedRingGraph` (sharded.py) stores a batch on the shards, then runs this
state machine: each round it sends every shard the frontier entries of the
accounts it owns (`LabelRequest`, arrays), the shards expand them over their
lists (shard_kernel.py) and answer new labels (`LabelReply`); the driver keeps
the best label per (job, direction, account) and forms the next frontier from
the labels that improved. One call per shard per round, for the whole batch.

Jobs (one per payment and purpose):
- SEARCH, per new payment `u -> v` (its trigger search): forward labels from
  v (earliest arrival, times in [ts - window, ts]) and backward labels from u
  (latest departure), growing, per job and round, the side whose frontier has
  fewer list entries to scan (both when the other is cheap too, and, cheapest
  first, while a round's `BOTH_SIDES_BUDGET` of list entries lasts: a round
  trip costs more than scanning a few thousand entries, and it is the few
  searches beside a hub, growing their cheap side one layer a round, that
  kept a batch going for 5 rounds), until the depths add up to `max_hops - 1`
  or a side runs out. The meet test (some account with forward label <=
  backward label) runs on every improvement: no meet, no ring — that settles
  almost every payment with labels alone. A job that meets becomes a survivor
  and gets a GATHER job.
- GATHER, per survivor (and per late candidate below): both sides every round,
  forward `ceil((max_hops-1)/2)` and backward `floor((max_hops-1)/2)` layers,
  with the edges scanned shipped back. Every walk of at most `max_hops - 1`
  witnesses from v to u (so every ring edge, with all its parallel edges) has
  each edge within reach of one half, so the exact search (`find_rings`) on
  the gathered edges finds the full graph's rings with their canonical
  witnesses. The hub guard does not apply to a gather (the exact search marks
  hubs itself): which walks certify an account depends on lists the guard
  would not expand.
- WRAP, per new payment `p = x -> y` older than the newest stored before the
  batch (strict order): may p lie on a ring whose trigger T is newer? Read
  from y, such a ring has payments after p up to T (pre-wrap), then, from T's
  dst back to x, payments no older than ts(T) - window (post-wrap). So labels
  carry a state: forward from y pre-wrap (earliest arrival, times in
  [ts(p), ts(p) + window]) and, past an edge taken as T, post-wrap
  (ts(T) - window, then arrivals up to ts(p)); backward from x post-wrap
  (latest departure, times in [ts(p) - window, ts(p)]) and, past an in-edge
  from ts(p) on taken as T, pre-wrap. Any split of such a ring into a forward
  prefix and a backward suffix meets in one account and state, so SEARCH's
  side choice, meet test and stops apply unchanged, and a side that runs out
  proves p closes no ring at a newer trigger. The cheap side settles almost
  every late payment in a round or two (few payments after p when it is a
  little late; few behind it on a sparse stream), where growing one side
  in full cost most of the sharded search's work on interleaved partitions;
  one whose src has no in-list or dst no out-list is settled before any
  round (sharded.py). A WRAP job that meets gets a LATE job.
- LATE, per WRAP job that met (under `order="none"`, per late payment):
  `kernel.late_candidates` spread over the shards — forward labels from y
  and backward from x, `max_hops - 2` layers each, then a scan of the
  out-lists of the forward-labelled accounts for newer payments T whose
  rings could run through p (`shard_kernel.late_scan`), joined with the
  backward labels; each candidate gets a GATHER job of its own, so its
  search sees all its rings. Under `order="none"` forward first, as in
  process: an open scan (no join) follows the forward side, and only a job
  whose open scan finds a candidate grows its backward side and scans again
  with the join.

Label sets here are supersets of the in-process ones (no tx-id tie-break at
the trigger's time, gid collisions merge accounts): still necessary
conditions, so nothing is missed; the exact search decides.

Frontier costs come from list lengths: exact where the answering shard owns
the peer or the batch's apply reported it, otherwise from `DegreeCache`
(lengths seen earlier; a default for strangers). They steer work only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from numba import njit

from .pickling import ArrayRecord
from .shard_kernel import BACKWARD_TAG, COLLECT_TAG, GUARD_TAG, POST_TAG, WRAP_TAG, map_find, map_slot, new_map

SEARCH, GATHER, LATE, WRAP = 0, 1, 2, 3
ACTIVE, MET, SCAN, DONE = 0, 1, 2, 3
DEFAULT_DEGREE = 2  # assumed list length of an account no shard has reported yet
BOTH_SIDES_BELOW = 16  # a search grows both sides in one round when the dearer one scans at most this many entries
# candidates a late job's open scan may find and have all gathered (more: filter them with backward labels).
# 0, unlike in process (store.LATE_UNFILTERED): here each candidate costs a GATHER job (~600 list entries on
# the bank stream), far more than the backward side that filters it; at 64 a partitioned stream cost 30x more.
LATE_UNFILTERED = 0
BOTH_SIDES_BUDGET = 4096  # list entries a round may spend growing the dearer sides of searches too, cheapest first


@dataclass
class LateScans(ArrayRecord):
    """A shard's late scans for one round (`shard_kernel.late_scan`): the forward labels to scan from, and the
    backward labels their finds join."""

    job: np.ndarray
    gid: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    fd: np.ndarray
    open_scan: np.ndarray
    join_gid: np.ndarray
    join_job: np.ndarray
    join_val: np.ndarray
    join_hop: np.ndarray

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.job, self.gid, self.start, self.stop, self.fd, self.open_scan,
                                      self.join_gid, self.join_job, self.join_val, self.join_hop))


@dataclass
class LabelRequest(ArrayRecord):
    """One shard's work for one round: entries to expand and, in the rounds that have some, late scans (most
    rounds have none: a request is then five arrays, less to encode and decode on both ends)."""

    job: np.ndarray
    tag: np.ndarray
    gid: np.ndarray
    label: np.ndarray
    bound: np.ndarray
    scans: LateScans | None
    strict: bool
    window: int
    max_hops: int
    min_amount: int
    max_degree: int

    def nbytes(self) -> int:
        return (sum(a.nbytes for a in (self.job, self.tag, self.gid, self.label, self.bound))
                + (self.scans.nbytes() if self.scans is not None else 0))


@dataclass
class Candidates(ArrayRecord):
    """Older payments a late one may complete (`shard_kernel.late_scan`): their rows, the late job each is
    for, and the gid and owner of each one's src and dst."""

    rows: pa.Table
    job: np.ndarray
    src: np.ndarray
    src_owner: np.ndarray
    dst: np.ndarray
    dst_owner: np.ndarray

    def nbytes(self) -> int:
        return self.rows.get_total_buffer_size() + sum(a.nbytes for a in (self.job, self.src, self.src_owner, self.dst,
                                                          self.dst_owner))


@dataclass
class LabelReply(ArrayRecord):
    """A shard's answer: best new labels per (job, direction, peer), hub hits, gathered payments, late candidates."""

    job: np.ndarray
    dir: np.ndarray
    gid: np.ndarray
    owner: np.ndarray
    value: np.ndarray
    degree: np.ndarray
    hubs: np.ndarray
    edges: pa.Table | None = None
    candidates: Candidates | None = None
    seconds: float = 0.0  # the shard's compute time for this call

    def nbytes(self) -> int:
        arrays = (self.job, self.dir, self.gid, self.owner, self.value, self.degree, self.hubs)
        return (sum(a.nbytes for a in arrays) + (self.edges.get_total_buffer_size() if self.edges is not None else 0)
                + (self.candidates.nbytes() if self.candidates is not None else 0))


@dataclass(frozen=True)
class FirstLayer(ArrayRecord):
    """What a shard needs to grow the first layer of each new payment's search while it stores the batch.

    A side whose root list has at most `cheap` entries is grown right there (the
    driver's `plan` would grow it too: it grows both sides when the dearer is
    that cheap); dearer roots wait for the driver's side choice.
    """

    replay: bool
    strict: bool
    window: int
    min_amount: int
    max_degree: int
    cheap: int = 16


class DegreeCache:
    """List lengths the shards reported, by gid and direction: the cost model of the side choice (hints only)."""

    LIMIT = 1 << 22  # entries; past it the cache starts over

    def __init__(self) -> None:
        self._reset(1 << 16)

    def _reset(self, size: int) -> None:
        self.k1, self.k2 = new_map(size // 2)
        self.deg = np.full((2, self.k2.shape[0]), -1, np.int32)
        self.count = 0

    def update(self, gids: np.ndarray, direction: np.ndarray, degrees: np.ndarray) -> None:
        known = degrees >= 0
        if not known.any():
            return
        if 2 * (self.count + int(known.sum())) > self.k2.shape[0]:
            if self.count > self.LIMIT:
                self._reset(1 << 16)
            else:
                self._grow(2 * (self.count + int(known.sum())))
        self.count = _cache_put(self.k1, self.k2, self.deg, gids[known], direction[known], degrees[known],
                                self.count)

    def _grow(self, need: int) -> None:
        old_k1, old_k2, old_deg = self.k1, self.k2, self.deg
        self._reset(need)
        used = old_k2 != -1
        for d in range(2):
            have = used & (old_deg[d] >= 0)
            self.count = _cache_put(self.k1, self.k2, self.deg, old_k1[have], np.full(int(have.sum()), d, np.int8),
                                    old_deg[d][have], self.count)


@njit(cache=True)
def _cache_put(k1, k2, deg, gids, direction, degrees, count):
    for i in range(gids.shape[0]):
        slot, new = map_slot(k1, k2, gids[i], 0)
        if new:
            count += 1
        deg[direction[i], slot] = degrees[i]
    return count


@njit(cache=True)
def _cache_get(k1, k2, deg, g, d, default):
    slot = map_find(k1, k2, g, 0)
    if slot < 0 or deg[d, slot] < 0:
        return default
    return deg[d, slot]


# ---- the driver's state: jobs and labels ------------------------------------------------------------------


@dataclass
class RoundFigures:
    """What one batch's search cost: rounds, bytes each way, and how many jobs of each kind ran."""

    rounds: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    searches: int = 0
    survivors: int = 0
    late: int = 0
    late_met: int = 0  # late payments whose wrap search met: their older triggers are looked for (LATE jobs)
    gathers: int = 0
    gathered_edges: int = 0
    round_bytes: list[int] = field(default_factory=list)  # tables count their buffers (`Table.nbytes` took 14 us)
    call_s: float = 0.0  # wall time of the shard calls (store call and rounds), as the driver waited for them
    shard_s: float = 0.0  # of which the shards computed (per round, the slowest shard)


class LabelRounds:
    """The jobs of one batch and their labels; `plan` the next round, `absorb` its replies, until `plan` is empty."""

    def __init__(self, options, num_shards: int, cache: DegreeCache, expected: int = 1024):
        self.options = options
        self.num_shards = num_shards
        self.cache = cache
        self.hops = options.max_hops - 1  # witnesses per ring at most
        self.strict = options.order == "strict"
        self.window = options.window_ms
        self.guard = options.max_degree is not None
        self.figures = RoundFigures()
        # jobs
        self.n_jobs = 0
        self._jobs(expected + 64)
        # labels: a (gid, job * 2 + direction) map onto dense entries
        self.m1, self.m2 = new_map(4 * expected)
        self.midx = np.empty(self.m2.shape[0], np.int64)
        self.n_entries = 0
        self._entries(4 * expected)
        self.pending = np.empty(0, np.int64)
        self.round = 0
        self.survivors: list[int] = []  # SEARCH jobs that met, in order
        self.gathered: list[pa.Table] = []
        self._seen_candidates: set[str] = set()

    def _jobs(self, capacity: int) -> None:
        old = getattr(self, "kind", None)
        fields1 = {"kind": np.int8, "state": np.int8, "ref": np.int64, "ts": np.int64, "open_scan": np.bool_}
        fields2 = {"hub": np.bool_, "done": np.int32, "limit": np.int32, "bound": np.int64, "root": np.uint64,
                   "root_owner": np.int16, "root_deg": np.int32}
        for name, dtype in fields1.items():
            arr = np.zeros(capacity, dtype)
            if old is not None:
                arr[:self.n_jobs] = getattr(self, name)[:self.n_jobs]
            setattr(self, name, arr)
        for name, dtype in fields2.items():
            arr = np.zeros((2, capacity), dtype)
            if old is not None:
                arr[:, :self.n_jobs] = getattr(self, name)[:, :self.n_jobs]
            setattr(self, name, arr)

    def _entries(self, capacity: int) -> None:
        names = {"e_gid": np.uint64, "e_key": np.int64, "e_val": np.int64, "e_hop": np.int32, "e_owner": np.int16,
                 "e_deg": np.int32, "e_stamp": np.int32}
        for name, dtype in names.items():
            arr = np.zeros(capacity, dtype)
            if hasattr(self, name):
                arr[:self.n_entries] = getattr(self, name)[:self.n_entries]
            setattr(self, name, arr)

    def _room(self, jobs: int, entries: int) -> None:
        if self.n_jobs + jobs > self.kind.shape[0]:
            self._jobs(max(self.n_jobs + jobs, 2 * self.kind.shape[0]))
        need = self.n_entries + entries
        if need > self.e_gid.shape[0]:
            self._entries(max(need, 2 * self.e_gid.shape[0]))
        if 2 * need > self.m2.shape[0]:
            self.m1, self.m2 = new_map(need)
            self.midx = np.empty(self.m2.shape[0], np.int64)
            _reindex(self.m1, self.m2, self.midx, self.e_gid, self.e_key, self.n_entries)

    # ---- jobs in --------------------------------------------------------------------------------------

    def add(self, kind: int, ref: np.ndarray, ts: np.ndarray, u: np.ndarray, u_owner: np.ndarray, u_deg: np.ndarray,
            v: np.ndarray, v_owner: np.ndarray, v_deg: np.ndarray, *, active: np.ndarray | None = None,
            first: np.ndarray | None = None, replies: list[LabelReply] = (), seed: bool = True,
            open_scan: bool = True) -> np.ndarray:
        """New jobs for payments `u -> v` at `ts` (`ref`: what the job belongs to); returns their job ids.

        `u_deg`/`v_deg`: u's in-list and v's out-list lengths where known (-1: ask the cache).
        For LATE and WRAP, u is the late payment's src x and v its dst y; a LATE job
        without `open_scan` grows its backward side from the start. `active`: jobs to
        run (the others are born done); `first[i]` bit 0/1: job i's forward/backward
        first layer was grown when the batch was stored, its labels are in `replies`.
        Without `seed` the jobs get no root labels (the caller gives them labels).
        """
        n = ref.shape[0]
        if n == 0:
            return np.zeros(0, np.int64)
        self._room(n, 2 * n)
        ids = np.arange(self.n_jobs, self.n_jobs + n)
        w = self.window
        self.kind[ids], self.state[ids], self.ref[ids], self.ts[ids] = kind, ACTIVE, ref, ts
        self.open_scan[ids] = kind == LATE and open_scan
        if active is not None:
            self.state[ids[~active]] = DONE
        self.hub[:, ids] = False
        self.done[:, ids] = 0
        if first is not None:
            self.done[0, ids], self.done[1, ids] = first & 1, (first >> 1) & 1
        self.root[0, ids], self.root_owner[0, ids], self.root_deg[0, ids] = v, v_owner, v_deg
        self.root[1, ids], self.root_owner[1, ids], self.root_deg[1, ids] = u, u_owner, u_deg
        if kind == LATE or kind == WRAP:
            f_root = ts if self.strict else ts - w
            b_root = ts if self.strict else ts + w
            self.bound[0, ids], self.bound[1, ids] = ts + w, ts - w
            if kind == WRAP:
                self.limit[:, ids] = self.hops
            else:  # forward first: the backward side waits (limit 0) until the open scan finds a candidate
                self.limit[0, ids], self.limit[1, ids] = self.hops - 1, 0 if open_scan else self.hops - 1
        else:
            f_root, b_root = ts - w, ts
            self.bound[0, ids], self.bound[1, ids] = ts, ts - w
            if kind == GATHER:
                self.limit[0, ids], self.limit[1, ids] = math.ceil(self.hops / 2), self.hops // 2
            else:
                self.limit[:, ids] = self.hops
        self.n_jobs += n
        f_root = np.broadcast_to(np.asarray(f_root, np.int64), (n,))
        b_root = np.broadcast_to(np.asarray(b_root, np.int64), (n,))
        if not seed:
            self.figures.gathers += n
            return ids
        pend = np.empty(2 * n, np.int64)
        self.n_entries, n_pend = _seed(ids, u, u_owner, u_deg, v, v_owner, v_deg, f_root, b_root, kind == SEARCH,
                                       2 if kind == WRAP else 0,
                                       self.m1, self.m2, self.midx, self.e_gid, self.e_key, self.e_val, self.e_hop,
                                       self.e_owner, self.e_deg, self.e_stamp, self.n_entries, pend, self.state,
                                       self.done, self.cache.k1, self.cache.k2, self.cache.deg, DEFAULT_DEGREE)
        self.pending = np.concatenate([self.pending, pend[:n_pend]])
        running = n if active is None else int(np.count_nonzero(active))
        if kind == SEARCH:
            self.figures.searches += running
        elif kind == WRAP or (kind == LATE and open_scan):
            self.figures.late += running
        elif kind == LATE:
            self.figures.late_met += running
        else:
            self.figures.gathers += running
        self._take(list(replies))
        self._settle()
        return ids

    # ---- a round --------------------------------------------------------------------------------------

    def plan(self) -> dict[int, LabelRequest]:
        """Each shard's request for the next round (empty: the search is over)."""
        self._spawn_gathers()
        J = self.n_jobs
        go = np.zeros((2, J), np.bool_)
        n = self.pending.shape[0]
        r_job, r_tag, r_gid = np.empty(n, np.int32), np.empty(n, np.int8), np.empty(n, np.uint64)
        r_label, r_bound, r_owner = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int16)
        carry = np.empty(n, np.int64)
        n_req, n_carry = _plan(self.pending, self.e_gid, self.e_key, self.e_val, self.e_owner, self.e_deg,
                               self.kind, self.state, self.done, self.limit, self.bound, self.ts, self.hops,
                               BOTH_SIDES_BELOW,
                               BOTH_SIDES_BUDGET, self.guard, go, r_job, r_tag, r_gid, r_label, r_bound, r_owner, carry)
        self.pending = carry[:n_carry]
        scans = self._scans()
        if n_req == 0 and scans is None:
            return {}
        self.round += 1
        self.figures.rounds += 1
        o = self.options
        owners = r_owner[:n_req]
        requests = {}
        for shard in range(self.num_shards):
            mine = np.flatnonzero(owners == shard)
            scan = _scan_part(scans, shard)
            if mine.size == 0 and scan is None:
                continue
            requests[shard] = LabelRequest(
                r_job[mine], r_tag[mine], r_gid[mine], r_label[mine], r_bound[mine], scan,
                strict=self.strict, window=self.window, max_hops=o.max_hops, min_amount=o.min_amount_units,
                max_degree=-1 if o.max_degree is None else o.max_degree)
        sent = sum(r.nbytes() for r in requests.values())
        self.figures.bytes_out += sent
        self.figures.round_bytes.append(sent)
        return requests

    def absorb(self, replies: list[LabelReply]) -> None:
        """Take the shards' answers to the last `plan`: labels, hub hits, gathered edges, late candidates."""
        got = sum(r.nbytes() for r in replies)
        self.figures.bytes_in += got
        self.figures.round_bytes[-1] += got
        self.figures.shard_s += max((r.seconds for r in replies), default=0.0)
        self._take(replies)
        self._settle()

    def _take(self, replies: list[LabelReply]) -> None:
        job = np.concatenate([r.job for r in replies]) if replies else np.zeros(0, np.int32)
        if job.size:
            d = np.concatenate([r.dir for r in replies])
            gid = np.concatenate([r.gid for r in replies])
            owner = np.concatenate([r.owner for r in replies])
            value = np.concatenate([r.value for r in replies])
            degree = np.concatenate([r.degree for r in replies])
            self.cache.update(gid, d & 1, degree)  # d: + 2 for the post-wrap state
            self._room(0, job.size)
            pend = np.empty(job.size, np.int64)
            self.n_entries, n_new = _absorb(job, d, gid, owner, value, degree, self.kind, self.state, self.done,
                                            self.m1, self.m2, self.midx, self.e_gid, self.e_key, self.e_val,
                                            self.e_hop, self.e_owner, self.e_deg, self.e_stamp, self.n_entries, pend,
                                            self.round, self.cache.k1, self.cache.k2, self.cache.deg, DEFAULT_DEGREE)
            self.pending = np.concatenate([self.pending, pend[:n_new]])
        hubs = np.concatenate([r.hubs for r in replies]) if replies else np.zeros(0, np.int64)
        if hubs.size:
            self.hub[hubs % 2, hubs // 2] = True
        for reply in replies:
            if reply.edges is not None and reply.edges.num_rows:
                self.gathered.append(reply.edges)
                self.figures.gathered_edges += reply.edges.num_rows
        found = [r.candidates for r in replies if r.candidates is not None]
        if found:
            self._candidates(found[0] if len(found) == 1 else Candidates(
                pa.concat_tables([c.rows for c in found]),
                *(np.concatenate([getattr(c, name) for c in found])
                  for name in ("job", "src", "src_owner", "dst", "dst_owner"))))

    def _settle(self) -> None:
        _settle(self.pending, self.e_key, self.kind, self.state, self.done, self.limit, self.hub, self.hops,
                self.n_jobs)

    def _spawn_gathers(self) -> None:
        """Gather jobs for the searches that met. Without the hub guard a gather starts from the search's
        own labels (the best arrival over at most as many hops as it grew, so every account it reached is
        scanned from a label no later than the gather's own would be): one round when the search grew far
        enough, more otherwise. Under the guard the labels skipped hubs that a gather must not skip, so it
        starts from the roots."""
        met = np.flatnonzero(self.state[:self.n_jobs] == MET)
        if met.size == 0:
            return
        self.state[met] = DONE
        wrapped = met[self.kind[met] == WRAP]
        if wrapped.size:  # a late payment that may close rings at newer triggers: look for them
            self.add(LATE, self.ref[wrapped], self.ts[wrapped], self.root[1, wrapped], self.root_owner[1, wrapped],
                     self.root_deg[1, wrapped], self.root[0, wrapped], self.root_owner[0, wrapped],
                     self.root_deg[0, wrapped], open_scan=False)
            met = met[self.kind[met] == SEARCH]
            if met.size == 0:
                return
        self.survivors.extend(met.tolist())
        self.figures.survivors += met.size
        roots = (self.root[1, met], self.root_owner[1, met], self.root_deg[1, met], self.root[0, met],
                 self.root_owner[0, met], self.root_deg[0, met])
        if self.guard:
            self.add(GATHER, np.full(met.size, -1, np.int64), self.ts[met], *roots)
            return
        ids = self.add(GATHER, np.full(met.size, -1, np.int64), self.ts[met], *roots, seed=False)
        self.done[:, ids] = np.minimum(self.done[:, met], self.limit[:, ids] - 1)
        target = np.full(self.n_jobs, -1, np.int64)
        target[met] = ids
        copies = int(np.count_nonzero(target[self.e_key[:self.n_entries] >> 2] >= 0))
        self._room(0, copies)
        pend = np.empty(copies, np.int64)
        self.n_entries, n_pend = _copy_labels(target, self.n_entries, self.m1, self.m2, self.midx, self.e_gid,
                                              self.e_key, self.e_val, self.e_hop, self.e_owner, self.e_deg,
                                              self.e_stamp, self.done, pend)
        self.pending = np.concatenate([self.pending, pend[:n_pend]])
        self._settle()

    def _scans(self) -> tuple | None:
        """Scan entries for LATE jobs whose labels are complete (they are then done)."""
        ready = np.flatnonzero(self.state[:self.n_jobs] == SCAN)
        if ready.size == 0:
            return None
        self.state[ready] = DONE
        flag = np.zeros(self.n_jobs, np.bool_)
        flag[ready] = True
        fwd, bwd = _late_labels(flag, self.e_key, self.n_entries)
        bwd = bwd[~self.open_scan[self.e_key[bwd] >> 2]]  # an open scan joins nothing
        jobs = self.e_key[fwd] >> 2
        start = self.e_val[fwd] if self.strict else self.ts[jobs]
        return (jobs.astype(np.int32), self.e_gid[fwd], start, self.ts[jobs] + self.window,
                self.e_hop[fwd], self.open_scan[jobs], self.e_owner[fwd], self.e_gid[bwd], self.e_key[bwd] >> 2,
                self.e_val[bwd], self.e_hop[bwd])

    def _candidates(self, found: Candidates) -> None:
        """Older payments that may close a ring through a late one: keep their rows, gather their neighbourhoods.

        A late job's first scan is open (forward labels only, as `kernel.late_candidates`): they see only
        payments after the late one, few when it is a little late. At most `LATE_UNFILTERED` candidates are
        all gathered; more are dropped and the job grows its backward side (the whole window behind the late
        payment, the dear part) to filter them in a second scan.
        """
        counts = np.bincount(found.job, minlength=self.n_jobs)
        reopen = np.flatnonzero((counts > LATE_UNFILTERED) & self.open_scan[:self.n_jobs])
        if reopen.size:
            self._filter_late(reopen)
            keep_rows = np.flatnonzero(~np.isin(found.job, reopen))
            found = Candidates(found.rows.take(keep_rows), *(getattr(found, name)[keep_rows]
                                                             for name in ("job", "src", "src_owner", "dst",
                                                                          "dst_owner")))
        tx = found.rows.column("tx_id").to_pylist()
        keep = np.array([i for i, t in enumerate(tx) if t not in self._seen_candidates], np.int64)
        if keep.size == 0:
            return
        self._seen_candidates.update(tx[i] for i in keep.tolist())
        rows = found.rows.take(keep)
        self.gathered.append(rows)
        none = np.full(keep.size, -1, np.int32)
        self.add(GATHER, np.full(keep.size, -1, np.int64), rows.column("ts").to_numpy(), found.src[keep],
                 found.src_owner[keep], none, found.dst[keep], found.dst_owner[keep], none)

    def _filter_late(self, jobs: np.ndarray) -> None:
        """Late jobs whose open scan found a candidate: grow the backward side from the root, scan again."""
        self.open_scan[jobs] = False
        self.state[jobs] = ACTIVE
        self.limit[1, jobs] = self.hops - 1
        self.pending = np.concatenate([self.pending, _entries_of(self.m1, self.m2, self.midx, self.root[1, jobs],
                                                                 4 * jobs + 1)])

    def count_store_call(self, sent: int, got: int, seconds: float) -> None:
        """The batch's store call (which grew the first layers) is a round too; `seconds`: the slowest shard's."""
        self.figures.rounds += 1
        self.figures.shard_s += seconds
        self.figures.bytes_out += sent
        self.figures.bytes_in += got
        self.figures.round_bytes.insert(0, sent + got)

    # ---- results ----------------------------------------------------------------------------------------

    def cut_refs(self) -> np.ndarray:
        """The `ref` (batch row) of every SEARCH job whose labels skipped a hub."""
        jobs = np.flatnonzero(self.hub[:, :self.n_jobs].any(axis=0) & (self.kind[:self.n_jobs] == SEARCH))
        return self.ref[jobs]

    def survivor_refs(self) -> np.ndarray:
        return self.ref[np.array(self.survivors, np.int64)]

    def late_refs(self) -> np.ndarray:
        """The `ref` (batch row) of every late payment that got a LATE job: under strict order those whose wrap
        search met; the others lie on no ring with a newer trigger."""
        return self.ref[:self.n_jobs][self.kind[:self.n_jobs] == LATE]


def _scan_part(scans: tuple | None, shard: int) -> LateScans | None:
    """The scan entries of one shard, with every backward label they may join."""
    if scans is None:
        return None
    job, gid, start, stop, fd, open_, owner, *join = scans
    mine = np.flatnonzero(owner == shard)
    if mine.size == 0:
        return None
    return LateScans(job[mine], gid[mine], start[mine], stop[mine], fd[mine], open_[mine], *join)


# ---- compiled steps ---------------------------------------------------------------------------------------


@njit(cache=True)
def _reindex(m1, m2, midx, e_gid, e_key, n):
    for e in range(n):
        slot, _ = map_slot(m1, m2, e_gid[e], e_key[e])
        midx[slot] = e


@njit(cache=True)
def _put(m1, m2, midx, e_gid, e_key, e_val, e_hop, e_owner, e_deg, e_stamp, n, g, key, value, hop, owner, deg,
         forward):
    """Record a label; returns (entry, n, improved)."""
    slot, new = map_slot(m1, m2, g, key)
    if new:
        midx[slot] = n
        e_gid[n], e_key[n], e_val[n], e_hop[n], e_owner[n], e_deg[n], e_stamp[n] = g, key, value, hop, owner, deg, -1
        return n, n + 1, True
    e = midx[slot]
    if (forward and value < e_val[e]) or (not forward and value > e_val[e]):
        e_val[e] = value
        return e, n, True
    return e, n, False


@njit(cache=True)
def _meets(m1, m2, midx, e_val, g, key, value):
    """Does the label just improved (key: job * 4 + state * 2 + direction) meet the other side's label of the
    same account and state (forward <= backward)?"""
    slot = map_find(m1, m2, g, key ^ 1)
    if slot < 0:
        return False
    other = e_val[midx[slot]]
    return value <= other if (key & 1) == 0 else other <= value


@njit(cache=True)
def _entries_of(m1, m2, midx, gids, keys):
    """The entries of these (gid, key) labels (all present)."""
    out = np.empty(gids.shape[0], np.int64)
    for i in range(gids.shape[0]):
        out[i] = midx[map_find(m1, m2, gids[i], keys[i])]
    return out


@njit(cache=True)
def _seed(ids, u, u_owner, u_deg, v, v_owner, v_deg, f_root, b_root, search, b_state, m1, m2, midx, e_gid, e_key,
          e_val, e_hop, e_owner, e_deg, e_stamp, n, pend, state, done, c1, c2, cdeg, default):
    """Root labels of new jobs (pending unless that side's first layer is already grown); returns (n, pending).
    `b_state`: 2 when the backward root is in the post-wrap state (WRAP jobs)."""
    n_pend = 0
    for i in range(ids.shape[0]):
        j = ids[i]
        if state[j] != ACTIVE:
            continue
        dv = v_deg[i] if v_deg[i] >= 0 else _cache_get(c1, c2, cdeg, v[i], 0, default)
        du = u_deg[i] if u_deg[i] >= 0 else _cache_get(c1, c2, cdeg, u[i], 1, default)
        e, n, _ = _put(m1, m2, midx, e_gid, e_key, e_val, e_hop, e_owner, e_deg, e_stamp, n, v[i], j * 4, f_root[i],
                       0, v_owner[i], dv, True)
        if done[0, j] == 0:
            pend[n_pend] = e
            n_pend += 1
        e, n, _ = _put(m1, m2, midx, e_gid, e_key, e_val, e_hop, e_owner, e_deg, e_stamp, n, u[i], j * 4 + 1 + b_state,
                       b_root[i], 0, u_owner[i], du, False)
        if done[1, j] == 0:
            pend[n_pend] = e
            n_pend += 1
        if search and _meets(m1, m2, midx, e_val, u[i], j * 4 + 1, b_root[i]):
            state[j] = MET
    return n, n_pend


@njit(cache=True)
def _plan(pending, e_gid, e_key, e_val, e_owner, e_deg, kind, state, done, limit, bound, ts, hops, both_below, budget,
          guard, go, r_job, r_tag, r_gid, r_label, r_bound, r_owner, carry):
    J = go.shape[1]
    cost = np.zeros((2, J), np.int64)
    count = np.zeros((2, J), np.int64)
    for i in range(pending.shape[0]):
        e = pending[i]
        j, d = e_key[e] >> 2, e_key[e] & 1
        if state[j] == ACTIVE:
            cost[d, j] += e_deg[e]
            count[d, j] += 1
    # searches that could grow both sides but the cost rule grows one, and what their dearer side costs
    both_j = np.empty(J, np.int64)
    both_cost = np.empty(J, np.int64)
    n_both = 0
    for j in range(J):
        if state[j] != ACTIVE:
            continue
        if kind[j] == SEARCH or kind[j] == WRAP:
            if done[0, j] + done[1, j] >= hops:
                continue
            if count[0, j] == 0 or count[1, j] == 0:  # one side emptied by the hub guard: the other grows alone
                go[0, j] = count[0, j] > 0
                go[1, j] = count[1, j] > 0
                continue
            f = cost[0, j] <= cost[1, j]
            cheap = min(cost[0, j], cost[1, j])
            dear = max(cost[0, j], cost[1, j])
            both = done[0, j] + done[1, j] + 2 <= hops and dear <= max(cheap, both_below)
            go[0, j] = f or both
            go[1, j] = (not f) or both
            if not both and done[0, j] + done[1, j] + 2 <= hops:
                both_j[n_both] = j
                both_cost[n_both] = dear
                n_both += 1
        else:
            for d in range(2):
                go[d, j] = count[d, j] > 0 and done[d, j] < limit[d, j]
    for k in np.argsort(both_cost[:n_both], kind="mergesort"):  # the round's budget, cheapest first
        if both_cost[k] > budget:
            break
        budget -= both_cost[k]
        go[0, both_j[k]] = True
        go[1, both_j[k]] = True
    n_req = 0
    n_carry = 0
    for i in range(pending.shape[0]):
        e = pending[i]
        j, d, s = e_key[e] >> 2, e_key[e] & 1, (e_key[e] >> 1) & 1
        if state[j] != ACTIVE:
            continue
        if go[d, j]:
            tag = d
            b = bound[d, j]
            if kind[j] == GATHER:
                tag |= COLLECT_TAG
            elif kind[j] == SEARCH and guard:
                tag |= GUARD_TAG
            elif kind[j] == WRAP:
                tag |= WRAP_TAG | (POST_TAG if s else 0)
                if s != d:  # forward post-wrap, backward pre-wrap: bounded by the late payment's time
                    b = ts[j]
            r_job[n_req], r_tag[n_req], r_gid[n_req] = j, tag, e_gid[e]
            r_label[n_req], r_bound[n_req], r_owner[n_req] = e_val[e], b, e_owner[e]
            n_req += 1
        elif kind[j] == SEARCH or kind[j] == WRAP or done[d, j] < limit[d, j]:
            carry[n_carry] = e
            n_carry += 1
    for j in range(J):
        for d in range(2):
            if go[d, j]:
                done[d, j] += 1
    return n_req, n_carry


@njit(cache=True)
def _absorb(job, dirs, gid, owner, value, degree, kind, state, done, m1, m2, midx, e_gid, e_key, e_val, e_hop,
            e_owner, e_deg, e_stamp, n, pend, stamp, c1, c2, cdeg, default):
    n_new = 0
    for i in range(job.shape[0]):
        j, d = np.int64(job[i]), np.int64(dirs[i]) & 1
        key = j * 4 + np.int64(dirs[i])  # dirs: direction, + 2 for the post-wrap state
        if state[j] != ACTIVE and state[j] != MET:  # a search that met this round still records its layer
            continue
        deg = degree[i] if degree[i] >= 0 else _cache_get(c1, c2, cdeg, gid[i], d, default)
        e, n, better = _put(m1, m2, midx, e_gid, e_key, e_val, e_hop, e_owner, e_deg, e_stamp, n, gid[i], key,
                            value[i], done[d, j], owner[i], deg, d == 0)
        if not better:
            continue
        if e_stamp[e] != stamp:
            e_stamp[e] = stamp
            pend[n_new] = e
            n_new += 1
        if (kind[j] == SEARCH or kind[j] == WRAP) and _meets(m1, m2, midx, e_val, gid[i], key, value[i]):
            state[j] = MET
    return n, n_new


@njit(cache=True)
def _settle(pending, e_key, kind, state, done, limit, hub, hops, J):
    """After a round. A search is clean when its depths add up, or a side ran out without skipping a hub
    (its labels are then final; one emptied by the hub guard is not, and the other side grows on alone).
    A gather or late job with nothing left to expand is done (a late job goes on to its scan)."""
    count = np.zeros((2, J), np.int64)
    for i in range(pending.shape[0]):
        e = pending[i]
        count[e_key[e] & 1, e_key[e] >> 2] += 1
    for j in range(J):
        if state[j] != ACTIVE:
            continue
        if kind[j] == SEARCH or kind[j] == WRAP:
            if done[0, j] + done[1, j] >= hops or (count[0, j] == 0 and count[1, j] == 0) \
                    or (count[0, j] == 0 and not hub[0, j]) or (count[1, j] == 0 and not hub[1, j]):
                state[j] = DONE
        else:
            idle = True
            for d in range(2):
                if count[d, j] > 0 and done[d, j] < limit[d, j]:
                    idle = False
            if idle:
                state[j] = SCAN if kind[j] == LATE else DONE


@njit(cache=True)
def _copy_labels(target, n_old, m1, m2, midx, e_gid, e_key, e_val, e_hop, e_owner, e_deg, e_stamp, done, pend):
    """Copy the labels of each job j with target[j] >= 0 to job target[j]; queue those within its depth."""
    n = n_old
    n_pend = 0
    for e in range(n_old):
        j, d = e_key[e] >> 2, e_key[e] & 1
        g = target[j]
        if g < 0:
            continue
        f, n, _ = _put(m1, m2, midx, e_gid, e_key, e_val, e_hop, e_owner, e_deg, e_stamp, n, e_gid[e], g * 4 + d,
                       e_val[e], e_hop[e], e_owner[e], e_deg[e], d == 0)
        if e_hop[e] <= done[d, g]:
            pend[n_pend] = f
            n_pend += 1
    return n, n_pend


@njit(cache=True)
def _late_labels(flag, e_key, n):
    """Entries (forward, backward) of the flagged jobs."""
    fwd = np.empty(n, np.int64)
    bwd = np.empty(n, np.int64)
    nf = nb = 0
    for e in range(n):
        j = e_key[e] >> 2
        if flag[j]:
            if e_key[e] & 1:
                bwd[nb] = e
                nb += 1
            else:
                fwd[nf] = e
                nf += 1
    return fwd[:nf], bwd[:nb]

"""One shard's edge state: the windowed in- and out-adjacency of the accounts it owns.

Layout: accounts are interned to small ints; each owned account has one
`_Adjacency` per direction holding parallel typed arrays (event time, stream
sequence number, peer id, amount) plus the tx ids. No Python object per edge
but its id string. Edges are appended in stream order; eviction compacts an
account's arrays when its oldest edge falls below the horizon.

Invariants:
- an edge `src -> dst` is stored as an out-edge here iff this shard owns `src`,
  and as an in-edge iff it owns `dst` (a self-loop owned here is stored twice);
- a `tx_id` is stored at most once per direction (replays are ignored);
- every stored edge has `ts >= horizon`, the low watermark at last eviction.
"""

from __future__ import annotations

import pickle
import zlib
from array import array
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from .gcpause import collector_paused


def shard_of(account: str, num_shards: int) -> int:
    """Stable partition of `account` (crc32, the same in every process, unlike `hash`)."""
    return zlib.crc32(account.encode()) % num_shards


_SNAPSHOT_VERSION = 1


class Edge(NamedTuple):
    """An edge as the search sees it: `peer` is the other end, `seq` its stream position."""

    peer: str
    ts: int
    seq: int
    amount: float
    tx_id: str


class ExpandRequest(NamedTuple):
    """Edges of `account` in `direction` ("out"/"in") with `min_ts <= ts <= max_ts` and `seq < max_seq`.

    A NamedTuple, not a dataclass: a round sends thousands, and `ShardSet` ships
    them as plain tuples (see `ExpandResult`); a shard accepts either.
    """

    direction: str
    account: str
    min_ts: int
    max_ts: int
    max_seq: int
    peers: frozenset[str] | None = None  # when set, only edges to these accounts


EdgeRow = tuple[str, int, int, float, str]  # an `Edge`'s fields as a plain tuple: peer, ts, seq, amount, tx_id


class ExpandResult(NamedTuple):
    """The edges asked for, or none and `hub=True` when the account has more than `max_degree`.

    Edges are plain tuples in `Edge` field order, and a shard answers with plain
    `(edges, hub)` tuples that `ShardSet` wraps: the runtime pickles with
    cloudpickle, whose `reducer_override` (Python) runs for every object but
    exact builtins, so an object per edge cost a third of a shard actor's time
    and one per look-up a sixth more; tuples of str/int/float pickle in C.
    """

    edges: tuple[EdgeRow, ...]
    hub: bool = False


_NOTHING: tuple[tuple[EdgeRow, ...], bool] = ((), False)
_HUB: tuple[tuple[EdgeRow, ...], bool] = ((), True)


class _Adjacency:
    __slots__ = ("ts", "seq", "peer", "amount", "tx")

    def __init__(self) -> None:
        self.ts = array("q")
        self.seq = array("q")
        self.peer = array("q")
        self.amount = array("d")
        self.tx: list[str] = []

    def append(self, ts: int, seq: int, peer: int, amount: float, tx_id: str) -> None:
        self.ts.append(ts)
        self.seq.append(seq)
        self.peer.append(peer)
        self.amount.append(amount)
        self.tx.append(tx_id)

    @classmethod
    def from_bytes(cls, ts: bytes, seq: bytes, peer: bytes, amount: bytes, tx: list[str]) -> "_Adjacency":
        adjacency = cls()
        adjacency.ts.frombytes(ts)
        adjacency.seq.frombytes(seq)
        adjacency.peer.frombytes(peer)
        adjacency.amount.frombytes(amount)
        adjacency.tx = tx
        return adjacency

    def keep_from(self, horizon: int) -> int:
        """Drop edges older than `horizon`; return how many were dropped."""
        keep = [i for i, ts in enumerate(self.ts) if ts >= horizon]
        dropped = len(self.ts) - len(keep)
        if dropped:
            self.ts = array("q", (self.ts[i] for i in keep))
            self.seq = array("q", (self.seq[i] for i in keep))
            self.peer = array("q", (self.peer[i] for i in keep))
            self.amount = array("d", (self.amount[i] for i in keep))
            self.tx = [self.tx[i] for i in keep]
        return dropped

    def nbytes(self) -> int:
        arrays = (self.ts, self.seq, self.peer, self.amount)
        return sum(a.itemsize * len(a) for a in arrays) + sum(49 + len(t) for t in self.tx) + 8 * len(self.tx)


class ShardStore:
    """The edges of the accounts that hash to partition `shard` of `num_shards`."""

    def __init__(self, shard: int, num_shards: int):
        self.shard = shard
        self.num_shards = num_shards
        self.horizon = -(2**62)
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._out: dict[int, _Adjacency] = {}
        self._in: dict[int, _Adjacency] = {}
        self._seen: dict[str, int] = {}
        self.edge_count = 0

    def owns(self, account: str) -> bool:
        return shard_of(account, self.num_shards) == self.shard

    def _intern(self, account: str) -> int:
        ident = self._ids.get(account)
        if ident is None:
            ident = self._ids[account] = len(self._names)
            self._names.append(account)
        return ident

    def apply(self, edges: Iterable[tuple[str, str, str, float, int, int]]) -> list[str]:
        """Store `(tx_id, src, dst, amount, ts, seq)` edges owned here; return the tx ids seen before.

        Edges already seen (same tx_id) are ignored, so a replayed batch changes nothing;
        so are edges older than the horizon.
        """
        repeated = []
        for tx_id, src, dst, amount, ts, seq in edges:
            if tx_id in self._seen:
                repeated.append(tx_id)
                continue
            if ts < self.horizon:
                continue
            stored = False
            if self.owns(src):
                adjacency = self._out.setdefault(self._intern(src), _Adjacency())
                adjacency.append(ts, seq, self._intern(dst), amount, tx_id)
                stored = True
            if self.owns(dst):
                adjacency = self._in.setdefault(self._intern(dst), _Adjacency())
                adjacency.append(ts, seq, self._intern(src), amount, tx_id)
                stored = True
            if stored:
                self._seen[tx_id] = ts
                self.edge_count += 1
        return repeated

    def evict(self, horizon: int) -> int:
        """Forget edges with `ts < horizon`; return how many edge records were dropped."""
        if horizon <= self.horizon:
            return 0
        self.horizon = horizon
        dropped = 0
        for table in (self._out, self._in):
            for ident in list(table):
                adjacency = table[ident]
                if adjacency.ts and min(adjacency.ts) < horizon:
                    dropped += adjacency.keep_from(horizon)
                    if not adjacency.ts:
                        del table[ident]
        self._seen = {tx: ts for tx, ts in self._seen.items() if ts >= horizon}
        self.edge_count = len(self._seen)
        return dropped

    def expand(self, requests: Sequence[ExpandRequest], max_degree: int | None
               ) -> list[tuple[tuple[EdgeRow, ...], bool]]:
        """Answer a batch of frontier look-ups, both directions, in one call.

        Requests may be plain tuples in `ExpandRequest` field order; answers are
        plain `(edges, hub)` tuples in `ExpandResult` field order (`ShardSet.expand`
        wraps them). The answer holds one tuple per edge: the collector is paused
        while they are built.
        """
        with collector_paused():
            return self._expand(requests, max_degree)

    def _expand(self, requests: Sequence[ExpandRequest], max_degree: int | None
                ) -> list[tuple[tuple[EdgeRow, ...], bool]]:
        names, ids = self._names, self._ids
        results = []
        for direction, account, lo, hi, max_seq, peers in requests:
            ident = ids.get(account)
            adjacency = (self._out if direction == "out" else self._in).get(ident) if ident is not None else None
            if adjacency is None:
                results.append(_NOTHING)
                continue
            if max_degree is not None and len(adjacency.ts) > max_degree:
                results.append(_HUB)
                continue
            edges = tuple(
                (names[peer], ts, seq, amount, tx)
                for ts, seq, peer, amount, tx in zip(adjacency.ts, adjacency.seq, adjacency.peer,
                                                     adjacency.amount, adjacency.tx)
                if seq < max_seq and lo <= ts <= hi
            )
            if peers is not None:
                edges = tuple(e for e in edges if e[0] in peers)
            results.append((edges, False))
        return results

    def snapshot(self) -> bytes:
        """The whole shard as bytes for a checkpoint: each adjacency's raw arrays, the interning table.

        Edges travel as the arrays' machine bytes, not as per-edge objects, so a
        snapshot costs about what the shard holds in memory.
        """
        tables = [[(ident, a.ts.tobytes(), a.seq.tobytes(), a.peer.tobytes(), a.amount.tobytes(), a.tx)
                   for ident, a in table.items()] for table in (self._out, self._in)]
        state = (_SNAPSHOT_VERSION, self.shard, self.num_shards, self.horizon, self._names, self._seen, tables)
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, data: bytes) -> None:
        """Replace this shard's state with a `snapshot` taken of the same shard."""
        version, shard, num_shards, horizon, names, seen, tables = pickle.loads(data)
        if version != _SNAPSHOT_VERSION or (shard, num_shards) != (self.shard, self.num_shards):
            raise ValueError(f"snapshot of shard {shard}/{num_shards} (format {version}) cannot restore "
                             f"shard {self.shard}/{self.num_shards} (format {_SNAPSHOT_VERSION})")
        self.horizon = horizon
        self._names = names
        self._ids = {name: ident for ident, name in enumerate(names)}
        self._seen = seen
        self.edge_count = len(seen)
        self._out, self._in = ({ident: _Adjacency.from_bytes(*columns) for ident, *columns in table}
                               for table in tables)

    def count_edges(self) -> int:
        return self.edge_count

    def degree(self, account: str) -> tuple[int, int]:
        ident = self._ids.get(account)
        if ident is None:
            return 0, 0
        out, inn = self._out.get(ident), self._in.get(ident)
        return (len(out.ts) if out else 0), (len(inn.ts) if inn else 0)

    def nbytes(self) -> int:
        """Approximate bytes held by edge storage (arrays, tx ids, interning, dedup index)."""
        adjacency = sum(a.nbytes() for t in (self._out, self._in) for a in t.values())
        interning = sum(49 + len(n) + 8 + 100 for n in self._names)
        return adjacency + interning + 100 * len(self._seen)

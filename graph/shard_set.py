"""The set of shards a search talks to: routing and one batched call per shard.

`LocalShards` keeps the `ShardStore`s in this process (tests, and the lowest
latency for a single-process engine); `ActorShards` keeps each one in a
`GraphShard` actor on the runtime. Both route the same way, so a search cannot
tell them apart.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from typing import Any

from .shard_store import ExpandRequest, ExpandResult, ShardStore, shard_of

EdgeRow = tuple[str, str, str, float, int, int]  # tx_id, src, dst, amount, ts, seq

_NO_EDGES = ExpandResult(())
_as_result = partial(tuple.__new__, ExpandResult)  # wraps a shard's plain `(edges, hub)` answer, in C


class ShardSet:
    """Routes edges and look-ups to shards; subclasses say how a shard is called."""

    num_shards: int

    def _call(self, method: str, args_by_shard: dict[int, tuple]) -> dict[int, Any]:
        raise NotImplementedError

    def apply(self, edges: Sequence[EdgeRow]) -> set[str]:
        """Store each edge at the shard of its `src` and of its `dst`; return the tx ids seen before."""
        by_shard: dict[int, list[EdgeRow]] = defaultdict(list)
        for edge in edges:
            src_shard, dst_shard = shard_of(edge[1], self.num_shards), shard_of(edge[2], self.num_shards)
            by_shard[src_shard].append(edge)
            if dst_shard != src_shard:
                by_shard[dst_shard].append(edge)
        answers = self._call("apply", {shard: (part,) for shard, part in by_shard.items()})
        return {tx_id for repeated in answers.values() for tx_id in repeated}

    def expand(self, requests: Sequence[ExpandRequest], max_degree: int | None) -> list[ExpandResult]:
        """One `expand` call per shard; requests go and answers come back as plain tuples (see `ExpandResult`)."""
        by_shard: dict[int, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            by_shard[shard_of(request.account, self.num_shards)].append(index)
        answers = self._call("expand", {shard: ([tuple(requests[i]) for i in indices], max_degree)
                                        for shard, indices in by_shard.items()})
        results: list[ExpandResult] = [_NO_EDGES] * len(requests)
        for shard, indices in by_shard.items():
            for index, answer in zip(indices, map(_as_result, answers[shard])):
                results[index] = answer
        return results

    def evict(self, horizon: int) -> int:
        answers = self._call("evict", {shard: (horizon,) for shard in range(self.num_shards)})
        return sum(answers.values())

    def edge_count(self) -> int:
        """Payments stored, counted once per shard that holds them (twice when src and dst part ways)."""
        return sum(self._call("count_edges", {shard: () for shard in range(self.num_shards)}).values())

    def nbytes(self) -> int:
        return sum(self._call("nbytes", {shard: () for shard in range(self.num_shards)}).values())


class LocalShards(ShardSet):
    """Shards held in this process."""

    def __init__(self, num_shards: int = 1):
        self.num_shards = num_shards
        self.stores = [ShardStore(i, num_shards) for i in range(num_shards)]

    def _call(self, method: str, args_by_shard: dict[int, tuple]) -> dict[int, Any]:
        return {shard: getattr(self.stores[shard], method)(*args) for shard, args in args_by_shard.items()}


class GraphShard(ShardStore):
    """A shard as a runtime actor: its own process, called only with batches."""


class ActorShards(ShardSet):
    """Shards held by `GraphShard` actors; a call to several shards runs on all of them at once."""

    def __init__(self, num_shards: int = 1, *, handles: Sequence[Any] | None = None):
        from ringwatch import runtime as rt

        self._rt = rt
        self.num_shards = num_shards if handles is None else len(handles)
        actor = rt.remote(GraphShard)
        self.handles = list(handles) if handles is not None else [
            actor.remote(i, num_shards) for i in range(num_shards)]

    def _call(self, method: str, args_by_shard: dict[int, tuple]) -> dict[int, Any]:
        refs = {shard: getattr(self.handles[shard], method).remote(*args) for shard, args in args_by_shard.items()}
        return dict(zip(refs, self._rt.get(list(refs.values()))))

    def close(self) -> None:
        for handle in self.handles:
            self._rt.kill(handle)

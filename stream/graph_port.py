"""The engine's one seam to the graph: what it asks of the shards, the search and their checkpoints.

`EngineGraph` is everything the engine calls; `open_graph` is the one place
that builds it, over the graph's facades: `ShardedRingGraph` (shard actors)
or, with `graph.placement = "in-process"`, `LocalRingGraph` (the whole graph in
the engine's process, one compiled search per batch).

Shards are runtime actors created with the runtime's actor checkpoints
(`checkpoint_uri`) and `max_restarts`, so a shard lost with its node restarts on
a live node from its latest checkpoint. `restarted()` tells the engine that
happened (its state went back to that checkpoint), so the engine rewinds its
sources to the aligned checkpoint and replays.

On a cluster the shards are named (`shared_as`): every engine of a consumer
group finds the same shards by name (`ringwatch.runtime.get_actor`), the first
one creates them, and none kills them when it stops — they belong to the
group, not to one engine.

In process, the graph is checkpointed by the engine into the same runtime
checkpoint store (Arrow IPC), and queries take a lock the loop holds while it
applies a batch: they wait for at most one batch.

A restore loads only Arrow tables (`trusted_arrow_checkpoints`): graph state is
never pickled, and with a local runtime the ids come from plain JSON records
under `state_dir`, which anyone who can write that folder could edit. An id
binds its file's SHA-256, so checking the bytes here binds what the runtime
loads next: a planted pickle is refused, never unpickled.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from ringwatch import runtime as rt
from ringwatch.graph import (
    Alert,
    GraphShard,
    LocalRingGraph,
    RingGraph,
    SearchOptions,
    ShardedRingGraph,
    StoredEdge,
)
from ringwatch.runtime.checkpoints import is_arrow, open_store
from ringwatch.runtime.errors import CheckpointError

from .checkpoint import CheckpointRecordError

logger = logging.getLogger(__name__)

SHARD_MAX_RESTARTS = 1_000  # a shard restarts whenever it is lost; the engine never gives up on one
CHECKPOINT_TIMEOUT_S = 120.0
NAMED_SHARD_WAIT_S = 60.0  # how long a named shard someone is creating may take to show up


@dataclass
class GraphBatch:
    """What one micro-batch raised, and the payments the graph itself would not take: (row of the batch, reason)."""

    alerts: list[Alert] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    truncated_searches: int = 0
    late_payments: int = 0  # older than the newest payment already applied: they took the late search path


class EngineGraph(Protocol):
    """The sharded graph as the engine drives it."""

    num_shards: int

    def process(self, payments: pa.Table, received_at: np.ndarray) -> GraphBatch:
        """Apply the payments (`PAYMENT_SCHEMA`, each received at the time in `received_at`), then find the
        rings that contain at least one of them."""
        ...

    def evict(self, horizon: int) -> None:
        """Forget edges with `ts < horizon` (the event-time clock says when that is safe)."""
        ...

    def checkpoint(self) -> list[str]:
        """Checkpoint every shard through the runtime: their checkpoint ids.

        May run on a thread beside `process`: each shard's checkpoint then holds
        at least every batch `process` had returned before it was called.
        """
        ...

    def restarted(self) -> list[int]:
        """Shards restarted from a checkpoint since the last call (their state went back in time)."""
        ...

    def query_graph(self) -> RingGraph:
        """The live graph, for the query service."""
        ...

    def close(self) -> None:
        ...


class ShardedEngineGraph:
    """`ShardedRingGraph` over `GraphShard` actors that checkpoint themselves through the runtime.

    After a rewind the engine replays payments some shards still hold: they are
    searched again (`replay=True`), so their rings are raised again and the sinks
    dedupe by alert id.
    """

    def __init__(self, num_shards: int, options: SearchOptions, *, checkpoint_uri: str,
                 restore: list[str] | None = None, shared_as: str | None = None):
        self.num_shards = num_shards
        shard_ids = restore or []
        if shard_ids and len(shard_ids) != num_shards:
            raise ValueError(f"the checkpoint holds {len(shard_ids)} shards, the graph is set to {num_shards}")
        handles = [_shard(index, num_shards, checkpoint_uri, shard_ids[index] if shard_ids else None,
                          None if shared_as is None else f"{shared_as}/shard-{index}-of-{num_shards}")
                   for index in range(num_shards)]
        self.graph = ShardedRingGraph(options, handles, owned=shared_as is None)
        self._restarts = self._restart_counts()

    def process(self, payments: pa.Table, received_at: np.ndarray) -> GraphBatch:
        result = self.graph.process(payments, received_at, replay=True)
        return GraphBatch(result.alerts, [(r.index, r.reason) for r in result.rejected], result.truncated_searches,
                          result.late_payments)

    def evict(self, horizon: int) -> None:
        reclaimed = self.graph.evict(horizon)
        logger.debug("evicted payments below %d (%d payments' storage reclaimed)", horizon, reclaimed)

    def checkpoint(self) -> list[str]:
        """Every shard's checkpoint call goes out at once, then the ids (each durable) are gathered: the shards
        write side by side (each on its worker's checkpoint writer thread), not one after another."""
        take = functools.partial(rt.checkpoint, timeout=CHECKPOINT_TIMEOUT_S)
        with ThreadPoolExecutor(len(self.graph.handles), thread_name_prefix="ringwatch-shard-checkpoint") as pool:
            return list(pool.map(take, self.graph.handles))

    def restarted(self) -> list[int]:
        counts = self._restart_counts()
        moved = [index for index, count in enumerate(counts) if count != self._restarts[index]]
        self._restarts = counts
        return moved

    def _restart_counts(self) -> list[int]:
        by_id = {record["actor_id"]: record.get("restarts", 0) for record in rt.actors()}
        return [by_id.get(handle.actor_id, 0) for handle in self.graph.handles]

    def query_graph(self) -> RingGraph:
        return self.graph

    def close(self) -> None:
        self.graph.close()


class InProcessEngineGraph:
    """`LocalRingGraph` in the engine's process, checkpointed into the runtime's checkpoint store."""

    num_shards = 1
    CHECKPOINT_NAME = "engine-graph"  # the checkpoint store's folder (actor id) for this graph

    def __init__(self, options: SearchOptions, *, checkpoint_uri: str, restore: list[str] | None = None):
        self.graph = LocalRingGraph(options)
        self._store = open_store(checkpoint_uri)
        self._lock = threading.Lock()
        if restore:
            self.graph.restore([self._store.load(checkpoint_id) for checkpoint_id in restore])

    def process(self, payments: pa.Table, received_at: np.ndarray) -> GraphBatch:
        with self._lock:
            result = self.graph.process(payments, received_at, replay=True)
        return GraphBatch(result.alerts, [(r.index, r.reason) for r in result.rejected], result.truncated_searches,
                          result.late_payments)

    def evict(self, horizon: int) -> None:
        with self._lock:
            self.graph.evict(horizon)

    def checkpoint(self) -> list[str]:
        with self._lock:  # the loop waits for a snapshot, not for the table (to_table: ~10 ms per 200k payments)
            snapshot = self.graph.store.snapshot()
        return [self._store.save(f"{self.CHECKPOINT_NAME}-0", snapshot.to_table())]

    def restarted(self) -> list[int]:
        return []  # it lives and dies with the engine

    def query_graph(self) -> RingGraph:
        return _Locked(self.graph, self._lock)

    def close(self) -> None:
        self.graph.close()


class _Locked:
    """The read side of a `RingGraph` the engine's loop writes to: each read waits for the batch in progress."""

    def __init__(self, graph: RingGraph, lock: threading.Lock):
        self._graph = graph
        self._lock = lock

    def edges(self, accounts: Sequence[str], direction: str, since: int | None = None
              ) -> dict[str, list[StoredEdge]]:
        with self._lock:
            return self._graph.edges(accounts, direction, since)

    def degrees(self, accounts: Sequence[str], direction: str) -> dict[str, int]:
        with self._lock:
            return self._graph.degrees(accounts, direction)

    def edge_count(self) -> int:
        with self._lock:
            return self._graph.edge_count()

    def nbytes(self) -> int:
        with self._lock:
            return self._graph.nbytes()


def _shard(index: int, num_shards: int, checkpoint_uri: str, restore_from: str | None, name: str | None) -> Any:
    """A `GraphShard` actor: created (from `restore_from`, if given), or found by `name` if it exists."""
    if name is not None:
        try:
            return rt.get_actor(name)
        except ValueError:
            pass  # not there yet: create it (another engine may be racing us; the name decides)
    actor = rt.remote(GraphShard).options(checkpoint_uri=checkpoint_uri, max_restarts=SHARD_MAX_RESTARTS,
                                          restore_from=restore_from, name=name)
    handle = actor.remote(index, num_shards)
    if name is None:
        return handle
    deadline = time.monotonic() + NAMED_SHARD_WAIT_S
    while True:
        try:
            return rt.get_actor(name)  # ours, or the one another engine created first
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the creation is in flight


def open_graph(num_shards: int, options: SearchOptions, *, checkpoint_uri: str,
               restore: list[str] | None = None, shared_as: str | None = None,
               in_process: bool = False) -> EngineGraph:
    """The engine's graph: `num_shards` shard actors (or the graph in process) checkpointing to `checkpoint_uri`.

    `restore` starts it from a record's shard checkpoint ids; `shared_as` names
    the shard actors so the engines of a group share them (found if they exist).
    """
    if restore and shared_as is None:  # shared shards: the ids come from the sealed GCS (and may be stale)
        trusted_arrow_checkpoints(checkpoint_uri, restore)
    if in_process:
        return InProcessEngineGraph(options, checkpoint_uri=checkpoint_uri, restore=restore)
    return ShardedEngineGraph(num_shards, options, checkpoint_uri=checkpoint_uri, restore=restore,
                              shared_as=shared_as)


def trusted_arrow_checkpoints(checkpoint_uri: str, checkpoint_ids: Sequence[str]) -> None:
    """Refuse (CheckpointRecordError) a restore naming anything but Arrow checkpoints whose bytes match their ids.

    Checked for every store, files or Redis (both are storage, not a trust
    boundary), whenever the ids come from a record under `state_dir`.
    `open_graph` skips it for a group's shared shards: their ids come from the
    cluster's sealed GCS, and a running engine may already have replaced the
    checkpoints a record names (the shards are found alive, not loaded).
    """
    store = open_store(checkpoint_uri)
    for checkpoint_id in checkpoint_ids:
        try:
            data = store.read(checkpoint_id)
        except CheckpointError as exc:
            raise CheckpointRecordError(f"shard checkpoint: {exc} (was the checkpoint record under state_dir edited? "
                                  f"restore state_dir from a backup or start with a fresh one)") from None
        if not is_arrow(data):
            raise CheckpointRecordError(f"shard checkpoint {checkpoint_id} in {checkpoint_uri} is not an Arrow table "
                                  f"written by ringwatch: refused, graph state is never unpickled (was state_dir "
                                  f"tampered with?)")

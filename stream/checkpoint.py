"""Aligned checkpoints: one record tying the shards' own checkpoints to source positions and watermarks.

Each `GraphShard` actor checkpoints its own state through the runtime's actor
checkpoints (`ringwatch.runtime.checkpoint`; Arrow IPC or pickled buffers in
the runtime's checkpoint store), so shard state never passes through the
engine. What the engine keeps is one small record per aligned checkpoint:

- `epoch`: rises by one with every record of the consumer group;
- `engines`: per engine, the source positions it had fully processed (every
  alert of the records below them handed to durable sinks), its partitions'
  watermarks and its low watermark, when the shards were checkpointed;
- `shards`: the runtime checkpoint id of each shard, in shard order.

A restore loads the shards from their checkpoint ids and every partition
resumes from the record's position; the replay raises alerts the sinks have
seen already, and they deliver none of them twice.

Where the record lives depends on where the GCS lives (`CheckpointRecords` is the
one seam, two implementations): with a local runtime the GCS is in the
engine's process and dies with it, so records are files under `--state-dir`
(`FileCheckpointRecords`); on a cluster they live in the GCS key-value table,
shared by every engine of the consumer group (`GcsCheckpointRecords`). A record
is written whole or not at all; a damaged newest record leaves the one before.

A record's shard checkpoints must outlive it: the runtime prunes each
actor's checkpoints beyond its newest two, and shards checkpoint again for
the next record, for a record that is then dropped (a shard restarted
meanwhile) or for another engine of the group. So before a record is written
its store *holds* (`runtime.checkpoints.CheckpointStore.hold`) the shard
checkpoints of every record it keeps, this one included, and writes no record
whose shard checkpoints are gone already (`CheckpointRecordError`: the engine skips
that checkpoint). Each engine holds under its own id, replacing its previous
hold, so what the newest record names stays held by its writer at least until
that writer's next record; storage stays bounded by `keep` records per engine
id (an engine id that never comes back leaves its last hold behind).

Engines of one group share the shards, so a record must cover all of them:
each engine `publish`es its progress before it checkpoints the shards, and the
record carries every engine's latest published progress (`group_progress`).
Whatever an engine published was applied to the shards before it published,
so the shard checkpoints taken afterwards hold it. The published low
watermarks also bound eviction on shared shards: no engine evicts what
another's partitions may still need.
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ringwatch.runtime.errors import RingwatchError
from ringwatch.runtime.files import write_atomically

logger = logging.getLogger(__name__)

Partition = tuple[str, int]
RECORD_SUFFIX = ".checkpoint.json"


class CheckpointRecordError(RingwatchError, RuntimeError):
    """A checkpoint that cannot be written or cannot be used to restore; the message says which."""


@dataclass
class EngineProgress:
    """One engine's part of an aligned checkpoint."""

    positions: dict[Partition, int] = field(default_factory=dict)
    watermarks: dict[Partition, int | None] = field(default_factory=dict)
    low_watermark: int | None = None
    transactions: int = 0
    published_at: float = 0.0  # when the engine published it (epoch seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "positions": [[t, p, offset] for (t, p), offset in sorted(self.positions.items())],
            "watermarks": [[t, p, mark] for (t, p), mark in sorted(self.watermarks.items())],
            "low_watermark": self.low_watermark,
            "transactions": self.transactions,
            "published_at": self.published_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EngineProgress":
        return cls(
            positions={(t, int(p)): int(offset) for t, p, offset in data["positions"]},
            watermarks={(t, int(p)): None if mark is None else int(mark) for t, p, mark in data["watermarks"]},
            low_watermark=None if data["low_watermark"] is None else int(data["low_watermark"]),
            transactions=int(data["transactions"]),
            published_at=float(data.get("published_at", 0.0)),
        )


@dataclass
class Checkpoint:
    """An aligned checkpoint record (see the module docstring)."""

    epoch: int
    engines: dict[str, EngineProgress]
    shards: list[str]
    created_at: float = 0.0
    graph: dict[str, Any] = field(default_factory=dict)  # what the graph keeps besides its shards

    @property
    def positions(self) -> dict[Partition, int]:
        """Where each partition resumes: the furthest any engine of the group had processed it."""
        merged: dict[Partition, int] = {}
        for progress in self.engines.values():
            for partition, offset in progress.positions.items():
                merged[partition] = max(merged.get(partition, 0), offset)
        return merged

    @property
    def watermarks(self) -> dict[Partition, int | None]:
        merged: dict[Partition, int | None] = {}
        for progress in self.engines.values():
            for partition, mark in progress.watermarks.items():
                known = [m for m in (merged.get(partition), mark) if m is not None]
                merged[partition] = max(known) if known else None
        return merged

    @property
    def transactions(self) -> int:
        return sum(progress.transactions for progress in self.engines.values())

    def to_json(self) -> str:
        return json.dumps({
            "epoch": self.epoch,
            "engines": {name: progress.to_dict() for name, progress in sorted(self.engines.items())},
            "shards": self.shards,
            "created_at": self.created_at,
            "graph": self.graph,
        }, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Checkpoint":
        data = json.loads(text)
        return cls(
            epoch=int(data["epoch"]),
            engines={name: EngineProgress.from_dict(progress) for name, progress in data["engines"].items()},
            shards=[str(s) for s in data["shards"]],
            created_at=float(data["created_at"]),
            graph=dict(data.get("graph") or {}),
        )


class KeyValue(Protocol):
    """The GCS key-value table as `ringwatch.runtime` (or a `RedisGcs`) offers it."""

    def kv_get(self, key: str) -> bytes | None: ...
    def kv_put(self, key: str, value: bytes, *, overwrite: bool = True, ttl_s: float | None = None) -> bool: ...
    def kv_delete(self, key: str) -> bool: ...
    def kv_keys(self, prefix: str = "") -> list[str]: ...


class ShardHolds(Protocol):
    """What a record store needs of the runtime's checkpoint store the shards write to."""

    def hold(self, holder: str, checkpoint_ids: Iterable[str]) -> list[str]: ...


def hold_shards(shards: ShardHolds | None, holder: str, checkpoint: Checkpoint, kept: Iterable[list[str]]) -> None:
    """Hold the shard checkpoints of `checkpoint` and of the records kept with it (CheckpointRecordError if gone)."""
    if shards is None:
        return
    wanted = set(checkpoint.shards).union(*kept)
    gone = set(shards.hold(holder, wanted)) & set(checkpoint.shards)
    if gone:
        raise CheckpointRecordError(f"shard checkpoints {sorted(gone)} were pruned before their record was written "
                              f"(newer ones were taken meanwhile); record not written")


class CheckpointRecords(Protocol):
    """Where a consumer group's aligned checkpoint records live."""

    def latest(self) -> Checkpoint | None:
        """The newest whole record (None before the first)."""
        ...

    def save(self, checkpoint: Checkpoint) -> Checkpoint:
        """Write `checkpoint` as the next epoch (its `epoch` is set here) and return it.

        Raises CheckpointRecordError, writing nothing, if its shard checkpoints are pruned already.
        """
        ...

    def history(self) -> list[Checkpoint]:
        """The records kept, oldest first (for `ringwatch status`)."""
        ...

    def publish(self, engine_id: str, progress: EngineProgress) -> None:
        """Tell the group how far this engine has applied its partitions (before checkpointing shards)."""
        ...

    def group_progress(self) -> dict[str, EngineProgress]:
        """The latest progress published by each live engine of the group (this one included)."""
        ...


class _Records(ABC):
    """What both record stores share: records by epoch, newest whole one first, a damaged one skipped.

    A subclass says which epochs exist, where a record lives (for messages) and how to load its bytes.
    """

    @abstractmethod
    def _epochs(self) -> list[int]:
        """The epochs stored, oldest first."""

    @abstractmethod
    def _where(self, epoch: int) -> str:
        """Where the record of `epoch` lives, for messages."""

    @abstractmethod
    def _load(self, epoch: int) -> bytes | None:
        """The record's bytes, None if it is gone; OSError if it cannot be read."""

    def _read(self, epoch: int) -> Checkpoint | None:
        try:
            raw = self._load(epoch)
            return None if raw is None else Checkpoint.from_json(raw)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("checkpoint record %s is not usable (%s); trying an older one", self._where(epoch), exc)
            return None

    def latest(self) -> Checkpoint | None:
        for epoch in reversed(self._epochs()):
            checkpoint = self._read(epoch)
            if checkpoint is not None:
                return checkpoint
        return None

    def history(self) -> list[Checkpoint]:
        return [c for c in map(self._read, self._epochs()) if c is not None]


class FileCheckpointRecords(_Records):
    """Records as JSON files `<epoch>.checkpoint.json` under `state_dir/checkpoints`, newest `keep` kept.

    Each file is written to a temporary name, fsynced and renamed, so it exists
    whole or not at all; an unreadable newest file is skipped with a warning.
    `shards`: the store the shards checkpoint to, where records hold theirs.
    """

    def __init__(self, state_dir: str | Path, keep: int = 2, *, shards: ShardHolds | None = None,
                 holder: str = "records"):
        self.root = Path(state_dir) / "checkpoints"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._shards, self._holder = shards, holder
        self._published: dict[str, EngineProgress] = {}  # one engine per state_dir: its own progress only

    def _path(self, epoch: int) -> Path:
        return self.root / f"{epoch:012d}{RECORD_SUFFIX}"

    def _epochs(self) -> list[int]:
        return sorted(int(p.name[: -len(RECORD_SUFFIX)]) for p in self.root.glob(f"*{RECORD_SUFFIX}"))

    def _where(self, epoch: int) -> str:
        return str(self._path(epoch))

    def _load(self, epoch: int) -> bytes | None:
        return self._path(epoch).read_bytes()

    def save(self, checkpoint: Checkpoint) -> Checkpoint:
        epochs = self._epochs()
        kept = [c.shards for c in map(self._read, epochs[len(epochs) - self.keep + 1:]) if c is not None]
        hold_shards(self._shards, self._holder, checkpoint, kept)
        checkpoint.epoch = (epochs[-1] if epochs else 0) + 1
        checkpoint.created_at = checkpoint.created_at or time.time()
        write_atomically(self._path(checkpoint.epoch), checkpoint.to_json().encode())
        for old in (epochs + [checkpoint.epoch])[: -self.keep]:
            self._path(old).unlink(missing_ok=True)
        return checkpoint

    def publish(self, engine_id: str, progress: EngineProgress) -> None:
        self._published = {engine_id: progress}

    def group_progress(self) -> dict[str, EngineProgress]:
        return dict(self._published)


class GcsCheckpointRecords(_Records):
    """Records of consumer group `group` in the cluster's GCS key-value table (`ringwatch.runtime.kv_*`).

    Keys: `ringwatch/engines/<group>/checkpoints/<epoch>` (the records, newest
    `keep` kept) and `ringwatch/engines/<group>/progress/<engine id>` (each
    engine's latest progress; it expires `progress_ttl_s` after the engine
    last published, so an engine that is gone stops holding eviction back).
    Epochs are claimed with an atomic put, so two engines never write the same
    epoch. Values are sealed by the runtime like every GCS record. `kv` is
    anything with the runtime's `kv_get/kv_put/kv_delete/kv_keys` (default: the
    runtime this process joined; tools pass a `RedisGcs`). `shards` and
    `holder`: the store the shards checkpoint to, and this engine's id there.
    """

    def __init__(self, group: str, keep: int = 2, progress_ttl_s: float = 60.0, kv: KeyValue | None = None, *,
                 shards: ShardHolds | None = None, holder: str = ""):
        if kv is None:
            from ringwatch import runtime as kv
        self._rt = kv
        self.group = group
        self.keep = keep
        self._shards, self._holder = shards, f"{group}/{holder}"
        self._shards_of: dict[int, list[str]] = {}  # records are written once: their shard ids, by epoch
        self.progress_ttl_s = progress_ttl_s
        self._prefix = f"ringwatch/engines/{group}/"

    def _record_key(self, epoch: int) -> str:
        return f"{self._prefix}checkpoints/{epoch:012d}"

    def _epochs(self) -> list[int]:
        keys = self._rt.kv_keys(f"{self._prefix}checkpoints/")
        return sorted(int(key.rsplit("/", 1)[1]) for key in keys if key.rsplit("/", 1)[1].isdigit())

    def _where(self, epoch: int) -> str:
        return self._record_key(epoch)

    def _load(self, epoch: int) -> bytes | None:
        return self._rt.kv_get(self._record_key(epoch))

    def save(self, checkpoint: Checkpoint) -> Checkpoint:
        epochs = self._epochs()
        hold_shards(self._shards, self._holder, checkpoint, self._kept_shards(epochs))
        epoch = (epochs[-1] if epochs else 0) + 1
        checkpoint.created_at = checkpoint.created_at or time.time()
        while True:
            checkpoint.epoch = epoch
            if self._rt.kv_put(self._record_key(epoch), checkpoint.to_json().encode(), overwrite=False):
                break
            epoch += 1  # another engine of the group took this epoch a moment ago
        for old in [e for e in epochs if e < epoch][: -(self.keep - 1) or None]:
            self._rt.kv_delete(self._record_key(old))
        return checkpoint

    def _kept_shards(self, epochs: list[int]) -> list[list[str]]:
        """The shard ids of the records that stay once one more is written (each record read once)."""
        kept = epochs[len(epochs) - self.keep + 1:]
        for epoch in kept:
            if epoch not in self._shards_of:
                record = self._read(epoch)
                self._shards_of[epoch] = record.shards if record is not None else []
        self._shards_of = {epoch: self._shards_of[epoch] for epoch in kept}
        return list(self._shards_of.values())

    def publish(self, engine_id: str, progress: EngineProgress) -> None:
        progress.published_at = progress.published_at or time.time()
        self._rt.kv_put(f"{self._prefix}progress/{engine_id}", json.dumps(progress.to_dict()).encode(),
                        ttl_s=self.progress_ttl_s)

    def group_progress(self) -> dict[str, EngineProgress]:
        found = {}
        for key in self._rt.kv_keys(f"{self._prefix}progress/"):
            raw = self._rt.kv_get(key)
            if raw is not None:
                found[key[len(f"{self._prefix}progress/"):]] = EngineProgress.from_dict(json.loads(raw))
        return found


def groups(kv: KeyValue) -> list[str]:
    """The consumer groups with checkpoint records in this cluster's GCS."""
    prefix = "ringwatch/engines/"
    return sorted({key[len(prefix):].split("/checkpoints/", 1)[0] for key in kv.kv_keys(prefix)
                   if "/checkpoints/" in key})

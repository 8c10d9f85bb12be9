"""Aligned checkpoints on disk: shard snapshots, source positions and detector state as one unit.

A checkpoint is a directory of shard snapshots plus a manifest that names
them. The snapshots are written and fsynced first; the manifest is written
last, through a temporary file, fsync and rename, so it either exists whole or
not at all. A checkpoint counts only once its manifest exists and every shard
file it names matches its recorded digest: a crash at any moment leaves the
previous complete checkpoint to restore from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ringwatch.runtime.files import write_atomically

logger = logging.getLogger(__name__)

Partition = tuple[str, int]
MANIFEST_SUFFIX = ".manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or cannot be used to restore; the message says which."""


@dataclass
class Checkpoint:
    """What a restore needs: where each source partition resumes, the detector's counters, the shards."""

    checkpoint_id: int
    positions: dict[Partition, int]
    next_seq: int
    watermark: int
    transactions: int
    shard_digests: list[str] = field(default_factory=list)
    created_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps({
            "checkpoint_id": self.checkpoint_id,
            "positions": [[topic, partition, offset] for (topic, partition), offset in sorted(self.positions.items())],
            "next_seq": self.next_seq,
            "watermark": self.watermark,
            "transactions": self.transactions,
            "shard_digests": self.shard_digests,
            "created_at": self.created_at,
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Checkpoint":
        data = json.loads(text)
        return cls(
            checkpoint_id=int(data["checkpoint_id"]),
            positions={(topic, int(partition)): int(offset) for topic, partition, offset in data["positions"]},
            next_seq=int(data["next_seq"]),
            watermark=int(data["watermark"]),
            transactions=int(data["transactions"]),
            shard_digests=list(data["shard_digests"]),
            created_at=float(data["created_at"]),
        )


class CheckpointStore:
    """Checkpoints under `state_dir/checkpoints`, newest `keep` kept."""

    def __init__(self, state_dir: str | Path, keep: int = 2):
        self.root = Path(state_dir) / "checkpoints"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def _directory(self, checkpoint_id: int) -> Path:
        return self.root / f"{checkpoint_id:012d}"

    def _manifest(self, checkpoint_id: int) -> Path:
        return self.root / f"{checkpoint_id:012d}{MANIFEST_SUFFIX}"

    def _shard_file(self, checkpoint_id: int, shard: int) -> Path:
        return self._directory(checkpoint_id) / f"shard-{shard}.bin"

    def manifest_ids(self) -> list[int]:
        return sorted(int(p.name[: -len(MANIFEST_SUFFIX)]) for p in self.root.glob(f"*{MANIFEST_SUFFIX}"))

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint; incomplete or damaged ones are skipped with a warning."""
        for checkpoint_id in reversed(self.manifest_ids()):
            try:
                checkpoint = Checkpoint.from_json(self._manifest(checkpoint_id).read_text(encoding="utf-8"))
                for shard, digest in enumerate(checkpoint.shard_digests):
                    self.load_shard(checkpoint, shard, expected=digest)
            except (OSError, ValueError, KeyError, TypeError, CheckpointError) as exc:
                logger.warning("checkpoint %d is not usable (%s); trying an older one", checkpoint_id, exc)
                continue
            return checkpoint
        return None

    def load_shard(self, checkpoint: Checkpoint, shard: int, expected: str | None = None) -> bytes:
        data = self._shard_file(checkpoint.checkpoint_id, shard).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != (expected or checkpoint.shard_digests[shard]):
            raise CheckpointError(f"checkpoint {checkpoint.checkpoint_id}: shard {shard} file does not match "
                                  f"its digest (damaged or partly written)")
        return data

    def save(self, positions: Mapping[Partition, int], next_seq: int, watermark: int, transactions: int,
             shard_snapshots: Sequence[bytes]) -> Checkpoint:
        """Write shard files, then the manifest atomically; then drop checkpoints beyond `keep`."""
        ids = self.manifest_ids()
        checkpoint = Checkpoint(ids[-1] + 1 if ids else 1, dict(positions), next_seq, watermark, transactions,
                                [hashlib.sha256(s).hexdigest() for s in shard_snapshots], time.time())
        directory = self._directory(checkpoint.checkpoint_id)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for shard, snapshot in enumerate(shard_snapshots):
            write_atomically(self._shard_file(checkpoint.checkpoint_id, shard), snapshot)
        write_atomically(self._manifest(checkpoint.checkpoint_id), checkpoint.to_json().encode())
        self._prune()
        return checkpoint

    def _prune(self) -> None:
        ids = self.manifest_ids()
        for old in ids[: -self.keep]:
            self._manifest(old).unlink(missing_ok=True)
            shutil.rmtree(self._directory(old), ignore_errors=True)
        newest = ids[-1] if ids else 0
        for directory in self.root.iterdir():
            if directory.is_dir() and directory.name.isdigit() and int(directory.name) > newest:
                shutil.rmtree(directory, ignore_errors=True)

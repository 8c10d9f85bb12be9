"""Actor checkpoints: durable copies of an actor's state that a restarted actor resumes from.

A store is addressed by URI:
- `file:///shared/dir` (the default, under the system temp dir): one file per
  checkpoint, written to a temp name, fsynced, then renamed, so a reader sees a
  whole checkpoint or none. Every node of a cluster must see the same directory
  (one machine, or a shared filesystem).
- `redis://host:port/db`: one key per checkpoint, written by a single SET, for
  small states on clusters without a shared filesystem.

Encoding keeps large states out of one giant pickle: a `pyarrow.Table` state is
written as Arrow IPC; anything else is pickled with protocol 5, its large
buffers (numpy arrays, Arrow columns) written raw after a small header instead
of being copied into the pickle stream.

Checkpoint ids are `<actor_id>/<sequence>-<sha256 of the checkpoint>`; the
latest id is recorded in the (sealed) GCS actor table by the node, so a restart
on any node knows which to load, and `load` refuses bytes whose SHA-256 is not
the one in the id: a checkpoint planted or altered in the directory or in Redis
by someone without the cluster token is never unpickled.

`ActorCheckpoints` is the one policy both backends apply to an actor: when a
checkpoint is due (`checkpoint_every` calls, `checkpoint_interval_s`), how the
state is taken (`__checkpoint__()` or the instance `__dict__`) and given back
(`__restore__(state)` or `__dict__.update`). On Ray the latest id is kept in
Ray's GCS instead (`runtime/ray_backend/hosting.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import struct
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

import cloudpickle
import pyarrow as pa

from .errors import CheckpointError
from .files import write_atomically

_PICKLE_MAGIC = b"RWCKPT1\n"
_ARROW_MAGIC = b"RWARROW\n"
_KEEP = 2  # checkpoints kept per actor: the latest and the one before, in case the latest is being written


def default_uri() -> str:
    """RINGWATCH_CHECKPOINT_URI, else a directory under the system temp dir (shared by one machine's nodes)."""
    return os.environ.get("RINGWATCH_CHECKPOINT_URI") or f"file://{Path(tempfile.gettempdir()) / 'ringwatch-checkpoints'}"


def encode_state(state: Any) -> list[bytes | memoryview]:
    """The parts of a checkpoint file, in order (written back to back)."""
    if isinstance(state, pa.Table):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, state.schema) as writer:
            writer.write_table(state)
        return [_ARROW_MAGIC, sink.getvalue()]
    buffers: list[pickle.PickleBuffer] = []
    header = cloudpickle.dumps(state, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    sizes = struct.pack(f"<QQ{len(raws)}Q", len(header), len(raws), *(r.nbytes for r in raws))
    return [_PICKLE_MAGIC, sizes, header, *raws]


def _digest(parts: list[bytes | memoryview]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def verified(checkpoint_id: str, data: bytes) -> bytes:
    """`data`, when its SHA-256 is the one `checkpoint_id` names; CheckpointError otherwise."""
    _, _, digest = checkpoint_id.rpartition("-")
    if len(digest) != 64 or not hmac.compare_digest(hashlib.sha256(data).hexdigest(), digest):
        raise CheckpointError(f"checkpoint {checkpoint_id} does not match its digest: it was altered or "
                              f"written by someone else; not loaded")
    return data


def decode_state(data: bytes | memoryview) -> Any:
    view = memoryview(data)
    magic = bytes(view[:8])
    if magic == _ARROW_MAGIC:
        return pa.ipc.open_stream(pa.py_buffer(view[8:])).read_all()
    if magic != _PICKLE_MAGIC:
        raise CheckpointError("the checkpoint is damaged or was not written by ringwatch (bad header)")
    header_len, count = struct.unpack_from("<QQ", view, 8)
    sizes = struct.unpack_from(f"<{count}Q", view, 24)
    offset = 24 + 8 * count
    header = view[offset:offset + header_len]
    offset += header_len
    buffers = []
    for size in sizes:
        buffers.append(view[offset:offset + size])
        offset += size
    return pickle.loads(header, buffers=buffers)


class CheckpointStore(Protocol):
    uri: str

    def save(self, actor_id: str, state: Any) -> str: ...
    def load(self, checkpoint_id: str) -> Any: ...


class FileCheckpointStore:
    """Checkpoints as files under one directory: `<dir>/<actor_id>/<sequence>.ckpt`."""

    def __init__(self, uri: str):
        self.uri = uri
        self.root = Path(urlparse(uri).path)

    def save(self, actor_id: str, state: Any) -> str:
        folder = self.root / actor_id
        folder.mkdir(parents=True, exist_ok=True)
        parts = encode_state(state)
        name = f"{time.time_ns():020d}-{_digest(parts)}"
        write_atomically(folder / f"{name}.ckpt", parts)
        for old in sorted(folder.glob("*.ckpt"))[:-_KEEP]:
            old.unlink(missing_ok=True)
        return f"{actor_id}/{name}"

    def load(self, checkpoint_id: str) -> Any:
        path = self.root / f"{checkpoint_id}.ckpt"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {checkpoint_id} is not in {self.uri} (is the directory shared "
                                  f"by every node?)") from None
        return decode_state(verified(checkpoint_id, data))


class RedisCheckpointStore:
    """Checkpoints as Redis keys `ringwatch:checkpoints:<actor_id>/<sequence>`, each written by one SET."""

    def __init__(self, uri: str):
        import redis

        self.uri = uri
        self._redis = redis.Redis.from_url(uri, socket_timeout=30)

    def save(self, actor_id: str, state: Any) -> str:
        data = b"".join(bytes(p) for p in encode_state(state))
        checkpoint_id = f"{actor_id}/{time.time_ns():020d}-{_digest([data])}"
        self._redis.set(f"ringwatch:checkpoints:{checkpoint_id}", data)
        older = sorted(self._redis.keys(f"ringwatch:checkpoints:{actor_id}/*"))[:-_KEEP]
        if older:
            self._redis.delete(*older)
        return checkpoint_id

    def load(self, checkpoint_id: str) -> Any:
        data = self._redis.get(f"ringwatch:checkpoints:{checkpoint_id}")
        if data is None:
            raise CheckpointError(f"checkpoint {checkpoint_id} is not in {self.uri}")
        return decode_state(verified(checkpoint_id, data))


def open_store(uri: str) -> CheckpointStore:
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return FileCheckpointStore(uri)
    if scheme in ("redis", "rediss", "unix"):
        return RedisCheckpointStore(uri)
    raise CheckpointError(f"checkpoint store {uri!r}: the URI must start with file:// or redis://")



@dataclass
class ActorCheckpoints:
    """One actor's checkpoint policy: when a checkpoint is due, how state is taken and given back."""

    store: CheckpointStore
    actor_id: str
    every: int | None = None
    interval_s: float | None = None
    calls_since: int = 0
    taken_at: float = field(default_factory=time.monotonic)

    def call_done(self) -> bool:
        """Count one finished call; True when the options call for a checkpoint now."""
        self.calls_since += 1
        if self.every and self.calls_since >= self.every:
            return True
        return bool(self.interval_s and time.monotonic() - self.taken_at >= self.interval_s)

    def take(self, instance: Any) -> str:
        """Write the actor's state durably; returns the checkpoint id."""
        getter = getattr(instance, "__checkpoint__", None)
        state = getter() if getter is not None else dict(vars(instance))
        checkpoint_id = self.store.save(self.actor_id, state)
        self.calls_since = 0
        self.taken_at = time.monotonic()
        return checkpoint_id

    def restore(self, instance: Any, checkpoint_id: str) -> None:
        state = self.store.load(checkpoint_id)
        restorer = getattr(instance, "__restore__", None)
        if restorer is not None:
            restorer(state)
        else:
            vars(instance).update(state)

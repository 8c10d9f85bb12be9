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

Retention: each `save` drops the actor's checkpoints older than its newest
two, except those *held*. `hold(holder, ids)` makes `ids` the set `holder`
keeps (replacing what it held before) and says which of them are gone already;
a holder is whoever refers to checkpoints from outside the actor — the
engine's aligned checkpoint records hold the shard checkpoints of the records
they keep, so a shard that checkpoints again, or another engine checkpointing
the same shards, never drops what a kept record names. Holding and pruning are
atomic with respect to each other (a lock file; a Redis WATCH), so a hold that
reports nothing gone keeps every id it names. Storage stays bounded: two per
actor plus what holders name (each holder replaces its own set).

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

Taking a checkpoint is split in two so that a large one does not stall its
actor: `capture` runs on the actor's thread, between two calls, and
`Captured.parts` (build, encode) and `CheckpointStore.write` (digest, write,
fsync, prune) run on a `CheckpointWriter` thread while the actor serves its
next calls (on ringwatch's runtime, `runtime/worker.py`). The contract with
the actor class:
- `__checkpoint__()` returns the state, or a `DeferredState` whose `build()`
  makes it later on the writer thread. `build` must read only what the actor
  no longer changes — a snapshot taken in `__checkpoint__` (a `GraphShard`
  returns its edge store's `snapshot()`, whose table is built off the actor's
  thread) — and its state is the one of the moment `__checkpoint__` ran.
- A state returned as is may share memory the actor goes on changing, so it
  is encoded on the actor's thread (a `pyarrow.Table` as Arrow IPC into a new
  buffer; anything else pickled, its raw buffers copied); only digest, write
  and fsync wait for the writer.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import pickle
import struct
import tempfile
import time
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import cloudpickle
import pyarrow as pa

from .errors import CheckpointError
from .files import write_atomically

_PICKLE_MAGIC = b"RWCKPT1\n"
_ARROW_MAGIC = b"RWARROW\n"
_KEEP = 2  # checkpoints kept per actor beyond those held: the latest and the one before
_HOLDS = ".holds"  # file store: one JSON list of held ids per holder, and the lock pruning and holding share
_REDIS_HOLDS = "ringwatch:checkpoint-holds"  # Redis store: a hash, holder -> JSON list of held ids

logger = logging.getLogger(__name__)


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


def is_arrow(data: bytes | memoryview) -> bool:
    """Whether checkpoint bytes hold an Arrow table (decoding them unpickles nothing)."""
    return bytes(memoryview(data)[:8]) == _ARROW_MAGIC


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

    def save(self, actor_id: str, state: Any) -> str:
        """Encode and write `state` durably (`write(actor_id, encode_state(state))`); returns its id."""
        ...

    def write(self, actor_id: str, parts: list[bytes | memoryview]) -> str:
        """Write an encoded checkpoint durably and prune the actor's old ones; returns its id."""
        ...

    def read(self, checkpoint_id: str) -> bytes:
        """The checkpoint's bytes, checked against the digest in its id (CheckpointError if absent or altered)."""
        ...

    def load(self, checkpoint_id: str) -> Any: ...

    def hold(self, holder: str, checkpoint_ids: Iterable[str]) -> list[str]:
        """Keep `checkpoint_ids` from pruning for `holder` (instead of what it held); those of them already gone."""
        ...


class FileCheckpointStore:
    """Checkpoints as files under one directory: `<dir>/<actor_id>/<sequence>.ckpt`."""

    def __init__(self, uri: str):
        self.uri = uri
        self.root = Path(urlparse(uri).path)

    def save(self, actor_id: str, state: Any) -> str:
        return self.write(actor_id, encode_state(state))

    def write(self, actor_id: str, parts: list[bytes | memoryview]) -> str:
        folder = self.root / actor_id
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{_digest(parts)}"
        write_atomically(folder / f"{name}.ckpt", parts)
        with self._holds_locked():
            held = self._held()
            for old in sorted(folder.glob("*.ckpt"))[:-_KEEP]:
                if held is not None and f"{actor_id}/{old.stem}" not in held:
                    old.unlink(missing_ok=True)
        return f"{actor_id}/{name}"

    def hold(self, holder: str, checkpoint_ids: Iterable[str]) -> list[str]:
        ids = sorted(set(checkpoint_ids))
        name = hashlib.sha256(holder.encode()).hexdigest()[:32]
        with self._holds_locked():
            write_atomically(self.root / _HOLDS / f"{name}.json", json.dumps({"holder": holder, "ids": ids}).encode())
            return [i for i in ids if not (self.root / f"{i}.ckpt").exists()]

    @contextmanager
    def _holds_locked(self) -> Iterator[None]:
        folder = self.root / _HOLDS
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _held(self) -> set[str] | None:
        """Every id some holder holds; None (prune nothing) if a hold cannot be read."""
        held: set[str] = set()
        for path in (self.root / _HOLDS).glob("*.json"):
            try:
                held.update(json.loads(path.read_bytes())["ids"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("checkpoint hold %s is not readable (%s): nothing pruned", path, exc)
                return None
        return held

    def read(self, checkpoint_id: str) -> bytes:
        root = self.root.resolve()
        path = (root / f"{checkpoint_id}.ckpt").resolve()
        if not path.is_relative_to(root):
            raise CheckpointError(f"checkpoint {checkpoint_id!r} names a file outside {root}: refused")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {checkpoint_id} is not in {self.uri} (is the directory shared "
                                  f"by every node?)") from None
        return verified(checkpoint_id, data)

    def load(self, checkpoint_id: str) -> Any:
        return decode_state(self.read(checkpoint_id))


class RedisCheckpointStore:
    """Checkpoints as Redis keys `ringwatch:checkpoints:<actor_id>/<sequence>`, each written by one SET."""

    def __init__(self, uri: str):
        import redis

        self.uri = uri
        self._redis = redis.Redis.from_url(uri, socket_timeout=30)

    def save(self, actor_id: str, state: Any) -> str:
        return self.write(actor_id, encode_state(state))

    def write(self, actor_id: str, parts: list[bytes | memoryview]) -> str:
        data = b"".join(bytes(p) for p in parts)
        checkpoint_id = f"{actor_id}/{time.time_ns():020d}-{_digest([data])}"
        self._redis.set(f"ringwatch:checkpoints:{checkpoint_id}", data)
        self._prune(actor_id)
        return checkpoint_id

    def _prune(self, actor_id: str) -> None:
        """Drop the actor's unheld checkpoints beyond the newest two; redone if a hold changed meanwhile."""
        import redis

        prefix = b"ringwatch:checkpoints:"
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(_REDIS_HOLDS)
                    held = {i for raw in pipe.hvals(_REDIS_HOLDS) for i in json.loads(raw)}
                    older = sorted(pipe.keys(f"ringwatch:checkpoints:{actor_id}/*"))[:-_KEEP]
                    doomed = [key for key in older if key[len(prefix):].decode() not in held]
                    pipe.multi()
                    if doomed:
                        pipe.delete(*doomed)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def hold(self, holder: str, checkpoint_ids: Iterable[str]) -> list[str]:
        ids = sorted(set(checkpoint_ids))
        self._redis.hset(_REDIS_HOLDS, holder, json.dumps(ids))
        return [i for i in ids if not self._redis.exists(f"ringwatch:checkpoints:{i}")]

    def read(self, checkpoint_id: str) -> bytes:
        data = self._redis.get(f"ringwatch:checkpoints:{checkpoint_id}")
        if data is None:
            raise CheckpointError(f"checkpoint {checkpoint_id} is not in {self.uri}")
        return verified(checkpoint_id, data)

    def load(self, checkpoint_id: str) -> Any:
        return decode_state(self.read(checkpoint_id))


def open_store(uri: str) -> CheckpointStore:
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return FileCheckpointStore(uri)
    if scheme in ("redis", "rediss", "unix"):
        return RedisCheckpointStore(uri)
    raise CheckpointError(f"checkpoint store {uri!r}: the URI must start with file:// or redis://")



@dataclass(frozen=True)
class DeferredState:
    """What `__checkpoint__` returns to have its state made off the actor's thread (see the module docstring).

    `build()` runs on the checkpoint writer thread while the actor serves other
    calls: it must read only data the actor no longer changes (a snapshot taken
    when `__checkpoint__` ran) and return the state (an Arrow table, or
    anything picklable).
    """

    build: Callable[[], Any]


@dataclass(frozen=True)
class Captured:
    """A state taken on the actor's thread: encoded already, or still to build (`DeferredState`)."""

    actor_id: str
    encoded: list[bytes | memoryview] | None = None
    deferred: DeferredState | None = None

    def parts(self) -> list[bytes | memoryview]:
        """The checkpoint's encoded parts (builds a deferred state: on the writer thread)."""
        if self.deferred is not None:
            return encode_state(self.deferred.build())
        return self.encoded


def _owned(parts: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """Encoded parts that share no memory with the actor: a pickle's raw buffers (views of its arrays) copied."""
    return [bytes(part) if isinstance(part, memoryview) else part for part in parts]


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

    def capture(self, instance: Any) -> Captured:
        """Take the actor's state now (on its thread); `CheckpointWriter` or `write` makes it durable."""
        getter = getattr(instance, "__checkpoint__", None)
        state = getter() if getter is not None else dict(vars(instance))
        self.calls_since = 0
        self.taken_at = time.monotonic()
        if isinstance(state, DeferredState):
            return Captured(self.actor_id, deferred=state)
        return Captured(self.actor_id, encoded=_owned(encode_state(state)))

    def write(self, captured: Captured) -> str:
        """Make a captured state durable; returns the checkpoint id."""
        return self.store.write(captured.actor_id, captured.parts())

    def take(self, instance: Any) -> str:
        """Capture and write the actor's state, both on the calling thread; returns the checkpoint id."""
        return self.write(self.capture(instance))

    def restore(self, instance: Any, checkpoint_id: str) -> None:
        state = self.store.load(checkpoint_id)
        restorer = getattr(instance, "__restore__", None)
        if restorer is not None:
            restorer(state)
        else:
            vars(instance).update(state)


Written = Callable[[str | None, Exception | None], None]  # (checkpoint id, or the error that stopped it)


class CheckpointWriter:
    """One thread that makes captured checkpoints durable, in the order they were captured.

    The actor's thread only captures (`ActorCheckpoints.capture`); building a
    deferred state, encoding, the digest, the write and the fsync happen here,
    so the actor serves its next calls meanwhile. `done(checkpoint_id, error)`
    runs on this thread once a checkpoint is durable (or failed): whoever
    answers for it hands the answer back to the actor's thread from there.
    Started with the first checkpoint; a daemon (a process that exits
    mid-write leaves only a temp file: no store names a partial checkpoint).
    """

    def __init__(self, checkpoints: ActorCheckpoints):
        self._checkpoints = checkpoints
        self._jobs: queue.SimpleQueue[tuple[Captured, Written]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, captured: Captured, done: Written) -> None:
        self._jobs.put((captured, done))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ringwatch-checkpoint-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            captured, done = self._jobs.get()
            try:
                checkpoint_id = self._checkpoints.write(captured)
            except Exception as exc:  # noqa: BLE001 - the actor's thread decides: log it, or fail the call
                done(None, exc)
            else:
                done(checkpoint_id, None)

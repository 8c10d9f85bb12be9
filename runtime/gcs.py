"""The Global Control Store: the cluster's shared tables, in Redis (or in memory for local mode).

Tables (Redis keys under `ringwatch:<namespace>:`):
- `nodes`      hash node_id -> JSON {node_id, address, resources, queued, mean_task_s, heartbeat}
- `functions`  hash function_id -> pickled code (stored once per function)
- `objects`    hash object_id -> JSON {node, size} (where a value lives)
- `actors`     hash actor_id -> JSON {actor_id, name, node, class_name, methods, state}
- `names`      hash actor name -> actor_id
- `dead`       hash node_id -> time it was declared dead (set once: HSETNX decides who declares)
- `actor_specs` hash actor_id -> pickled creation TaskSpec (to re-create it after its node died)
- `task:<object_id>` pickled TaskSpec that makes a large object held away from its owner
  (lineage for reconstruction), expiring after `LINEAGE_TTL_S`
- `kv:<key>`  the public key-value table (`ringwatch.runtime.kv_put` and friends): one Redis
  string per key, bytes, optionally expiring; `kv_put(..., overwrite=False)` is an atomic claim
- channel `events`: JSON node and actor events (`node_dead` tells everyone a node is gone)
Both implementations have the same methods, so the node does not care which it has.

In Redis every value and event is sealed with a key derived from the cluster
token (`auth.RecordSealer`) and opened before it is parsed or unpickled: a
value someone wrote without the token (or moved from another key) is ignored
and logged, never used. Anyone who can write to Redis can still delete records
or put back an older sealed value of the same key (which the cluster itself
wrote); they cannot make a node run code of their own.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .auth import MAX_SKEW_S, ClusterKeys, RecordSealer
from .errors import ForgedRecordError

logger = logging.getLogger(__name__)

LINEAGE_TTL_S = 3600
KV_OPS = ("put", "get", "delete", "keys")
EVENT_MAX_AGE_S = 2 * MAX_SKEW_S  # an older (replayed) event is ignored
_REPORTED_LIMIT = 10_000


class InMemoryGcs:
    """The GCS of a one-node local cluster: the same tables, in this process."""

    def __init__(self, namespace: str = "default"):
        self.namespace = namespace
        self._tables: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _put(self, table: str, key: str, value: Any) -> None:
        with self._lock:
            self._tables.setdefault(table, {})[key] = value

    def _get(self, table: str, key: str) -> Any:
        with self._lock:
            return self._tables.get(table, {}).get(key)

    def _all(self, table: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._tables.get(table, {}))

    def _delete(self, table: str, key: str) -> None:
        with self._lock:
            self._tables.get(table, {}).pop(key, None)

    def publish(self, event: dict) -> None:
        logger.debug("gcs event %s", event)

    # The shared surface (RedisGcs overrides the storage primitives above).
    def register_node(self, record: dict) -> None:
        self._put("nodes", record["node_id"], {**record, "heartbeat": time.time()})
        self.publish({"type": "node_up", "node_id": record["node_id"]})

    def heartbeat(self, node_id: str, load: dict) -> None:
        record = self._get("nodes", node_id) or {"node_id": node_id}
        self._put("nodes", node_id, {**record, **load, "heartbeat": time.time()})

    def remove_node(self, node_id: str) -> None:
        self._delete("nodes", node_id)
        self.publish({"type": "node_down", "node_id": node_id})

    def nodes(self, heartbeat_timeout_s: float = 5.0) -> list[dict]:
        """Every node record; `alive` is False once it is declared dead or its heartbeats are overdue."""
        now = time.time()
        dead = self.dead_nodes()
        return [{**r, "alive": r["node_id"] not in dead
                 and now - r.get("heartbeat", 0) <= r.get("heartbeat_timeout_s", heartbeat_timeout_s)}
                for r in self._all("nodes").values()]

    def declare_dead(self, node_id: str) -> bool:
        """Record the node as dead; True only for the one caller whose record it was."""
        with self._lock:
            table = self._tables.setdefault("dead", {})
            if node_id in table:
                return False
            table[node_id] = time.time()
            return True

    def dead_nodes(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._all("dead").items()}

    def put_actor_spec(self, actor_id: str, spec_bytes: bytes) -> None:
        self._put("actor_specs", actor_id, spec_bytes)

    def actor_spec(self, actor_id: str) -> bytes | None:
        return self._get("actor_specs", actor_id)

    def actors(self) -> list[dict]:
        return list(self._all("actors").values())

    def put_function(self, function_id: str, code: bytes) -> None:
        self._put("functions", function_id, code)

    def get_function(self, function_id: str) -> bytes | None:
        return self._get("functions", function_id)

    def set_object_location(self, object_id: str, node_id: str, size: int) -> None:
        self._put("objects", object_id, {"node": node_id, "size": size})

    def object_location(self, object_id: str) -> dict | None:
        return self._get("objects", object_id)

    def remove_object(self, object_id: str) -> None:
        self._delete("objects", object_id)

    def record_task(self, object_id: str, spec_bytes: bytes) -> None:
        self._put("tasks", object_id, spec_bytes)

    def task(self, object_id: str) -> bytes | None:
        return self._get("tasks", object_id)

    def register_actor(self, record: dict) -> None:
        self._put("actors", record["actor_id"], record)
        if record.get("name"):
            self._put("names", record["name"], record["actor_id"])
        self.publish({"type": "actor", "actor_id": record["actor_id"], "state": record.get("state")})

    def actor(self, actor_id: str) -> dict | None:
        return self._get("actors", actor_id)

    def actor_by_name(self, name: str) -> dict | None:
        actor_id = self._get("names", name)
        return self.actor(actor_id) if actor_id else None

    def remove_actor_name(self, name: str, actor_id: str) -> None:
        if self._get("names", name) == actor_id:
            self._delete("names", name)

    # The key-value table. In memory an entry is (value, expires_at or None).
    def kv_put(self, key: str, value: bytes, overwrite: bool = True, ttl_s: float | None = None) -> bool:
        """Store `value` at `key`; with `overwrite=False` only if the key is absent (True if stored)."""
        with self._lock:
            table = self._tables.setdefault("kv", {})
            if not overwrite and self._kv_live(table, key) is not None:
                return False
            table[key] = (bytes(value), None if ttl_s is None else time.monotonic() + ttl_s)
            return True

    def kv_get(self, key: str) -> bytes | None:
        with self._lock:
            return self._kv_live(self._tables.setdefault("kv", {}), key)

    def kv_delete(self, key: str) -> bool:
        with self._lock:
            return self._tables.setdefault("kv", {}).pop(key, None) is not None

    def kv_keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            table = self._tables.setdefault("kv", {})
            return sorted(k for k in list(table) if k.startswith(prefix) and self._kv_live(table, k) is not None)

    @staticmethod
    def _kv_live(table: dict, key: str) -> bytes | None:
        entry = table.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= time.monotonic():
            del table[key]
            return None
        return entry[0]

    def close(self) -> None:
        return None


def kv_request(store: InMemoryGcs, op: str, *args: Any) -> Any:
    """Run one key-value operation (`KV_OPS`) on a GCS: how nodes and drivers serve `rt.kv_*`."""
    if op not in KV_OPS:
        raise ValueError(f"unknown key-value operation {op!r}; known: {KV_OPS}")
    return getattr(store, f"kv_{op}")(*args)


class RedisGcs(InMemoryGcs):
    """The GCS in Redis: namespaced hashes of sealed values (JSON records; pickled code and lineage as bytes)."""

    _BINARY = {"functions", "tasks", "actor_specs", "kv"}

    def __init__(self, url: str, namespace: str = "default", *, keys: ClusterKeys):
        super().__init__(namespace)
        self.url = url
        # Commands retry with backoff for a few seconds (a Redis restart); callers that must not
        # block longer catch redis.RedisError and carry on with what they knew.
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=2,
                                           retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 4),
                                           retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                                           health_check_interval=10)
        self._prefix = f"ringwatch:{namespace}:"
        self._sealer = RecordSealer(keys.records, namespace)
        self._reported: set[tuple[str, str, int]] = set()
        self._redis.ping()

    def _key(self, table: str) -> str:
        return self._prefix + table

    def _encode(self, table: str, key: str, value: Any) -> bytes:
        payload = value if table in self._BINARY else json.dumps(value).encode()
        return self._sealer.seal(table, key, payload)

    def _decode(self, table: str, key: str, raw: bytes | None) -> Any:
        """The value, once its seal is verified; None (and one log line) for a forged one."""
        if raw is None:
            return None
        try:
            payload = self._sealer.open(table, key, raw)
        except ForgedRecordError as exc:
            self._report(table, key, raw, exc)
            return None
        return payload if table in self._BINARY else json.loads(payload)

    def _report(self, table: str, key: str, raw: bytes, exc: ForgedRecordError) -> None:
        seen = (table, key, hash(raw))
        if seen in self._reported:
            return
        if len(self._reported) >= _REPORTED_LIMIT:
            self._reported.clear()
        self._reported.add(seen)
        logger.warning("ignored a forged GCS record: %s (written without this cluster's token; someone else "
                       "can write to this Redis)", exc)

    def _put(self, table: str, key: str, value: Any) -> None:
        self._redis.hset(self._key(table), key, self._encode(table, key, value))

    def _get(self, table: str, key: str) -> Any:
        return self._decode(table, key, self._redis.hget(self._key(table), key))

    def _all(self, table: str) -> dict[str, Any]:
        found = {}
        for raw_key, raw in self._redis.hgetall(self._key(table)).items():
            key = raw_key.decode(errors="replace")
            value = self._decode(table, key, raw)
            if value is not None:
                found[key] = value
        return found

    def _delete(self, table: str, key: str) -> None:
        self._redis.hdel(self._key(table), key)

    def publish(self, event: dict) -> None:
        payload = json.dumps({**event, "at": time.time()}).encode()
        self._redis.publish(self._key("events"), self._sealer.seal("events", "", payload))

    def read_event(self, data: bytes) -> dict | None:
        """An event from the channel, once its seal is verified and it is recent; None otherwise."""
        event = self._decode("events", "", data)
        if event is None:
            return None
        if abs(time.time() - event.get("at", 0)) > EVENT_MAX_AGE_S:
            logger.warning("ignored a GCS event sent %.0f s ago (a replay?): %s", time.time() - event.get("at", 0),
                           event.get("type"))
            return None
        return event

    _DELETE_IF_EQUAL = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0"

    def declare_dead(self, node_id: str) -> bool:
        key = self._key("dead")
        for _ in range(2):
            if self._redis.hsetnx(key, node_id, self._encode("dead", node_id, time.time())):
                return True
            raw = self._redis.hget(key, node_id)
            if raw is None or self._decode("dead", node_id, raw) is not None:
                return False  # declared by a node of this cluster (or gone again: let the next beat decide)
            # A forged declaration must not stop the real one: remove exactly that value, then declare.
            self._redis.eval(self._DELETE_IF_EQUAL, 1, key, node_id, raw)
        return False

    def dead_nodes(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._all("dead").items()}

    def record_task(self, object_id: str, spec_bytes: bytes) -> None:
        self._redis.set(self._key(f"task:{object_id}"), self._encode("tasks", object_id, spec_bytes),
                        ex=LINEAGE_TTL_S)

    def task(self, object_id: str) -> bytes | None:
        return self._decode("tasks", object_id, self._redis.get(self._key(f"task:{object_id}")))

    def _kv_key(self, key: str) -> str:
        return self._key(f"kv:{key}")

    def kv_put(self, key: str, value: bytes, overwrite: bool = True, ttl_s: float | None = None) -> bool:
        sealed = self._encode("kv", key, bytes(value))
        expire_ms = None if ttl_s is None else max(1, int(ttl_s * 1000))
        for _ in range(2):
            if self._redis.set(self._kv_key(key), sealed, nx=not overwrite, px=expire_ms):
                return True
            raw = self._redis.get(self._kv_key(key))
            if raw is None or self._decode("kv", key, raw) is not None:
                return False  # held by this cluster (or gone again: the caller may claim once more)
            # A forged value must not block a real claim: remove exactly that value, then claim.
            self._redis.eval(self._DELETE_KEY_IF_EQUAL, 1, self._kv_key(key), raw)
        return False

    _DELETE_KEY_IF_EQUAL = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

    def kv_get(self, key: str) -> bytes | None:
        return self._decode("kv", key, self._redis.get(self._kv_key(key)))

    def kv_delete(self, key: str) -> bool:
        return bool(self._redis.delete(self._kv_key(key)))

    def kv_keys(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix` whose values are this cluster's (forged ones are left out)."""
        start = len(self._kv_key(""))
        pattern = self._kv_key(_glob_escape(prefix)) + "*"
        keys = [raw.decode(errors="replace")[start:] for raw in self._redis.scan_iter(match=pattern, count=1000)]
        return sorted(k for k in keys if self.kv_get(k) is not None)

    def subscribe(self) -> redis.client.PubSub:
        """A subscription to the event channel (read with `get_message`, open with `read_event`)."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self._key("events"))
        return pubsub

    def close(self) -> None:
        self._redis.close()


def _glob_escape(text: str) -> str:
    """`text` matched literally in a Redis SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)

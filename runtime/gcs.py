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
- channel `events`: JSON node and actor events (`node_dead` tells everyone a node is gone)
Both implementations have the same methods, so the node does not care which it has.
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

logger = logging.getLogger(__name__)

LINEAGE_TTL_S = 3600


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

    def close(self) -> None:
        return None


class RedisGcs(InMemoryGcs):
    """The GCS in Redis: namespaced hashes, JSON records, pickled code and lineage as bytes."""

    _BINARY = {"functions", "tasks", "actor_specs"}

    def __init__(self, url: str, namespace: str = "default"):
        super().__init__(namespace)
        self.url = url
        # Commands retry with backoff for a few seconds (a Redis restart); callers that must not
        # block longer catch redis.RedisError and carry on with what they knew.
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=2,
                                           retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 4),
                                           retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                                           health_check_interval=10)
        self._prefix = f"ringwatch:{namespace}:"
        self._redis.ping()

    def _key(self, table: str) -> str:
        return self._prefix + table

    def _encode(self, table: str, value: Any) -> bytes | str:
        return value if table in self._BINARY else json.dumps(value)

    def _decode(self, table: str, raw: bytes | None) -> Any:
        if raw is None:
            return None
        return raw if table in self._BINARY else json.loads(raw)

    def _put(self, table: str, key: str, value: Any) -> None:
        self._redis.hset(self._key(table), key, self._encode(table, value))

    def _get(self, table: str, key: str) -> Any:
        return self._decode(table, self._redis.hget(self._key(table), key))

    def _all(self, table: str) -> dict[str, Any]:
        return {k.decode(): self._decode(table, v) for k, v in self._redis.hgetall(self._key(table)).items()}

    def _delete(self, table: str, key: str) -> None:
        self._redis.hdel(self._key(table), key)

    def publish(self, event: dict) -> None:
        self._redis.publish(self._key("events"), json.dumps(event))

    def declare_dead(self, node_id: str) -> bool:
        return bool(self._redis.hsetnx(self._key("dead"), node_id, time.time()))

    def record_task(self, object_id: str, spec_bytes: bytes) -> None:
        self._redis.set(self._key(f"task:{object_id}"), spec_bytes, ex=LINEAGE_TTL_S)

    def task(self, object_id: str) -> bytes | None:
        return self._redis.get(self._key(f"task:{object_id}"))

    def subscribe(self) -> redis.client.PubSub:
        """A subscription to the event channel (read with `get_message`)."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self._key("events"))
        return pubsub

    def close(self) -> None:
        self._redis.close()

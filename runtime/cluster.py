"""Many nodes as one runtime: placement, forwarding, object transfer, heartbeats, drivers.

A `ClusterNode` is a `Node` plus its gRPC service, its record in the GCS and a
`ClusterLink` the node's dispatcher calls for anything that crosses nodes.
Scheduling is bottom-up, as in the Ray paper: a call runs on the node that
received it when it can and that node's queue is short; otherwise it spills
to the feasible node with the lowest estimated wait — its queue length times
the mean task time, plus the bytes of inputs it would have to fetch.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle

from .errors import ResourceUnavailableError
from .gcs import RedisGcs
from .node import Node
from .object_store import SHARED_THRESHOLD, Blob, from_wire, to_wire
from .protocol import ACTOR_CREATE, TASK, TaskSpec
from .transport import NodeClient, serve

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0
_MEAN_TASK_S = 0.01
_FETCH_BYTES_PER_S = 1e9


class ClusterLink:
    """What a node needs from the rest of the cluster; called on the node's dispatcher thread."""

    def __init__(self, gcs: RedisGcs, address: str, node_id: str, token: str):
        self.gcs = gcs
        self.address = address
        self.node_id = node_id
        self.token = token
        self.node: Node | None = None
        self._clients: dict[str, NodeClient] = {}
        self._clients_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="ringwatch-transfer")
        # One ordered sender per target node: calls forwarded there arrive in the order they were made.
        self._senders: dict[str, ThreadPoolExecutor] = {}
        self._peers: list[dict] = []
        self._peers_at = 0.0

    def client(self, address: str) -> NodeClient:
        with self._clients_lock:
            client = self._clients.get(address)
            if client is None:
                client = self._clients[address] = NodeClient(address, self.token)
            return client

    # ---- placement ---------------------------------------------------------------------------

    def peers(self) -> list[dict]:
        if time.monotonic() - self._peers_at > HEARTBEAT_S / 2:
            self._peers = [p for p in self.gcs.nodes(HEARTBEAT_TIMEOUT_S) if p["alive"]]
            self._peers_at = time.monotonic()
        return self._peers

    def place(self, spec: TaskSpec, node: Node) -> str | None:
        """Address of the node that should run `spec`, or None for this one."""
        needs = {"CPU": spec.num_cpus if spec.kind == TASK else 0.0, **spec.resources}
        feasible = [p for p in self.peers() if all(p["resources"].get(k, 0.0) >= v for k, v in needs.items())]
        if not feasible:
            raise ResourceUnavailableError(
                f"{spec.name} needs {needs} but no live node has that much "
                f"(nodes: {[(p['node_id'], p['resources']) for p in self.peers()]})")
        sizes = self._dep_sizes(spec, node)
        here = next((p for p in feasible if p["address"] == self.address), None)
        if here is not None and len(node._ready) < 2 * node.num_workers and not self._bytes_elsewhere(sizes, self.address):
            return None
        best = min(feasible, key=lambda p: self._estimated_wait(p, sizes, node))
        return None if best["address"] == self.address else best["address"]

    def _dep_sizes(self, spec: TaskSpec, node: Node) -> dict[str, tuple[str, int]]:
        """Where each input lives and how big it is (small inputs do not steer placement)."""
        sizes = {}
        for dep in spec.deps:
            location = self.gcs.object_location(dep)
            if location is not None and location["size"] > SHARED_THRESHOLD:
                sizes[dep] = (self._address_of(location["node"]), location["size"])
        return sizes

    def _address_of(self, node_id: str) -> str:
        return next((p["address"] for p in self.peers() if p["node_id"] == node_id), "")

    @staticmethod
    def _bytes_elsewhere(sizes: dict[str, tuple[str, int]], address: str) -> int:
        return sum(size for where, size in sizes.values() if where != address)

    def _estimated_wait(self, peer: dict, sizes: dict[str, tuple[str, int]], node: Node) -> float:
        queued = len(node._ready) if peer["address"] == self.address else peer.get("queued", 0)
        mean = peer.get("mean_task_s") or _MEAN_TASK_S
        return queued * mean + self._bytes_elsewhere(sizes, peer["address"]) / _FETCH_BYTES_PER_S

    # ---- moving calls and objects ------------------------------------------------------------

    def forward(self, spec: TaskSpec, address: str) -> None:
        """Run `spec` on another node; its result comes back here when ready."""
        sender = self._senders.get(address)
        if sender is None:
            sender = self._senders[address] = ThreadPoolExecutor(1, thread_name_prefix="ringwatch-forward")
        sender.submit(self._submit_remotely, spec, address)

    def _submit_remotely(self, spec: TaskSpec, address: str) -> None:
        """The node that runs `spec` sends its result back (`result` or `held_elsewhere`)."""
        try:
            self.client(address).call("submit", spec)
        except Exception as exc:  # the node or the network failed: the caller's get says so
            self._deliver(spec.task_id, None, exc)

    def fetch(self, object_id: str, address: str) -> None:
        """Copy an object another node holds (or will make) to this node."""
        self._pool.submit(self._fetch, object_id, address)

    def _fetch(self, object_id: str, address: str) -> None:
        try:
            self._pull(object_id, self.client(address))
        except Exception as exc:
            self._deliver(object_id, None, exc)

    def _pull(self, object_id: str, client: NodeClient) -> None:
        client.call("wait", [object_id], 1, None)
        value = pickle.loads(client.fetch(object_id))
        if isinstance(value, BaseException):
            self._deliver(object_id, None, value)
        else:
            self._deliver(object_id, from_wire(value), None)

    def _deliver(self, object_id: str, blob: Blob | None, error: BaseException | None) -> None:
        self.node.post("remote_ready", (object_id, blob, error))

    def send(self, address: str, method: str, *args: Any) -> None:
        self._pool.submit(self.client(address).call, method, *args)

    # ---- GCS records -------------------------------------------------------------------------

    def function_registered(self, function_id: str, code: bytes) -> None:
        # Synchronous (once per function): a call forwarded next must find the code in the GCS.
        self.gcs.put_function(function_id, code)

    def object_made(self, object_id: str, size: int) -> None:
        if size > SHARED_THRESHOLD:  # only large objects steer placement; small ones travel inline
            # Synchronous, so the location is known before anyone can hold a ref to the ready value.
            self.gcs.set_object_location(object_id, self.node_id, size)

    def object_freed(self, object_id: str, remote: str | None) -> None:
        if remote is None:
            self._pool.submit(self.gcs.remove_object, object_id)

    def actor_placed(self, actor_id: str, name: str | None, class_name: str, methods: tuple[str, ...]) -> None:
        self.gcs.register_actor({"actor_id": actor_id, "name": name, "node": self.node_id, "address": self.address,
                                 "class_name": class_name, "methods": list(methods), "state": "alive"})

    def actor_gone(self, actor_id: str, name: str | None, reason: str) -> None:
        record = self.gcs.actor(actor_id) or {"actor_id": actor_id, "name": name}
        self.gcs.register_actor({**record, "state": "dead", "reason": reason, "name": None})
        if name:
            self.gcs.remove_actor_name(name, actor_id)

    def actor_address(self, actor_id: str) -> str | None:
        record = self.gcs.actor(actor_id)
        return record["address"] if record and record.get("state") == "alive" else None

    def actor_by_name(self, name: str) -> dict | None:
        record = self.gcs.actor_by_name(name)
        return record if record and record.get("state") == "alive" else None

    def nodes(self) -> list[dict]:
        return self.gcs.nodes(HEARTBEAT_TIMEOUT_S)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for sender in self._senders.values():
            sender.shutdown(wait=False, cancel_futures=True)
        with self._clients_lock:
            for client in self._clients.values():
                client.close()


class ClusterNode:
    """A node of a cluster: worker pool, gRPC service on `host:port`, record and heartbeats in the GCS."""

    def __init__(self, gcs_url: str, *, token: str, host: str = "127.0.0.1", port: int = 0,
                 num_workers: int | None = None, resources: dict[str, float] | None = None,
                 namespace: str = "default", node_id: str | None = None):
        self.node_id = node_id or f"node-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.gcs = RedisGcs(gcs_url, namespace)
        self._server, bound = serve(self._handle, self._export, token=token, host=host, port=port)
        self.address = f"{host}:{bound}"
        self.link = ClusterLink(self.gcs, self.address, self.node_id, token)
        self.node = Node(num_workers or os.cpu_count() or 1, resources, node_id=self.node_id, cluster=self.link)
        self.link.node = self.node
        self.gcs.register_node({"node_id": self.node_id, "address": self.address,
                                "resources": self.node.resources, "pid": os.getpid()})
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="ringwatch-heartbeat", daemon=True)
        self._heartbeat.start()
        logger.info("node %s serving on %s with %s", self.node_id, self.address, self.node.resources)

    def _handle(self, method: str, args: tuple) -> Any:
        if method == "batch":
            for item_method, item_args in args[0]:
                self.node.post(item_method, item_args)
            return None
        value = self.node.call(method, *args)
        if method == "get":
            return [to_wire(v) if isinstance(v, Blob) else v for v in value]
        return value

    def _export(self, object_id: str) -> bytes:
        value = self.node.call("export", object_id)
        return cloudpickle.dumps(to_wire(value) if isinstance(value, Blob) else value)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                load = self.node.describe()
                self.gcs.heartbeat(self.node_id, {"queued": load["queued"], "mean_task_s": _MEAN_TASK_S})
            except Exception as exc:  # Redis away: keep serving, try again next beat
                logger.warning("heartbeat to the GCS failed: %s", exc)

    def wait(self) -> None:
        self._stop.wait()

    def stop(self) -> None:
        """Leave the cluster cleanly: out of the GCS, workers stopped, service closed."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self.gcs.remove_node(self.node_id)
        except Exception as exc:
            logger.warning("could not remove node %s from the GCS: %s", self.node_id, exc)
        self._server.stop(grace=1)
        self.node.shutdown()
        self.link.close()
        self.gcs.close()


class RemoteBackend:
    """A driver's view of the cluster: requests go over gRPC to one node (its entry point).

    Requests that need no answer are batched and sent in order ahead of the next
    request that does, so a burst of submissions costs one round trip.
    """

    pack_threshold = 2**62  # values travel inline; the receiving node lays large ones into shared memory

    def __init__(self, gcs: RedisGcs, client: NodeClient):
        self.gcs = gcs
        self.client = client
        self._pending: list[tuple[str, tuple]] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._closed = threading.Event()
        self._flusher = threading.Thread(target=self._flush_periodically, name="ringwatch-driver-flush", daemon=True)
        self._flusher.start()

    def post(self, method: str, args: tuple) -> None:
        with self._lock:
            self._pending.append((method, args))

    def call(self, method: str, *args: Any) -> Any:
        self.flush()
        if method == "nodes":
            return self.gcs.nodes(HEARTBEAT_TIMEOUT_S)
        return self.client.call(method, *args)

    def flush(self) -> None:
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, []
            if batch:
                self.client.call("batch", batch)

    def _flush_periodically(self) -> None:
        while not self._closed.wait(0.005):
            try:
                self.flush()
            except Exception as exc:  # the node is away: the next call reports it to the caller
                logger.warning("driver could not reach its node: %s", exc)

    def close(self) -> None:
        self._closed.set()
        try:
            self.flush()
        finally:
            self.client.close()
            self.gcs.close()


def connect_driver(address: str, *, token: str | None, namespace: str = "default") -> RemoteBackend:
    """Join the cluster whose GCS is at `address` (redis://...) as a driver."""
    token = token or os.environ.get("RINGWATCH_TOKEN")
    if not token:
        raise ValueError("joining a cluster needs its token: pass token=... or set RINGWATCH_TOKEN")
    gcs = RedisGcs(address, namespace)
    live = [n for n in gcs.nodes(HEARTBEAT_TIMEOUT_S) if n["alive"]]
    if not live:
        gcs.close()
        raise ConnectionError(f"no live ringwatch node is registered in the GCS at {address}")
    entry = min(live, key=lambda n: n.get("queued", 0))
    return RemoteBackend(gcs, NodeClient(entry["address"], token))

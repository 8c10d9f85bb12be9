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
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import cloudpickle
import redis

from .auth import ClusterKeys
from .direct import DirectSettings, direct_key
from .errors import NodesLateError, NodeUnavailableError, ResourceUnavailableError, TokenMissingError
from .gcs import RedisGcs
from .heartbeats import HEARTBEAT_S, HEARTBEAT_TIMEOUT_S
from .node import Node
from .object_store import SHARED_THRESHOLD, Blob, from_wire, to_wire
from .protocol import TASK, TaskSpec
from .tls import TlsFiles
from .transport import NodeClient, serve

logger = logging.getLogger(__name__)

DRIVER_HEARTBEAT_TIMEOUT_S = 60.0
_MEAN_TASK_S = 0.01
# RINGWATCH_LINEAGE=0 turns lineage recording off (lost objects then cannot be rebuilt); for benchmarks.
LINEAGE_ENABLED = os.environ.get("RINGWATCH_LINEAGE", "1") != "0"
# What moving an object between nodes achieves (gRPC, signed 2 MiB chunks): 30-110 MB/s measured on a loaded
# 2-core machine. At 1e9 a 16 MB input weighed as much as two queued 10 ms tasks, so a heartbeat-old queue
# length sent a task away from its data.
_FETCH_BYTES_PER_S = 1e8


class ClusterLink:
    """What a node needs from the rest of the cluster; called on the node's dispatcher thread."""

    def __init__(self, gcs: RedisGcs, address: str, node_id: str, keys: ClusterKeys,
                 heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S, tls: TlsFiles | None = None, *,
                 driver: bool = False):
        self.gcs = gcs
        self.address = address
        self.driver = driver  # a driver's light node: it places everything elsewhere
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._suspects: dict[str, float] = {}  # address -> until when placement avoids it
        self._code_sent: dict[str, set[str]] = {}  # address -> function ids already sent there
        self.node_id = node_id
        self.keys = keys
        self.tls = tls
        self._post: Callable[[str, tuple], None] | None = None
        self._code_of: Callable[[str], bytes] | None = None
        self._resources: dict[str, float] = {}
        self._clients: dict[str, NodeClient] = {}
        self._clients_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="ringwatch-transfer")
        # One outbox and one sender per target node: what is sent there arrives in the order sent.
        self._outboxes: dict[str, list[tuple[str, tuple]]] = {}
        self._outbox_lock = threading.Lock()
        self._senders: dict[str, ThreadPoolExecutor] = {}
        self._peers: list[dict] = []
        self._peers_at = 0.0

    def attach(self, post: Callable[[str, tuple], None], code_of: Callable[[str], bytes],
               resources: dict[str, float]) -> None:
        """The node this link serves: where to post what arrives, its functions' code, its resources.

        Called before the node's dispatcher starts; the nodes are read now, so a
        GCS outage right after joining does not leave placement blind.
        """
        self._post, self._code_of, self._resources = post, code_of, resources
        self.peers()

    def direct_settings(self) -> DirectSettings:
        """How this node's actor workers serve direct calls and how it makes them (key from the token)."""
        tls = (str(self.tls.cert), str(self.tls.key), str(self.tls.ca)) if self.tls is not None else None
        return DirectSettings(direct_key(self.keys.calls), self.address.rpartition(":")[0], self.address, tls)

    def client(self, address: str) -> NodeClient:
        with self._clients_lock:
            client = self._clients.get(address)
            if client is None:
                client = self._clients[address] = NodeClient(address, self.keys, tls=self.tls)
            return client

    # ---- placement ---------------------------------------------------------------------------

    def peers(self) -> list[dict]:
        """Live nodes that run work (not drivers), refreshed from the GCS twice a heartbeat.

        While the GCS is away, the last known list (and always this node, unless it is a driver's).
        """
        now = time.monotonic()
        if now - self._peers_at > HEARTBEAT_S / 2:
            try:
                self._peers = [p for p in self.gcs.nodes(self.heartbeat_timeout_s) if p["alive"] and not p.get("driver")]
            except redis.RedisError as exc:
                logger.warning("GCS unreachable, placing with the last known nodes: %s", exc)
            if not self.driver and not any(p["address"] == self.address for p in self._peers):
                self._peers = [*self._peers, {"node_id": self.node_id, "address": self.address,
                                              "resources": self._resources, "queued": 0}]
            self._peers_at = now
        return [p for p in self._peers if self._suspects.get(p["address"], 0) < now]

    def _undeclared_peers(self) -> list[dict]:
        """Nodes that run work and are not declared dead, alive or not: those that may yet take a call.

        Right after a GCS outage every node's heartbeat is overdue until its next beat.
        """
        dead = self.gcs.dead_nodes()
        return [p for p in self.gcs.nodes(self.heartbeat_timeout_s) if not p.get("driver") and p["node_id"] not in dead]

    def suspect(self, address: str) -> None:
        """A call to `address` failed: place nothing there until its heartbeats say whether it is dead."""
        self._suspects[address] = time.monotonic() + self.heartbeat_timeout_s

    def reachable(self, address: str) -> bool:
        """False for a node declared dead or one a call just failed to reach."""
        return self._suspects.get(address, 0) < time.monotonic()

    def node_died(self, address: str) -> None:
        self._suspects[address] = float("inf")
        self._code_sent.pop(address, None)

    def place(self, spec: TaskSpec, queued: int, sent: Mapping[str, int],
              known: Mapping[str, tuple[str, int]]) -> str | None:
        """Address of the node that should run `spec`, or None for this one.

        `queued`: tasks ready here; `sent`: tasks this node sent to each address that have not
        finished (a node's own heartbeat tells of them only a beat later); `known`: where this
        node knows inputs are and their sizes (the GCS is asked about the others).
        """
        needs = {"CPU": spec.num_cpus if spec.kind == TASK else 0.0, **spec.resources}
        feasible = [p for p in self.peers() if _fits(p, needs)]
        if not feasible:
            try:
                late = [p["node_id"] for p in self._undeclared_peers() if _fits(p, needs)]
            except redis.RedisError as exc:
                raise NodesLateError(f"{spec.name} needs {needs}: no live node is known and the GCS is "
                                     f"unreachable ({exc})") from exc
            if late:
                raise NodesLateError(f"{spec.name} needs {needs}: only nodes whose heartbeats are late have that "
                                     f"much ({late}); no live node does")
            raise ResourceUnavailableError(
                f"{spec.name} needs {needs} but no live node has that much "
                f"(nodes: {[(p['node_id'], p['resources']) for p in self.peers()]})")
        sizes = self._dep_sizes(spec, known)
        here = next((p for p in feasible if p["address"] == self.address), None)
        if here is not None and queued < 2 * here["resources"].get("CPU", 1) \
                and not self._bytes_elsewhere(sizes, self.address):
            return None
        if sizes:  # large inputs: where most of their bytes are, unless that node is saturated
            held = {p["address"]: sum(size for where, size in sizes.values() if where == p["address"])
                    for p in feasible}
            holder = max(feasible, key=lambda p: held[p["address"]])
            load = queued if holder["address"] == self.address else holder.get("queued", 0) + sent.get(
                holder["address"], 0)
            if held[holder["address"]] and load < 2 * holder["resources"].get("CPU", 1):
                return None if holder["address"] == self.address else holder["address"]
        best = min(feasible, key=lambda p: self._estimated_wait(p, sizes, queued, sent))
        return None if best["address"] == self.address else best["address"]

    def _dep_sizes(self, spec: TaskSpec, known: Mapping[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
        """Where each large input lives and how big it is (small inputs do not steer placement)."""
        sizes = {dep: where for dep, where in known.items() if where[1] > SHARED_THRESHOLD}
        for dep in spec.deps:
            if dep in known:
                continue
            try:
                location = self.gcs.object_location(dep)
            except redis.RedisError:
                continue
            if location is not None and location["size"] > SHARED_THRESHOLD:
                sizes[dep] = (self._address_of(location["node"]), location["size"])
        return sizes

    def _address_of(self, node_id: str) -> str:
        return next((p["address"] for p in self.peers() if p["node_id"] == node_id), "")

    @staticmethod
    def _bytes_elsewhere(sizes: dict[str, tuple[str, int]], address: str) -> int:
        return sum(size for where, size in sizes.values() if where != address)

    def _estimated_wait(self, peer: dict, sizes: dict[str, tuple[str, int]], queued_here: int,
                        sent: Mapping[str, int]) -> float:
        address = peer["address"]
        queued = queued_here if address == self.address else peer.get("queued", 0) + sent.get(address, 0)
        mean = peer.get("mean_task_s") or _MEAN_TASK_S
        per_cpu = queued / max(peer["resources"].get("CPU", 1.0), 1.0)
        return per_cpu * mean + self._bytes_elsewhere(sizes, address) / _FETCH_BYTES_PER_S

    # ---- moving calls and objects ------------------------------------------------------------

    def forward(self, spec: TaskSpec, address: str) -> None:
        """Run `spec` on another node; its result comes back here when ready."""
        sent = self._code_sent.setdefault(address, set())
        if spec.function_id is not None and spec.function_id not in sent:
            spec = replace(spec, code=self._code_of(spec.function_id))
            sent.add(spec.function_id)
        self.send(address, "submit", spec)

    def send(self, address: str, method: str, *args: Any) -> None:
        """Post a request to another node, in order with the others sent there.

        Requests wait in one outbox per node and go as one batch per round trip:
        a burst of calls, results and releases costs one RPC. When the node is
        unreachable, the calls among them come back through `forward_failed`.
        """
        with self._outbox_lock:
            outbox = self._outboxes.get(address)
            if outbox is None:
                outbox = self._outboxes[address] = []
                self._senders[address] = ThreadPoolExecutor(1, thread_name_prefix="ringwatch-send")
            outbox.append((method, args))
            if len(outbox) > 1:
                return  # a send is already due to take it
        self._senders[address].submit(self._send_batch, address)

    def _send_batch(self, address: str) -> None:
        with self._outbox_lock:
            batch, self._outboxes[address] = self._outboxes[address], []
        if not batch:
            return
        try:
            self.client(address).call("batch", batch)
        except ConnectionError as exc:  # the node is unreachable: the caller's node decides what now
            for method, args in batch:
                if method == "submit":
                    self._post("forward_failed", (replace(args[0], code=None), address, exc))
                else:
                    logger.warning("could not send %s to %s: %s", method, address, exc)
            return
        except Exception as exc:
            for method, args in batch:
                if method == "submit":
                    self._deliver(args[0].task_id, None, exc)
            return

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
        self._post("remote_ready", (object_id, blob, error))

    def ask(self, address: str, method: str, *args: Any, then: Callable[[bool, Any], None]) -> None:
        """Call another node; `then(ok, answer)` runs on this node's dispatcher thread."""
        def call() -> None:
            try:
                answer = (True, self.client(address).call(method, *args))
            except Exception as exc:
                answer = (False, exc)
            self._post("answered", (then, *answer))
        self._pool.submit(call)

    # ---- GCS records -------------------------------------------------------------------------

    def function_code(self, function_id: str) -> bytes | None:
        return self.gcs.get_function(function_id)

    def function_registered(self, function_id: str, code: bytes) -> None:
        # Forwarded calls carry their code too; the table serves restarts and late joiners.
        self._pool.submit(self._quietly, self.gcs.put_function, function_id, code)

    def object_made(self, object_id: str, size: int) -> None:
        # Only large objects steer placement (small ones travel inline), and not a driver's: every node is
        # as far from it as any other.
        if size > SHARED_THRESHOLD and not self.driver:
            # Synchronous, so the location is known before anyone can hold a ref to the ready value.
            self._quietly(self.gcs.set_object_location, object_id, self.node_id, size)

    def record_lineage(self, object_id: str, spec: TaskSpec) -> None:
        if not LINEAGE_ENABLED:
            return
        lineage = replace(spec, code=None, forwarded_by=None, dep_locations={})
        self._pool.submit(self._quietly, self.gcs.record_task, object_id, cloudpickle.dumps(lineage))

    def lineage(self, object_id: str) -> TaskSpec | None:
        data = self._quietly(self.gcs.task, object_id)
        return pickle.loads(data) if data else None

    @staticmethod
    def _quietly(method: Any, *args: Any) -> Any:
        """A GCS write or read the node can live without while Redis is away (logged, not raised)."""
        try:
            return method(*args)
        except redis.RedisError as exc:
            logger.warning("GCS unreachable (%s): %s skipped", exc, getattr(method, "__name__", method))
            return None

    def object_freed(self, object_id: str, remote: str | None, size: int) -> None:
        if remote is None and size > SHARED_THRESHOLD and not self.driver:  # the locations `object_made` recorded
            self._pool.submit(self._quietly, self.gcs.remove_object, object_id)

    def actor_placed(self, spec: TaskSpec) -> None:
        record = self.gcs.actor(spec.actor_id) or {}
        if spec.max_restarts and not record:
            self.gcs.put_actor_spec(spec.actor_id, cloudpickle.dumps(replace(spec, code=None, forwarded_by=None)))
        self.gcs.register_actor({
            **record, "actor_id": spec.actor_id, "name": spec.actor_name, "node": self.node_id,
            "address": self.address, "class_name": spec.name, "methods": list(spec.methods), "state": "alive",
            "direct": None,
            "restarts": spec.restarts, "max_restarts": spec.max_restarts, "max_task_retries": spec.max_task_retries,
            "checkpoint": spec.restore_from or record.get("checkpoint"),
            "checkpoint_at": record.get("checkpoint_at")})

    def actor_checkpointed(self, actor_id: str, checkpoint_id: str) -> None:
        record = self.gcs.actor(actor_id) or {"actor_id": actor_id}
        self.gcs.register_actor({**record, "checkpoint": checkpoint_id, "checkpoint_at": time.time()})

    def actor_restarting(self, actor_id: str, restarts: int, address: str | None) -> None:
        """Record a restart (in place, or wherever it will be placed): callers wait for `actor_ready`."""
        record = self.gcs.actor(actor_id) or {"actor_id": actor_id}
        self.gcs.register_actor({**record, "restarts": restarts, "state": "restarting", "direct": None})

    def actor_ready(self, actor_id: str, direct: str) -> None:
        """The actor is constructed here; its worker takes direct calls at `direct`."""
        record = self.gcs.actor(actor_id) or {"actor_id": actor_id}
        self.gcs.register_actor({**record, "state": "alive", "direct": direct, "node": self.node_id,
                                 "address": self.address})

    def actor_record(self, actor_id: str) -> dict | None:
        return self.gcs.actor(actor_id)

    def actor_spec(self, actor_id: str) -> bytes | None:
        """The pickled creation spec of an actor that may be restarted."""
        return self.gcs.actor_spec(actor_id)

    def actors_on(self, node_id: str) -> list[dict]:
        return [a for a in self.gcs.actors() if a.get("node") == node_id and a.get("state") in ("alive", "restarting")]

    def actors(self) -> list[dict]:
        now = time.time()
        return [{**a, "checkpoint_age_s": None if not a.get("checkpoint_at") else now - a["checkpoint_at"]}
                for a in self.gcs.actors()]

    def actor_gone(self, actor_id: str, name: str | None, reason: str) -> None:
        record = self.gcs.actor(actor_id) or {"actor_id": actor_id, "name": name}
        self.gcs.register_actor({**record, "state": "dead", "reason": reason, "name": None})
        if name:
            self.gcs.remove_actor_name(name, actor_id)

    def actor_address(self, actor_id: str) -> str | None:
        """The address of the node a live actor is on."""
        record = self.gcs.actor(actor_id)
        return record.get("address") if record and record.get("state") == "alive" else None

    def actor_by_name(self, name: str) -> dict | None:
        record = self.gcs.actor_by_name(name)
        return record if record and record.get("state") == "alive" else None

    def nodes(self) -> list[dict]:
        """The nodes of the cluster (drivers' light nodes are not listed: they run no work)."""
        return [n for n in self.gcs.nodes(self.heartbeat_timeout_s) if not n.get("driver")]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for sender in self._senders.values():
            sender.shutdown(wait=False, cancel_futures=True)
        with self._clients_lock:
            for client in self._clients.values():
                client.close()


class ClusterNode:
    """A node of a cluster: worker pool, gRPC service on `host:port`, record and heartbeats in the GCS.

    With `driver=True` it is a driver's light node (as a Ray driver attaches to
    its local raylet): no workers, never a placement target, but the owner of
    everything the driver submits and puts. The driver's objects live in its
    own process, so it shares the fate of no other node: when one dies, this
    node recovers its work there like any other (lineage, retries, actor
    restarts). Its record gives others `DRIVER_HEARTBEAT_TIMEOUT_S` before they
    declare it dead, since a busy driver's heartbeat thread can be starved.
    """

    def __init__(self, gcs_url: str, *, token: str, host: str = "127.0.0.1", port: int = 0,
                 num_workers: int | None = None, resources: dict[str, float] | None = None,
                 namespace: str = "default", node_id: str | None = None,
                 heartbeat_s: float = HEARTBEAT_S, heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
                 tls: TlsFiles | None = None, driver: bool = False):
        if heartbeat_timeout_s <= heartbeat_s:
            raise ValueError(f"heartbeat_timeout_s ({heartbeat_timeout_s}) must be longer than heartbeat_s "
                             f"({heartbeat_s}), or live nodes would be declared dead")
        kind = "driver" if driver else "node"
        self.node_id = node_id or f"{kind}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.heartbeat_s, self.heartbeat_timeout_s = heartbeat_s, heartbeat_timeout_s
        keys = ClusterKeys.from_token(token)
        self.gcs = RedisGcs(gcs_url, namespace, keys=keys)
        self._server, bound = serve(self._handle, self._export, keys=keys, host=host, port=port, tls=tls)
        self.address = f"{host}:{bound}"
        self.link = ClusterLink(self.gcs, self.address, self.node_id, keys, heartbeat_timeout_s, tls,
                                driver=driver)
        workers = 0 if driver else max(1, num_workers or os.cpu_count() or 1)
        self.node = Node(workers, resources, node_id=self.node_id, cluster=self.link)
        self._record = {"node_id": self.node_id, "address": self.address, "resources": self.node.resources,
                        "pid": os.getpid(), "driver": driver,
                        "heartbeat_timeout_s": max(heartbeat_timeout_s, DRIVER_HEARTBEAT_TIMEOUT_S) if driver
                        else heartbeat_timeout_s}
        self.gcs.register_node(self._record)
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="ringwatch-heartbeat", daemon=True)
        self._heartbeat.start()
        self._events = threading.Thread(target=self._listen, name="ringwatch-gcs-events", daemon=True)
        self._events.start()
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
        """Heartbeat, then judge the other nodes' heartbeats.

        The full record goes with every beat, so a GCS restarted without its data
        learns this node again. Other nodes are judged only once this node has
        reached the GCS for a whole timeout: after an outage every heartbeat is
        late, and no node may be declared dead for the GCS's absence.
        """
        reachable_since = None
        load: dict = {}
        while not self._stop.wait(self.heartbeat_s):
            try:  # the dispatcher owns the node's state: ask it (a busy one: beat with the last answer)
                load = self.node.call("describe", timeout=self.heartbeat_s)
            except Exception as exc:
                logger.warning("node %s did not describe itself in time: %s", self.node_id, exc)
            try:
                self.gcs.heartbeat(self.node_id, {**self._record, **load, "mean_task_s": _MEAN_TASK_S})
            except Exception as exc:  # Redis away: keep serving, try again next beat
                if reachable_since is not None:
                    logger.warning("heartbeat to the GCS failed (retrying every %s s): %s", self.heartbeat_s, exc)
                reachable_since = None
                continue
            if reachable_since is None:
                reachable_since = time.monotonic()
            elif time.monotonic() - reachable_since >= self.heartbeat_timeout_s:
                self._judge_peers()

    def _judge_peers(self) -> None:
        """Declare nodes with overdue heartbeats dead (once, in the GCS) and tell this node about each."""
        try:
            records = self.gcs.nodes(self.heartbeat_timeout_s)
            for record in records:
                if record["alive"] or record["node_id"] == self.node_id:
                    continue
                declared = self.gcs.declare_dead(record["node_id"])
                if declared:
                    logger.warning("declaring node %s dead: no heartbeat for %s s", record["node_id"],
                                   self.heartbeat_timeout_s)
                    self.gcs.publish({"type": "node_dead", "node_id": record["node_id"],
                                      "address": record["address"]})
                self.node.post("node_dead", (record["node_id"], record["address"], declared))
        except redis.RedisError as exc:
            logger.warning("could not check the other nodes' heartbeats: %s", exc)

    def _listen(self) -> None:
        """Node deaths announced on the GCS event channel reach this node at once."""
        def on_node_dead(node_id: str, address: str) -> None:
            if node_id != self.node_id:
                self.node.post("node_dead", (node_id, address, False))
        follow_node_deaths(self.gcs, self._stop, on_node_dead, self.heartbeat_s)

    def wait(self) -> None:
        self._stop.wait()

    def stop(self) -> None:
        """Leave the cluster cleanly: out of the GCS, workers stopped, service closed."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:  # gone is gone: the others recover what they had here, as after a death
            self.gcs.remove_node(self.node_id)
            self.gcs.publish({"type": "node_dead", "node_id": self.node_id, "address": self.address})
        except Exception as exc:
            logger.warning("could not remove node %s from the GCS: %s", self.node_id, exc)
        self._server.stop(grace=1)
        self.node.shutdown()
        self.link.close()
        self._events.join(timeout=5)
        self.gcs.close()


def _fits(peer: dict, needs: Mapping[str, float]) -> bool:
    return all(peer["resources"].get(k, 0.0) >= v for k, v in needs.items())


def follow_node_deaths(gcs: RedisGcs, stop: threading.Event, on_node_dead: Any, retry_s: float) -> None:
    """Call `on_node_dead(node_id, address)` for each death announced on the GCS event channel, until `stop`.

    Resubscribes after a Redis outage (logged once per outage).
    """
    connected = True
    while not stop.is_set():
        try:
            subscription = gcs.subscribe()
            connected = True
            try:
                while not stop.is_set():
                    message = subscription.get_message(timeout=1.0)
                    event = None if message is None else gcs.read_event(message["data"])
                    if event is not None and event.get("type") == "node_dead":
                        on_node_dead(event["node_id"], event["address"])
            finally:
                subscription.close()
        except redis.RedisError as exc:
            if connected:
                logger.warning("GCS event channel lost (%s); resubscribing", exc)
            connected = False
            stop.wait(retry_s)


def join_as_driver(address: str, *, token: str | None, namespace: str = "default", host: str = "127.0.0.1",
                   tls: TlsFiles | None = None) -> ClusterNode:
    """Join the cluster whose GCS is at `address` (redis://...) as a driver: start its light node.

    Only node records sealed with the token count, and every call is signed for
    it. TLS files default to RINGWATCH_TLS_CERT/KEY/CA.
    """
    token = token or os.environ.get("RINGWATCH_TOKEN")
    if not token:
        raise TokenMissingError("joining a cluster needs its token: pass token=... or set RINGWATCH_TOKEN")
    gcs = RedisGcs(address, namespace, keys=ClusterKeys.from_token(token))
    try:
        live = [n for n in gcs.nodes(HEARTBEAT_TIMEOUT_S) if n["alive"] and not n.get("driver")]
    finally:
        gcs.close()
    if not live:
        raise NodeUnavailableError(f"no live ringwatch node is registered in the GCS at {address}")
    return ClusterNode(address, token=token, host=host, namespace=namespace, driver=True,
                       tls=tls or TlsFiles.from_env())

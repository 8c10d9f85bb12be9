"""Trust boundaries of the runtime, tried as an attacker would: real redis-server, real nodes, real gRPC.

- Someone who can write to Redis but has no token plants node, actor, actor-spec
  and lineage records (pickles that touch a marker file): no node or driver acts
  on them, nothing is unpickled.
- A fake node advertised in the GCS, or dialled directly, learns nothing it can
  replay: the token never travels, a captured call is refused by real nodes, and
  its unsigned answers are never unpickled.
- An unauthenticated 200 MB request is refused before it is read: the node's
  memory does not grow by more than a few MB.
- With TLS, only parties holding a certificate from the cluster's CA get a
  connection, either way round.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

import ringwatch.runtime as rt
from ringwatch.runtime.auth import AUTH_HEADER, CallSigner, ClusterKeys
from ringwatch.runtime.checkpoints import CheckpointError, FileCheckpointStore, RedisCheckpointStore, encode_state
from ringwatch.runtime.errors import NodeUnavailableError
from ringwatch.runtime.gcs import RedisGcs
from ringwatch.runtime.tls import ENV as TLS_ENV
from ringwatch.runtime.tls import TlsFiles
from ringwatch.runtime.transport import SERVICE, NodeClient
from runtime_cluster import TOKEN, Cluster, until
from tls_certs import CertificateAuthority, tls_args

FAST_HEARTBEATS = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5")
KEYS = ClusterKeys.from_token(TOKEN)
MB = 1 << 20


class Payload:
    """What an attacker pickles: unpickling it runs `touch marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def key(cluster: Cluster, table: str) -> str:
    return f"ringwatch:{cluster.namespace}:{table}"


@pytest.fixture
def cluster(redis_url, request, tmp_path):
    """node-a (the driver's entry), node-b and node-c (both offer "spare"), logs kept per node."""
    cluster = Cluster(redis_url, f"trust-{os.getpid()}-{time.monotonic_ns()}", extra_args=FAST_HEARTBEATS,
                      log_dir=tmp_path)
    try:
        cluster.start_node("node-a")
        rt.init(address=redis_url, token=TOKEN, namespace=cluster.namespace)
        cluster.start_node("node-b", resources={"spare": 1, "node-b": 1})
        cluster.start_node("node-c", resources={"spare": 1})
        yield cluster
    finally:
        rt.shutdown()
        cluster.stop()


# ---- GCS integrity --------------------------------------------------------------------------------------


@rt.remote(resources={"node-b": 1}, max_restarts=1)
class Keeper:
    def __init__(self):
        self.value = 1

    def where(self):
        return rt.current_node_id()


@rt.remote(resources={"node-b": 1})
def large_on_node_b():
    return np.arange(300_000, dtype=np.float64)  # large: it stays on the node that made it


@rt.remote(resources={"spare": 1})
def where():
    return rt.current_node_id()


def test_records_planted_in_redis_without_the_token_never_run(cluster, redis_client, tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Payload(marker))
    # A real actor (restartable) and a large object held away from its owner, both on node-b.
    keeper = Keeper.remote()
    assert rt.get(keeper.where.remote(), timeout=60) == "node-b"
    held = large_on_node_b.remote()
    until(lambda: redis_client.exists(key(cluster, f"task:{held.id}")), "the lineage of the held object")
    # The attacker: a dead-looking node with an actor on it and its "spec", the real actor's spec and the
    # held object's lineage replaced, a forged death and a forged death event.
    now = time.time()
    redis_client.hset(key(cluster, "nodes"), "ghost", json.dumps({
        "node_id": "ghost", "address": "127.0.0.1:1", "resources": {"CPU": 1}, "heartbeat": now - 3600,
        "heartbeat_timeout_s": 1.5}))
    redis_client.hset(key(cluster, "actors"), "evil", json.dumps({
        "actor_id": "evil", "name": None, "node": "ghost", "address": "127.0.0.1:1", "class_name": "Evil",
        "methods": [], "state": "alive", "restarts": 0, "max_restarts": 5, "max_task_retries": 0}))
    redis_client.hset(key(cluster, "actor_specs"), "evil", evil)
    redis_client.hset(key(cluster, "actor_specs"), keeper.actor_id, evil)
    redis_client.set(key(cluster, f"task:{held.id}"), evil)
    redis_client.hset(key(cluster, "dead"), "node-a", now)
    redis_client.publish(key(cluster, "events"), json.dumps({"type": "node_dead", "node_id": "node-a",
                                                             "address": cluster.nodes["node-a"].address}))

    cluster.nodes["node-b"].kill()  # a real death: its actor and the object it held must be recovered

    def logs() -> str:
        return "".join(n.log_text() for n in cluster.nodes.values())
    until(lambda: marker.exists() or f"actor_specs[{keeper.actor_id}]" in logs(),
          "the nodes to read the planted actor spec", timeout_s=120)
    assert not marker.exists(), "a pickle planted in Redis without the token was unpickled"
    assert "ignored a forged GCS record: GCS nodes[ghost]" in logs()
    # The driver owns `held`: its own light node reads the planted lineage, and refuses it.
    with pytest.raises(rt.ObjectLostError):  # its only trustworthy lineage is gone: lost, not forged
        rt.get(held, timeout=120)
    with pytest.raises(rt.ActorDiedError):  # its spec cannot be trusted: not restarted from it
        rt.get(keeper.where.remote(), timeout=120)
    assert not marker.exists()
    alive = {n["node_id"] for n in rt.nodes() if n["alive"]}
    assert "node-a" in alive and "ghost" not in alive, "a forged death or node record was believed"
    assert rt.get(where.remote(), timeout=60) == "node-c"  # the cluster works on


def test_every_gcs_table_ignores_values_sealed_without_the_token(redis_url, redis_client, unique_name, tmp_path):
    gcs = RedisGcs(redis_url, unique_name, keys=KEYS)
    other = RedisGcs(redis_url, unique_name, keys=ClusterKeys.from_token("another-cluster's-token"))
    try:
        gcs.register_node({"node_id": "n1", "address": "127.0.0.1:5", "resources": {}})
        gcs.put_function("f1", b"real code")
        other.put_function("f2", pickle.dumps(Payload(tmp_path / "pwned")))  # sealed, with the wrong key
        redis_client.hset(f"ringwatch:{unique_name}:functions", "f3", pickle.dumps(Payload(tmp_path / "pwned")))
        # A value sealed for one key, moved to another, is refused too.
        sealed = redis_client.hget(f"ringwatch:{unique_name}:functions", "f1")
        redis_client.hset(f"ringwatch:{unique_name}:functions", "f4", sealed)
        redis_client.hset(f"ringwatch:{unique_name}:names", "shard", json.dumps("evil"))
        redis_client.hset(f"ringwatch:{unique_name}:objects", "o1", json.dumps({"node": "n1", "size": 1 << 40}))
        redis_client.hset(f"ringwatch:{unique_name}:dead", "n1", time.time())

        assert gcs.get_function("f1") == b"real code"
        assert [gcs.get_function(f) for f in ("f2", "f3", "f4")] == [None, None, None]
        assert gcs.actor_by_name("shard") is None and gcs.object_location("o1") is None
        assert [n["node_id"] for n in gcs.nodes() if n["alive"]] == ["n1"], "a forged death was believed"
        assert gcs.declare_dead("n1") is True, "a forged death blocked the real declaration"
        assert gcs.declare_dead("n1") is False and "n1" in gcs.dead_nodes()
        assert not (tmp_path / "pwned").exists()
    finally:
        gcs.close()
        other.close()


def test_gcs_events_are_sealed_and_fresh(redis_url, redis_client, unique_name):
    gcs = RedisGcs(redis_url, unique_name, keys=KEYS)
    subscription = gcs.subscribe()
    try:
        channel = f"ringwatch:{unique_name}:events"
        until(lambda: redis_client.pubsub_numsub(channel)[0][1] == 1, "the subscription")
        forged = json.dumps({"type": "node_dead", "node_id": "n1", "address": "x", "at": time.time()})
        redis_client.publish(channel, forged)
        gcs.publish({"type": "node_dead", "node_id": "n2", "address": "y"})
        messages = []
        deadline = time.monotonic() + 30
        while len(messages) < 2 and time.monotonic() < deadline:
            message = subscription.get_message(timeout=1.0)
            if message is not None:
                messages.append(message)
        events = [gcs.read_event(m["data"]) for m in messages]
        assert len(events) == 2 and events[0] is None and events[1]["node_id"] == "n2"
    finally:
        subscription.close()
        gcs.close()


@pytest.mark.parametrize("store", ["file", "redis"])
def test_an_altered_actor_checkpoint_is_never_unpickled(store, redis_url, redis_client, tmp_path):
    marker = tmp_path / "pwned"
    checkpoints = FileCheckpointStore(f"file://{tmp_path / 'ckpt'}") if store == "file" else \
        RedisCheckpointStore(redis_url)
    checkpoint_id = checkpoints.save("actor-1", {"balance": 10})
    assert checkpoints.load(checkpoint_id) == {"balance": 10}
    evil = b"".join(bytes(part) for part in encode_state(Payload(marker)))  # a well-formed checkpoint
    if store == "file":
        (tmp_path / "ckpt" / f"{checkpoint_id}.ckpt").write_bytes(evil)
    else:
        redis_client.set(f"ringwatch:checkpoints:{checkpoint_id}", evil)
    with pytest.raises(CheckpointError, match="digest"):
        checkpoints.load(checkpoint_id)
    assert not marker.exists()


# ---- mutual authentication ------------------------------------------------------------------------------


class FakeNode(grpc.GenericRpcHandler):
    """A gRPC server that records every call it gets and answers with a pickle that touches a marker."""

    def __init__(self, marker: Path):
        self.received: list[tuple[str, tuple, bytes]] = []
        self._answer = pickle.dumps(Payload(marker))
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers((self,))
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        def record(requests, context):
            self.received.append((details.method, tuple(details.invocation_metadata), b"".join(requests)))
            return self._answer
        return grpc.stream_unary_rpc_method_handler(record)

    def stop(self) -> None:
        self._server.stop(0)


def assert_learned_nothing(fake: FakeNode, real_address: str) -> None:
    """The token and its keys never reached the fake; whatever it got, real nodes refuse when played again."""
    secrets_ = [TOKEN.encode(), KEYS.calls, KEYS.calls.hex().encode(), KEYS.records, KEYS.records.hex().encode()]
    channel = grpc.insecure_channel(real_address)
    try:
        for method, metadata, body in fake.received:
            seen = body + b"".join(f"{k}={v}".encode() if isinstance(v, str) else v for k, v in metadata)
            assert not any(s in seen for s in secrets_), "a secret was sent to a node that did not prove the token"
            replay = channel.stream_unary(method)
            with pytest.raises(grpc.RpcError) as refused:
                replay(iter([body]), metadata=[(k, v) for k, v in metadata if k.startswith("x-ringwatch")],
                       timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()


@rt.remote
def add(a, b):
    return a + b


def test_a_fake_node_in_the_gcs_learns_nothing_a_driver_sends(redis_url, redis_client, tmp_path, unique_name):
    marker = tmp_path / "pwned"
    fake = FakeNode(marker)
    cluster = Cluster(redis_url, unique_name)
    try:
        real = cluster.start_node("node-a")
        redis_client.hset(f"ringwatch:{unique_name}:nodes", "fake", json.dumps({
            "node_id": "fake", "address": fake.address, "resources": {"CPU": 64}, "queued": -1,
            "heartbeat": time.time() + 3600, "heartbeat_timeout_s": 3600}))
        rt.init(address=redis_url, token=TOKEN, namespace=unique_name)  # picks the least-loaded node it trusts
        assert rt.get([add.remote(i, 1) for i in range(20)], timeout=60) == list(range(1, 21))
        assert "fake" not in {n["node_id"] for n in rt.nodes()}
        rt.shutdown()
        assert not marker.exists(), "the driver unpickled an answer from a node that did not prove the token"
        assert_learned_nothing(fake, real.address)
    finally:
        rt.shutdown()
        fake.stop()
        cluster.stop()


def test_a_node_dialled_by_mistake_gets_nothing_replayable_and_its_answer_is_not_unpickled(
        redis_url, tmp_path, unique_name):
    marker = tmp_path / "pwned"
    fake = FakeNode(marker)
    cluster = Cluster(redis_url, unique_name)
    try:
        real = cluster.start_node("node-a")
        client = NodeClient(fake.address, KEYS)
        with pytest.raises(rt.AuthError, match="does not hold the token"):
            client.call("nodes")
        with pytest.raises(rt.AuthError):
            client.call("put", "x" * 10, b"y" * (3 * MB))  # a large one goes in chunks: signed all the same
        client.close()
        assert not marker.exists()
        assert len(fake.received) == 2
        assert_learned_nothing(fake, real.address)
    finally:
        fake.stop()
        cluster.stop()


def test_a_signed_call_is_accepted_once_and_only_with_its_own_body(redis_url, unique_name):
    cluster = Cluster(redis_url, unique_name)
    try:
        address = cluster.start_node("node-a").address
        path = f"/{SERVICE}/Call"
        body = pickle.dumps(("object_count", ()))
        header, _ = CallSigner(KEYS.calls, address).sign(path, "Call", hashlib.sha256(body).digest())
        channel = grpc.insecure_channel(address)
        call = channel.unary_unary(path)
        call(body, metadata=(header,), timeout=30)  # accepted
        with pytest.raises(grpc.RpcError) as refused:
            call(body, metadata=(header,), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and "played before" in refused.value.details()
        fresh, _ = CallSigner(KEYS.calls, address).sign(path, "Call", b"\0" * 32)  # a body it does not cover
        with pytest.raises(grpc.RpcError) as refused:
            call(body, metadata=(fresh,), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()
    finally:
        cluster.stop()


# ---- limits ---------------------------------------------------------------------------------------------


def test_an_unauthenticated_200_mb_request_is_refused_without_the_node_buffering_it(redis_url, unique_name):
    cluster = Cluster(redis_url, unique_name)
    channel = None
    try:
        node = cluster.start_node("node-a")
        channel = grpc.insecure_channel(node.address, options=[("grpc.max_send_message_length", 1 << 30)])
        big = b"\x80" * (200 * MB)
        attempts = [(channel.unary_unary(f"/{SERVICE}/Call"), ()),
                    (channel.unary_unary(f"/{SERVICE}/Call"), ((AUTH_HEADER, "v1 1 2 3 4 Call"),)),
                    (channel.unary_unary(f"/{SERVICE}/Upload"), ()),
                    (channel.unary_unary(f"/{SERVICE}/Fetch"), ())]
        for stub, metadata in attempts:  # warm-up: the node's gRPC threads and buffers exist already
            with pytest.raises(grpc.RpcError):
                stub(b"x" * 1000, metadata=metadata, timeout=30)
        before = rss_mb(node.process.pid)
        for stub, metadata in attempts:
            with pytest.raises(grpc.RpcError) as refused:
                stub(big, metadata=metadata, timeout=120)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        grown = rss_mb(node.process.pid) - before
        assert grown < 16, f"four refused 200 MB requests grew the node by {grown:.0f} MB"
        # Signed, a 200 MB single message is still over the per-message limit: large bodies go in chunks.
        path = f"/{SERVICE}/Call"
        header, _ = CallSigner(KEYS.calls, node.address).sign(path, "Call", hashlib.sha256(big).digest())
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(path)(big, metadata=(header,), timeout=120)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        if channel is not None:
            channel.close()
        cluster.stop()


@rt.remote
def echo(value):
    return value


def test_large_values_move_between_driver_and_nodes_in_chunks(cluster):
    value = np.random.default_rng(1).random(50 * MB // 8)
    ref = rt.put(value)
    assert np.array_equal(rt.get(ref, timeout=120), value)
    assert np.array_equal(rt.get(echo.options(resources={"spare": 1}).remote(ref), timeout=120), value)


# ---- TLS ------------------------------------------------------------------------------------------------


@pytest.fixture
def tls_cluster(redis_url, tmp_path, unique_name):
    """node-a, serving and dialling with a certificate from the cluster's CA."""
    ca = CertificateAuthority.create(tmp_path / "pki", "cluster-ca")
    cluster = Cluster(redis_url, unique_name)
    try:
        cluster.start_node("node-a", args=tls_args(ca.issue("node-a")))
        yield cluster, ca
    finally:
        rt.shutdown()
        cluster.stop()


def test_a_tls_cluster_serves_a_driver_with_a_certificate_from_its_ca(tls_cluster, redis_url, monkeypatch):
    cluster, ca = tls_cluster
    driver = ca.issue("driver")
    for name in ("cert", "key", "ca"):
        monkeypatch.setenv(TLS_ENV[name], str(getattr(driver, name)))
    rt.init(address=redis_url, token=TOKEN, namespace=cluster.namespace)  # through node-a, the only node yet
    cluster.start_node("node-b", resources={"spare": 1}, args=tls_args(ca.issue("node-b")))
    assert rt.get([where.remote() for _ in range(4)], timeout=60) == ["node-b"] * 4  # node-a to node-b over TLS
    assert rt.get(add.remote(1, 2), timeout=60) == 3

    @rt.remote(resources={"spare": 1})
    class Echo:
        def echo(self, x):
            return x, rt.current_node_id()

    echo = Echo.remote()  # its calls go from the driver straight to its worker, over TLS too
    assert rt.get([echo.echo.remote(i) for i in range(3)], timeout=60) == [(i, "node-b") for i in range(3)]


def test_tls_refuses_other_cas_plaintext_and_clients_without_a_certificate(tls_cluster, tmp_path):
    cluster, ca = tls_cluster
    address = cluster.nodes["node-a"].address
    stranger = CertificateAuthority.create(tmp_path / "other", "other-ca").issue("intruder")
    attempts = {
        "a certificate and CA of another authority": stranger,
        "a certificate of another authority, trusting the cluster's CA": TlsFiles(stranger.cert, stranger.key, ca.path),
        "plaintext": None,
    }
    for what, tls in attempts.items():
        client = NodeClient(address, KEYS, tls=tls, retries=1, backoff_s=0.05)
        with pytest.raises(NodeUnavailableError):
            client.call("object_count", timeout=30)
            pytest.fail(f"a client with {what} got an answer")
        client.close()
    no_certificate = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca.path.read_bytes()))
    with pytest.raises(grpc.RpcError) as refused:
        no_certificate.unary_unary(f"/{SERVICE}/Call")(b"", timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    no_certificate.close()
    assert NodeClient(address, KEYS, tls=ca.issue("operator")).call("object_count", timeout=30)["objects"] >= 0


def test_tls_options_come_as_a_set(redis_url, unique_name, tmp_path):
    cluster = Cluster(redis_url, unique_name, log_dir=tmp_path)
    with pytest.raises(RuntimeError, match="exited with code 2"):
        cluster.start_node("node-a", args=("--tls-cert", str(tmp_path / "node.pem")))
    assert "--tls-key, --tls-ca missing" in (tmp_path / "node-a.log").read_text()


# ---- direct actor calls ---------------------------------------------------------------------------------


def test_an_actor_workers_direct_channel_refuses_callers_without_the_key(cluster, tmp_path):
    """The actor's worker listens for direct calls: a caller that cannot answer its challenge gets nothing
    unpickled and is cut off; one that sends a pickle before the handshake likewise; real callers go on."""
    import socket

    keeper = Keeper.remote()
    assert rt.get(keeper.where.remote(), timeout=60) == "node-b"
    record = RedisGcs(cluster.redis_url, cluster.namespace, keys=KEYS).actor(keeper.actor_id)
    host, _, port = record["direct"].rpartition(":")
    assert host == "127.0.0.1"
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Payload(marker))
    header = len(evil).to_bytes(8, "big")
    for first in (os.urandom(64), header + evil + b"\0" * 64):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            assert len(sock.recv(32)) == 32  # the challenge
            sock.sendall(first)
            sock.settimeout(30)
            try:
                answer = sock.recv(1024)
            except ConnectionResetError:  # closed with our bytes unread: cut off all the same
                answer = b""
            assert answer == b"", "the worker answered a caller that did not prove it holds the key"
    assert not marker.exists()
    assert rt.get(keeper.where.remote(), timeout=60) == "node-b"

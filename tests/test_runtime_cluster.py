"""The runtime on a 3-node loopback cluster: real node processes, real Redis GCS, real gRPC."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

import ringwatch.runtime as rt
from ringwatch.runtime.auth import ClusterKeys
from ringwatch.runtime.transport import SERVICE, NodeClient
from runtime_cluster import TOKEN, Cluster


@pytest.fixture(scope="module")
def cluster(redis_url, tmp_path_factory):
    namespace = f"cluster-{os.getpid()}-{time.monotonic_ns()}"
    cluster = Cluster(redis_url, namespace)
    try:
        cluster.start_node("node-a")
        cluster.start_node("node-b")
        cluster.start_node("node-gpu", resources={"gpu": 1})
        rt.init(address=redis_url, token=TOKEN, namespace=namespace)
        yield cluster
    finally:
        if rt.is_initialized():
            rt.shutdown()
        cluster.stop()


def wait_for_file(path: str, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


@rt.remote
def where(*_):
    return rt.current_node_id()


@rt.remote
def add(a, b):
    return a + b


@rt.remote
def gated(path, value):
    wait_for_file(path)
    return value


def test_nodes_are_registered_with_their_resources(cluster):
    nodes = {n["node_id"]: n for n in rt.nodes()}
    assert set(nodes) == {"node-a", "node-b", "node-gpu"} and all(n["alive"] for n in nodes.values())
    assert nodes["node-gpu"]["resources"]["gpu"] == 1


def test_a_gpu_task_runs_on_the_only_gpu_node(cluster):
    assert rt.get([where.options(resources={"gpu": 1}).remote() for _ in range(3)]) == ["node-gpu"] * 3


def test_a_resource_no_node_has_fails_clearly(cluster):
    with pytest.raises(rt.ResourceUnavailableError, match="tpu"):
        rt.get(where.options(resources={"tpu": 1}).remote(), timeout=60)


def test_refs_of_unfinished_tasks_cross_nodes(cluster, tmp_path):
    gate = str(tmp_path / "gate")
    upstream = gated.options(resources={"gpu": 1}).remote(gate, 40)
    downstream = add.remote(upstream, 2)
    ready = rt.wait([downstream], timeout=0.2)[0]
    if ready:
        rt.get(downstream)
    assert ready == []
    Path(gate).touch()
    assert rt.get(downstream, timeout=60) == 42


def test_spillback_when_the_entry_node_is_saturated(cluster, tmp_path):
    gate = str(tmp_path / "gate")

    @rt.remote
    def hold_then_say_where(path):
        wait_for_file(path)
        return rt.current_node_id()

    refs = [hold_then_say_where.remote(gate) for _ in range(9)]
    Path(gate).touch()
    assert len(set(rt.get(refs, timeout=120))) >= 2


def test_a_task_consuming_a_large_object_runs_where_the_object_is(cluster):
    @rt.remote
    def make_big():
        return np.ones(2_000_000)

    @rt.remote
    def consume(array):
        return float(array.sum()), rt.current_node_id()

    big = make_big.options(resources={"gpu": 1}).remote()
    assert rt.wait([big], timeout=60)[0] == [big]  # placement steers by where finished objects live
    assert rt.get(consume.remote(big), timeout=60) == (2_000_000.0, "node-gpu")


def test_a_put_object_reaches_tasks_on_every_node(cluster):
    ref = rt.put(np.arange(1_000_000))

    @rt.remote
    def total(array):
        return int(array.sum())

    expected = int(np.arange(1_000_000).sum())
    assert rt.get([total.remote(ref), total.options(resources={"gpu": 1}).remote(ref)], timeout=60) == [expected] * 2


def test_actor_calls_keep_their_order_across_the_cluster(cluster):
    @rt.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, item):
            self.items.append(item)
            return len(self.items)

    log = Log.options(resources={"gpu": 1}).remote()
    assert rt.get([log.add.remote(i) for i in range(100)], timeout=60) == list(range(1, 101))


def test_a_named_actor_is_found_from_another_driver(cluster, redis_url):
    @rt.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n

    counter = Counter.options(name="shared").remote()
    assert rt.get(counter.incr.remote(), timeout=60) == 1
    script = textwrap.dedent(f"""
        import ringwatch.runtime as rt
        rt.init(address={redis_url!r}, token={TOKEN!r}, namespace={cluster.namespace!r})
        print(rt.get(rt.get_actor("shared").incr.remote(), timeout=60))
        rt.shutdown()
    """)
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == "2"
    assert rt.get(counter.incr.remote(), timeout=60) == 3


def test_a_remote_exception_keeps_its_traceback(cluster):
    @rt.remote
    def fails_on_gpu():
        raise RuntimeError("kernel panic")

    with pytest.raises(rt.TaskError) as caught:
        rt.get(fails_on_gpu.options(resources={"gpu": 1}).remote(), timeout=60)
    assert caught.value.type_name == "RuntimeError" and "fails_on_gpu" in caught.value.traceback_text


def test_get_times_out_and_a_queued_task_can_be_cancelled(cluster, tmp_path):
    gate = str(tmp_path / "gate")
    blocker = gated.options(resources={"gpu": 1}).remote(gate, 1)
    with pytest.raises(rt.GetTimeoutError):
        rt.get(blocker, timeout=0.3)
    queued = add.remote(blocker, 1)
    assert rt.cancel(queued) is True
    with pytest.raises(rt.TaskCancelledError):
        rt.get(queued, timeout=60)
    Path(gate).touch()
    assert rt.get(blocker, timeout=60) == 1


def test_a_call_without_the_token_is_refused(cluster):
    address = cluster.nodes["node-a"].address
    with pytest.raises(rt.AuthError, match="token"):
        NodeClient(address, ClusterKeys.from_token("not-the-token")).call("nodes")
    channel = grpc.insecure_channel(address)
    bare = channel.unary_unary(f"/{SERVICE}/Call")
    with pytest.raises(grpc.RpcError) as caught:
        bare(b"\x80\x05N.", timeout=10)  # a pickle, sent without metadata: never unpickled
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()


def test_nodes_listen_on_loopback_by_default(cluster):
    assert all(n.address.startswith("127.0.0.1:") for n in cluster.nodes.values())


def test_status_command_lists_the_nodes(cluster, redis_url):
    done = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "status", "--address", redis_url,
                           "--namespace", cluster.namespace], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RINGWATCH_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in ("node-a", "node-b", "node-gpu"))


def test_direct_actor_calls_keep_each_callers_order(cluster):
    """The driver and tasks on other nodes call one actor straight at its worker; each caller's order holds."""
    @rt.remote
    class Journal:
        def __init__(self):
            self.entries = []

        def add(self, caller, i):
            self.entries.append((caller, i))
            return len(self.entries)

        def read(self):
            return self.entries, rt.current_node_id()

    journal = Journal.options(resources={"gpu": 1}).remote()

    @rt.remote
    def write(handle, caller, n):
        return rt.get([handle.add.remote(caller, i) for i in range(n)])

    writers = [write.remote(journal, f"task-{k}", 100) for k in range(2)]
    mine = [journal.add.remote("driver", i) for i in range(100)]
    rt.get([*writers, *mine], timeout=120)

    entries, node = rt.get(journal.read.remote(), timeout=60)
    assert node == "node-gpu"
    for caller in ("driver", "task-0", "task-1"):
        assert [i for c, i in entries if c == caller] == list(range(100))


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", *argv], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "RINGWATCH_TOKEN": TOKEN})


def test_a_node_whose_port_is_taken_says_so_in_one_line(redis_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("node", "start", "--address", redis_url, "--port", str(port), "--workers", "1")
    assert done.returncode == 1
    assert f"ringwatch node start: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_gcs_nobody_serves_is_one_line_naming_it():
    with socket.socket() as closed:  # a port with nothing listening on it
        closed.bind(("127.0.0.1", 0))
        address = f"redis://127.0.0.1:{closed.getsockname()[1]}"
    for argv in (("status", "--address", address), ("node", "start", "--address", address, "--workers", "1")):
        done = run_cli(*argv)
        assert done.returncode == 1, done.stderr
        assert f"cannot reach the GCS at {address}" in done.stderr and "Traceback" not in done.stderr

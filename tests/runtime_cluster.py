"""A real cluster on loopback for tests: `ringwatch node start` processes sharing one Redis GCS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

TOKEN = "test-cluster-token"


# A node started by a test run that is killed must not outlive it: the node asks Linux for SIGKILL
# when its parent goes (set in the child itself: a preexec_fn would run Python in a fork of a
# process that may hold gRPC threads, which gRPC does not survive).
_LAUNCH = ("import ctypes, runpy, signal, sys; ctypes.CDLL('libc.so.6').prctl(1, signal.SIGKILL); "
           "sys.argv = ['ringwatch'] + sys.argv[1:]; runpy.run_module('ringwatch.stream.cli', run_name='__main__')")


@dataclass
class NodeProcess:
    node_id: str
    process: subprocess.Popen
    address: str = ""

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    redis_url: str
    namespace: str
    nodes: dict[str, NodeProcess] = field(default_factory=dict)

    extra_args: tuple[str, ...] = ()  # e.g. short heartbeats for the fault tests

    def start_node(self, node_id: str, workers: int = 1, resources: dict | None = None) -> NodeProcess:
        env = {**os.environ, "RINGWATCH_TOKEN": TOKEN}
        process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, "node", "start", "--address", self.redis_url,
             "--namespace", self.namespace, "--workers", str(workers), "--node-id", node_id,
             "--resources", json.dumps(resources or {}), *self.extra_args],
            stdout=subprocess.PIPE, text=True, env=env)
        ready = process.stdout.readline()  # the node prints its address once it is serving and registered
        if not ready:
            raise RuntimeError(f"node {node_id} exited with code {process.wait()} before it was ready")
        node = NodeProcess(node_id, process, json.loads(ready)["address"])
        self.nodes[node_id] = node
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

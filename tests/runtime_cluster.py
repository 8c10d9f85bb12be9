"""A real cluster on loopback for tests: `ringwatch node start` processes sharing one Redis GCS."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

TOKEN = "test-cluster-token"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """A node started by a test run that is killed must not outlive it (Linux parent-death signal)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


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

    def start_node(self, node_id: str, workers: int = 1, resources: dict | None = None) -> NodeProcess:
        env = {**os.environ, "RINGWATCH_TOKEN": TOKEN}
        process = subprocess.Popen(
            [sys.executable, "-m", "ringwatch.stream.cli", "node", "start", "--address", self.redis_url,
             "--namespace", self.namespace, "--workers", str(workers), "--node-id", node_id,
             "--resources", json.dumps(resources or {})],
            stdout=subprocess.PIPE, text=True, env=env, preexec_fn=_die_with_parent)
        ready = process.stdout.readline()  # the node prints its address once it is serving and registered
        if not ready:
            raise RuntimeError(f"node {node_id} exited with code {process.wait()} before it was ready")
        node = NodeProcess(node_id, process, json.loads(ready)["address"])
        self.nodes[node_id] = node
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

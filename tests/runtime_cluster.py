"""A real cluster on loopback for tests: `ringwatch node start` processes sharing one Redis GCS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TOKEN = "test-cluster-token"


def until(condition, what: str, timeout_s: float = 60.0):
    """Poll a condition the system will reach (no fixed sleeps); fail naming it if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


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
    log: Path | None = None  # its stderr, when the cluster keeps node logs

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None and self.log.exists() else ""

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
    log_dir: Path | None = None  # where each node's stderr goes (default: the test's stderr)

    def start_node(self, node_id: str, workers: int = 1, resources: dict | None = None,
                   args: tuple[str, ...] = ()) -> NodeProcess:
        env = {**os.environ, "RINGWATCH_TOKEN": TOKEN}
        log = None if self.log_dir is None else self.log_dir / f"{node_id}.log"
        stderr = None if log is None else open(log, "ab")
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _LAUNCH, "node", "start", "--address", self.redis_url,
                 "--namespace", self.namespace, "--workers", str(workers), "--node-id", node_id,
                 "--resources", json.dumps(resources or {}), *self.extra_args, *args],
                stdout=subprocess.PIPE, text=True, env=env, stderr=stderr)
        finally:
            if stderr is not None:
                stderr.close()
        ready = process.stdout.readline()  # the node prints its address once it is serving and registered
        if not ready:
            raise RuntimeError(f"node {node_id} exited with code {process.wait()} before it was ready")
        node = NodeProcess(node_id, process, json.loads(ready)["address"], log)
        self.nodes[node_id] = node
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

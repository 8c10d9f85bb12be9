"""Real services for the test-suite: a redis-server process on loopback, a Ray head.

The Kafka-protocol broker lives in the library (`ringwatch.connectors.EmbeddedBroker`)
because the demo starts one too; Redis is only ever started by tests.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ringwatch.connectors.embedded_broker import free_port


class RedisMissingError(RuntimeError):
    pass


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RedisMissingError(
            "redis-server is not on PATH: install Debian's 'redis-server' package "
            "(apt-get install -y redis-server) or set RINGWATCH_TEST_REDIS_URL"
        )
    return path


@dataclass
class RedisServer:
    """A redis-server process in its own directory; restartable with its data (AOF)."""

    workdir: Path
    appendonly: bool = False
    port: int = 0
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, startup_timeout_s: float = 20.0) -> "RedisServer":
        if not self.port:
            self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--logfile", str(self.workdir / "redis.log"),
        ]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_for_ping(startup_timeout_s)
        return self

    def _wait_for_ping(self, timeout_s: float) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited; see {self.workdir / 'redis.log'}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server did not answer PING within {timeout_s} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=20)
        self._process = None

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a store that hangs)."""
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._process.send_signal(signal.SIGCONT)


@dataclass
class RayHead:
    """A real Ray head node (`ray start --head --block`) with small resources and its own temp dir.

    It runs in its own session, so stopping it ends exactly the processes it started
    (never `ray stop`, which would end every Ray cluster on the machine). Token
    authentication is on, with a token of its own (`auth_env`, for every process that
    joins it), not the per-user `~/.ray/auth_token` other Ray clusters on the machine share.
    gRPC's fork handlers are off in the head (`GRPC_ENABLE_FORK_SUPPORT=0`): its Ray Client
    proxy starts a server process per client by fork and exec while its gRPC threads run, and
    with them on, that child now and then died before its exec (gRPC's "Check failed:
    next_worker->state == KICKED"): the client's `init` failed (psutil ZombieProcess, or
    "Starting Ray client server failed"), 3 of 55 connects here; none of 60 with them off.
    """

    num_cpus: int = 2
    object_store_bytes: int = 150_000_000
    address: str = ""
    client_address: str = ""
    temp_dir: Path | None = None
    auth_env: dict[str, str] = field(default_factory=lambda: {"RAY_AUTH_MODE": "token",
                                                              "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def start(self, startup_timeout_s: float = 120.0) -> "RayHead":
        # Short: Ray's unix socket paths under the temp dir must stay under 108 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rw-ray-", dir="/tmp"))
        client_port = free_port()
        ray = Path(sys.executable).with_name("ray")
        args = [str(ray), "start", "--head", "--block", "--port", str(free_port()),
                "--ray-client-server-port", str(client_port), "--num-cpus", str(self.num_cpus),
                "--object-store-memory", str(self.object_store_bytes), "--include-dashboard=false",
                "--dashboard-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
                "--temp-dir", str(self.temp_dir), "--disable-usage-stats"]
        log = open(self.temp_dir / "ray-start.log", "wb")
        self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **self.auth_env, "RAY_USAGE_STATS_ENABLED": "0",
                                              "GRPC_ENABLE_FORK_SUPPORT": "0"})
        marker = self.temp_dir / "ray_current_cluster"
        deadline = time.monotonic() + startup_timeout_s
        while not (marker.exists() and marker.read_text().strip()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray start failed or timed out; log:\n{self.log()}")
            time.sleep(0.2)
        self.address = marker.read_text().strip()
        self.client_address = f"ray://{self.address.rsplit(':', 1)[0]}:{client_port}"
        return self

    def log(self) -> str:
        path = (self.temp_dir or Path("/nonexistent")) / "ray-start.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def worker_pids(self, class_name: str) -> list[int]:
        """Pids of this head's Ray workers hosting an actor of `class_name` (Ray titles them `ray::Name`)."""
        processes = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                    title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                except OSError:
                    continue
                processes[int(proc.name)] = (int(stat[1]), int(stat[2]), title)  # ppid, pgid, title
        ours = {pid for pid, (_, pgid, _) in processes.items() if pgid == self._process.pid}
        title_of = f"ray::{class_name}"
        return [pid for pid, (ppid, _, title) in processes.items()
                if ppid in ours and (title.strip() == title_of or title.startswith(f"{title_of}."))]

    def stop(self) -> None:
        if self._process is not None:
            for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
                try:
                    os.killpg(self._process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self._process.wait(wait_s)
                except subprocess.TimeoutExpired:
                    continue
            try:
                os.killpg(self._process.pid, signal.SIGKILL)  # what the head left in its session
            except ProcessLookupError:
                pass
            self._process = None
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

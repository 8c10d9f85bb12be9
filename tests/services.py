"""Real services for the test-suite: a redis-server process on loopback.

The Kafka-protocol broker lives in the library (`ringwatch.connectors.EmbeddedBroker`)
because the demo starts one too; Redis is only ever started by tests.
"""

from __future__ import annotations

import shutil
import subprocess
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

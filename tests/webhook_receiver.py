"""A real webhook endpoint for tests: HTTP/1.1 with keep-alive, every Standard Webhooks signature verified.

It records each accepted delivery in arrival order and the TCP connection it
came on, answers with whatever a `Responder` says, and can be stopped (every
open connection cut, as a crashed endpoint would) and started again on the
same port.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

# A responder gets (webhook-id, attempt number for that id starting at 1) and returns (status, headers).
Responder = Callable[[str, int], tuple[int, dict[str, str]]]


def accept(_id: str, _attempt: int) -> tuple[int, dict[str, str]]:
    return 200, {}


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


class Receiver:
    """`accepted` lists {"id", "payload", "at", "connection"} in arrival order; `attempts` counts per id."""

    def __init__(self, port: int, secret: str, respond: Responder = accept, *, tls=None):
        """`tls`: a `ringwatch.runtime.tls.TlsFiles` to serve HTTPS with its certificate and key."""
        self.port = port
        self.tls = tls
        self.secret = secret
        self.respond = respond
        self.attempts: Counter[str] = Counter()
        self.accepted: list[dict] = []
        self.bad_signatures = 0
        self.connections = 0
        self.lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hooks/alerts"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: one connection serves many deliveries

            def setup(self) -> None:
                super().setup()
                with receiver.lock:
                    receiver.connections += 1
                    self.connection_number = receiver.connections
                    receiver._open.add(self.connection)

            def finish(self) -> None:
                with receiver.lock:
                    receiver._open.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    payload = Webhook(receiver.secret).verify(body, dict(self.headers))
                except Exception:
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    self._answer(400, {})
                    return
                message_id = self.headers["webhook-id"]
                with receiver.lock:
                    receiver.attempts[message_id] += 1
                    attempt = receiver.attempts[message_id]
                status, headers = receiver.respond(message_id, attempt)
                if 200 <= status < 300:
                    with receiver.lock:
                        receiver.accepted.append({"id": message_id, "payload": payload, "at": time.monotonic(),
                                                  "connection": self.connection_number})
                self._answer(status, headers)

            def _answer(self, status: int, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert, self.tls.key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self.lock:
            connections = list(self._open)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def accepted_ids(self) -> list[str]:
        with self.lock:
            return [entry["id"] for entry in self.accepted]

    def used_connections(self) -> set[int]:
        with self.lock:
            return {entry["connection"] for entry in self.accepted}


def inverted_pairs(received: list[str], sent: list[str]) -> int:
    """Pairs of alerts that arrived in the opposite order to the one they were sent in."""
    rank = {alert_id: i for i, alert_id in enumerate(sent)}
    order = [rank[alert_id] for alert_id in received]
    return sum(1 for i in range(len(order)) for j in range(i + 1, len(order)) if order[i] > order[j])

"""gRPC between nodes and drivers: one generic `Call` method and `Fetch` for object values.

Both ride on signed gRPC (`rpc.py`): a caller proves it holds the cluster token
with a per-request signature bound to the node it calls, and the node proves
it in its sealed answer, so neither side unpickles bytes from a peer without
the token, and the token itself never travels. Large requests and answers move
in 1 MiB chunks; no single message exceeds `rpc.MESSAGE_LIMIT`. Nodes listen on
127.0.0.1 unless told otherwise, and use TLS with client certificates when given
`TlsFiles`.

This is the seam for any new node-to-node or caller-to-worker channel: serve
with `serve` (or `rpc.SignedServer` with `keys.calls`), dial with `NodeClient`
(or `rpc.SignedChannel`), and the address dialled is the one signed for.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
import grpc

from .auth import ClusterKeys
from .errors import AuthError, GetTimeoutError, NodeUnavailableError
from .rpc import SignedChannel, SignedServer
from .tls import TlsFiles

logger = logging.getLogger(__name__)

SERVICE = "ringwatch.Node"


def serve(handler: Callable[[str, tuple], Any], fetch: Callable[[str], bytes], *, keys: ClusterKeys,
          host: str = "127.0.0.1", port: int = 0, tls: TlsFiles | None = None,
          max_workers: int = 128) -> tuple[SignedServer, int]:
    """Start the node service; return the server and the port it bound."""

    def call(request: bytes) -> bytes:
        method, args = pickle.loads(request)  # signed by a holder of the token: see rpc.SignedServer
        try:
            return cloudpickle.dumps((True, handler(method, args)))
        except Exception as exc:  # the caller gets the exception, the node keeps serving
            return cloudpickle.dumps((False, exc))

    server = SignedServer(SERVICE, {"Call": call, "Fetch": lambda request: fetch(request.decode())}, keys.calls,
                          host=host, port=port, tls=tls, max_workers=max_workers, thread_name="ringwatch-grpc")
    server.start()
    return server, server.port


class NodeClient:
    """Calls one node; retries while it is unreachable, then fails naming the address."""

    def __init__(self, address: str, keys: ClusterKeys, *, tls: TlsFiles | None = None, retries: int = 3,
                 backoff_s: float = 0.2):
        self.address = address
        self._channel = SignedChannel(address, SERVICE, keys.calls, tls=tls)
        self.retries = retries
        self.backoff_s = backoff_s

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        request = cloudpickle.dumps((method, args))
        response = self._with_retries(lambda: self._channel.call("Call", request, timeout=timeout))
        ok, value = pickle.loads(response)  # opened with the key: the node proved the token
        if not ok:
            raise value
        return value

    def fetch(self, object_id: str) -> bytes:
        return self._with_retries(lambda: self._channel.call("Fetch", object_id.encode()))

    def _with_retries(self, attempt: Callable[[], Any]) -> Any:
        for tries in range(self.retries + 1):
            try:
                return attempt()  # signed afresh each time: a retry is a new request, not a replay
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise AuthError(f"node {self.address} refused the call: {exc.details()} (is this the "
                                    f"cluster's token?)") from None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise GetTimeoutError(f"node {self.address} did not answer in time") from None
                if code != grpc.StatusCode.UNAVAILABLE or tries == self.retries:
                    raise NodeUnavailableError(
                        f"node {self.address} is unreachable ({code.name}: {exc.details()})") from None
                time.sleep(self.backoff_s * 2 ** tries)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._channel.close()

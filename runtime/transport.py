"""gRPC between nodes and drivers: one generic `Call` method and a chunked `Fetch` stream.

Every call carries the cluster token in its metadata. The server compares it
(in constant time) before it looks at the request, and only then unpickles it:
a node runs pickled code, so bytes from a peer without the token are never
unpickled. Nodes listen on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import hmac
import logging
import pickle
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import cloudpickle
import grpc

from .errors import AuthError, GetTimeoutError, NodeUnavailableError

logger = logging.getLogger(__name__)

SERVICE = "ringwatch.Node"
TOKEN_HEADER = "x-ringwatch-token"
CHUNK = 1 << 20
_MESSAGE_LIMIT = 1 << 30
_OPTIONS = [("grpc.max_send_message_length", _MESSAGE_LIMIT), ("grpc.max_receive_message_length", _MESSAGE_LIMIT)]


def authorized(context: grpc.ServicerContext, token: str) -> bool:
    """True when the call carries the cluster token (compared in constant time); check before parsing."""
    sent = dict(context.invocation_metadata()).get(TOKEN_HEADER, "")
    return hmac.compare_digest(sent.encode(), token.encode())


def serve(handler: Callable[[str, tuple], Any], fetch: Callable[[str], bytes], *, token: str,
          host: str = "127.0.0.1", port: int = 0, max_workers: int = 128) -> tuple[grpc.Server, int]:
    """Start the node service; return the server and the port it bound."""

    def call(request: bytes, context: grpc.ServicerContext) -> bytes:
        if not authorized(context, token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")
        method, args = pickle.loads(request)
        try:
            return cloudpickle.dumps((True, handler(method, args)))
        except Exception as exc:  # the caller gets the exception, the node keeps serving
            return cloudpickle.dumps((False, exc))

    def fetch_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        if not authorized(context, token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")
        data = fetch(request.decode())
        for offset in range(0, max(len(data), 1), CHUNK):
            yield data[offset:offset + CHUNK]

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ringwatch-grpc"),
                         options=_OPTIONS)
    handlers = {"Call": grpc.unary_unary_rpc_method_handler(call),
                "Fetch": grpc.unary_stream_rpc_method_handler(fetch_stream)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return server, bound


class NodeClient:
    """Calls one node; retries while it is unreachable, then fails naming the address."""

    def __init__(self, address: str, token: str, *, retries: int = 3, backoff_s: float = 0.2):
        self.address = address
        self._metadata = ((TOKEN_HEADER, token),)
        self._channel = grpc.insecure_channel(address, options=_OPTIONS)
        self._call = self._channel.unary_unary(f"/{SERVICE}/Call")
        self._fetch = self._channel.unary_stream(f"/{SERVICE}/Fetch")
        self.retries = retries
        self.backoff_s = backoff_s

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        request = cloudpickle.dumps((method, args))
        response = self._with_retries(lambda: self._call(request, metadata=self._metadata, timeout=timeout))
        ok, value = pickle.loads(response)
        if not ok:
            raise value
        return value

    def fetch(self, object_id: str) -> bytes:
        return self._with_retries(lambda: b"".join(self._fetch(object_id.encode(), metadata=self._metadata)))

    def _with_retries(self, attempt: Callable[[], Any]) -> Any:
        for tries in range(self.retries + 1):
            try:
                return attempt()
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise AuthError(f"node {self.address} refused the call: {exc.details()}") from None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise GetTimeoutError(f"node {self.address} did not answer in time") from None
                if code != grpc.StatusCode.UNAVAILABLE or tries == self.retries:
                    raise NodeUnavailableError(
                        f"node {self.address} is unreachable ({code.name}: {exc.details()})") from None
                time.sleep(self.backoff_s * 2 ** tries)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._channel.close()

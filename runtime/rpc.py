"""Signed gRPC: bytes-in, bytes-out methods whose callers and servers both prove the token.

`SignedServer` serves named methods (`fn(body) -> bytes`); `SignedChannel`
calls them. Every request is signed (see `auth.CallSigner`) and checked from its
metadata before its body is read: gRPC hands a generic handler the method and
metadata first, and a refused call gets a handler that aborts without asking
for the message, so an unauthenticated client makes the server hold no more
than gRPC's flow-control window (a few MB), however large its message.

No message in either direction exceeds `MESSAGE_LIMIT`. Larger bodies move in
`CHUNK`-sized pieces: a large request is streamed to `Upload`; a large answer
is kept by the server under the request's nonce and streamed from `Download`,
its size and SHA-256 announced in the sealed (small) answer to the call.
Small calls, the common case, stay one unary round trip.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from .auth import CallClaims, CallSigner, CallVerifier
from .errors import AuthError, CallRefusedError
from .tls import TlsFiles

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
INLINE_LIMIT = 2 * CHUNK  # bodies above this travel in chunks
MESSAGE_LIMIT = 4 * CHUNK  # the largest single message a server or client accepts
STASH_TTL_S = 120.0  # a large answer not downloaded by then is dropped
UPLOAD = "Upload"
DOWNLOAD = "Download"
_INLINE, _LARGE = b"I", b"L"
_OPTIONS = [("grpc.max_send_message_length", MESSAGE_LIMIT), ("grpc.max_receive_message_length", MESSAGE_LIMIT)]

Method = Callable[[bytes], bytes]


class _Stash:
    """Large answers waiting to be downloaded, by request nonce; expired ones go at the next put."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()

    def put(self, nonce: str, data: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, (expires, _) in self._items.items() if expires < now]:
                del self._items[key]
            self._items[nonce] = (now + STASH_TTL_S, data)

    def take(self, nonce: str) -> bytes | None:
        with self._lock:
            item = self._items.pop(nonce, None)
        return None if item is None else item[1]


def _refuse(reason: str) -> grpc.RpcMethodHandler:
    """A handler that aborts without reading the request (a streaming request is read only when iterated)."""
    def abort(_requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
    return grpc.stream_unary_rpc_method_handler(abort)


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, server: "SignedServer"):
        self._server = server

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._server.handler_for(details.method, details.invocation_metadata)


class SignedServer:
    """A gRPC service of signed byte methods on `host:port` (TLS with client certificates when `tls`)."""

    def __init__(self, service: str, methods: dict[str, Method], key: bytes, *, host: str = "127.0.0.1",
                 port: int = 0, tls: TlsFiles | None = None, audience: str | None = None,
                 max_workers: int = 16, thread_name: str = "ringwatch-rpc"):
        if UPLOAD in methods or DOWNLOAD in methods:
            raise ValueError(f"{UPLOAD} and {DOWNLOAD} are reserved method names")
        self.service = service
        self._methods = methods
        self._stash = _Stash()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name),
                                   options=_OPTIONS)
        self._server.add_generic_rpc_handlers((_Handler(self),))
        target = f"{host}:{port}"
        try:  # grpc returns port 0 (older versions) or raises RuntimeError when it cannot bind
            self.port = (self._server.add_secure_port(target, tls.server_credentials()) if tls
                         else self._server.add_insecure_port(target))
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {target} (port in use or address not on this machine)")
        self.address = f"{host}:{self.port}"
        # Calls are signed for the address the server advertises, unless it names itself otherwise.
        self._verifier = CallVerifier(key, audience or self.address)

    def start(self) -> "SignedServer":
        self._server.start()
        return self

    def stop(self, grace: float | None = None) -> threading.Event:
        return self._server.stop(grace)

    # ---- dispatch (gRPC threads) ------------------------------------------------------------------

    def handler_for(self, path: str, metadata: Any) -> grpc.RpcMethodHandler | None:
        prefix = f"/{self.service}/"
        if not path.startswith(prefix):
            return None
        name = path[len(prefix):]
        if name not in self._methods and name not in (UPLOAD, DOWNLOAD):
            return None
        try:
            claims = self._verifier.check(path, metadata)
        except CallRefusedError as exc:
            logger.info("refused %s: %s", path, exc)
            return _refuse(str(exc))
        if name == UPLOAD:
            return grpc.stream_unary_rpc_method_handler(lambda chunks, context: self._upload(claims, chunks, context))
        if name == DOWNLOAD:
            return grpc.unary_stream_rpc_method_handler(lambda body, context: self._download(claims, body, context))
        if claims.target != name:
            return _refuse("the call's signature names another method")
        return grpc.unary_unary_rpc_method_handler(lambda body, context: self._call(claims, body, context))

    def _call(self, claims: CallClaims, body: bytes, context: grpc.ServicerContext) -> bytes:
        self._check_body(claims, body, context)
        return self._answer(claims, self._methods[claims.target](body))

    def _upload(self, claims: CallClaims, chunks: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        if claims.target not in self._methods:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no method {claims.target!r}")
        body = b"".join(chunks)
        self._check_body(claims, body, context)
        return self._answer(claims, self._methods[claims.target](body))

    def _download(self, claims: CallClaims, body: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._check_body(claims, body, context)
        data = self._stash.take(body.decode("ascii", "replace"))
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no answer is waiting under that call (expired or taken)")
        view = memoryview(data)
        for offset in range(0, len(view), CHUNK):
            yield bytes(view[offset:offset + CHUNK])

    def _check_body(self, claims: CallClaims, body: bytes, context: grpc.ServicerContext) -> None:
        try:
            self._verifier.check_body(claims, body)
        except CallRefusedError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))

    def _answer(self, claims: CallClaims, response: bytes) -> bytes:
        if len(response) <= INLINE_LIMIT:
            return self._verifier.seal_response(claims, _INLINE, response)
        self._stash.put(claims.nonce, response)
        announce = struct.pack(">Q", len(response)) + hashlib.sha256(response).digest()
        return self._verifier.seal_response(claims, _LARGE, announce)


class SignedChannel:
    """Calls one SignedServer; every request signed for `audience` (default: the address dialled)."""

    def __init__(self, address: str, service: str, key: bytes, *, tls: TlsFiles | None = None,
                 audience: str | None = None):
        self.address = address
        self.service = service
        self._signer = CallSigner(key, audience or address)
        self._channel = (grpc.secure_channel(address, tls.channel_credentials(), options=_OPTIONS) if tls
                         else grpc.insecure_channel(address, options=_OPTIONS))
        self._unary: dict[str, Any] = {}
        self._upload = self._channel.stream_unary(f"/{service}/{UPLOAD}")
        self._download = self._channel.unary_stream(f"/{service}/{DOWNLOAD}")

    def call(self, method: str, body: bytes, *, timeout: float | None = None) -> bytes:
        """The server's answer to `method(body)`; grpc.RpcError for transport failures, AuthError for a
        server that does not prove the token."""
        digest = hashlib.sha256(body).digest()
        if len(body) <= INLINE_LIMIT:
            path = f"/{self.service}/{method}"
            stub = self._unary.get(method)
            if stub is None:
                stub = self._unary[method] = self._channel.unary_unary(path)
            header, nonce = self._signer.sign(path, method, digest)
            sealed = stub(body, metadata=(header,), timeout=timeout)
        else:
            header, nonce = self._signer.sign(f"/{self.service}/{UPLOAD}", method, digest)
            sealed = self._upload(_chunks(body), metadata=(header,), timeout=timeout)
        kind, payload = self._signer.open_response(nonce, sealed)
        if kind == _INLINE:
            return payload
        return self._fetch_large(nonce, payload, timeout)

    def _fetch_large(self, nonce: str, announce: bytes, timeout: float | None) -> bytes:
        size, digest = struct.unpack(">Q", announce[:8])[0], announce[8:]
        request = nonce.encode()
        header, _ = self._signer.sign(f"/{self.service}/{DOWNLOAD}", DOWNLOAD, hashlib.sha256(request).digest())
        data = bytearray()
        for chunk in self._download(request, metadata=(header,), timeout=timeout):
            data += chunk
            if len(data) > size:
                break
        if len(data) != size or hashlib.sha256(data).digest() != digest:
            raise AuthError(f"{self.address} streamed an answer that is not the one it announced")
        return bytes(data)

    def close(self) -> None:
        self._channel.close()


def _chunks(body: bytes) -> Iterator[bytes]:
    view = memoryview(body)
    for offset in range(0, len(view), CHUNK):
        yield bytes(view[offset:offset + CHUNK])

"""Direct calls' transport: a caller's node talks straight to the worker process that hosts an actor.

The node that placed an actor does not relay its calls (Ray's direct actor
calls; the Ownership paper, NSDI'21): each actor worker of a cluster listens
on its node's interface (loopback unless the node was told otherwise), and a
caller's node opens one channel to it and sends its calls down it, in order;
the results come back on the same channel.

A channel is a TCP stream of length-prefixed frames. Before either side reads
a frame, both prove they hold the cluster's direct-call key (derived from the
cluster token; it never travels): the server sends a nonce, the client answers
with an HMAC of it and its own nonce, the server answers that with an HMAC
too. Only then is anything unpickled. With TLS configured the stream is
wrapped in TLS, certificates checked against the cluster's CA both ways.
Frames above `MAX_FRAME` close the channel. Writes never block the sender
(see `Channel`): a peer that stops reading stalls no one else.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import pickle
import secrets
import socket
import ssl
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from .errors import AuthError

logger = logging.getLogger(__name__)

PURPOSE = b"ringwatch/direct-calls/v1"
MAX_FRAME = 1 << 31  # 2 GiB: a frame is at most one batch of calls or one result
HANDSHAKE_S = 10.0
_NONCE = 32
_HEADER = struct.Struct(">Q")


def direct_key(calls_key: bytes) -> bytes:
    """The key of direct channels, derived one way from the cluster's node-call key."""
    return hmac.new(calls_key, PURPOSE, hashlib.sha256).digest()


@dataclass(frozen=True)
class DirectSettings:
    """How a node's actor workers serve direct calls, and how the node makes them."""

    key: bytes = field(repr=False)
    host: str  # the interface the node serves on (loopback unless told otherwise)
    node: str  # the node's own address, named in results kept there
    tls_files: tuple[str, str, str] | None = None  # cert, key, CA

    def worker_info(self) -> dict:
        """What an actor worker needs to serve (the key goes separately, in its environment)."""
        return {"host": self.host, "node": self.node, "tls": list(self.tls_files) if self.tls_files else None}

    def client_tls(self) -> ssl.SSLContext | None:
        contexts = direct_tls(list(self.tls_files) if self.tls_files else None)
        return contexts[1] if contexts else None


class Channel:
    """One authenticated stream of pickled messages, written without ever blocking the sender.

    A peer that stops reading (frozen, partitioned) must not stall the thread
    that sends to it: a node's dispatcher, or an actor's worker answering many
    callers. So `send` (safe from several threads) pickles the message and
    writes what the socket takes at once (`MSG_DONTWAIT`); the rest, and every
    message sent while it waits, goes to an outbox that a writer thread,
    started the first time it is needed, drains in order. With TLS every
    message goes through the writer. `send` on a closed channel raises OSError;
    a write that fails closes the channel, and its reader sees that.
    """

    def __init__(self, sock: socket.socket, peer: str):
        self.peer = peer
        self._sock = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._outbox: deque[bytes | memoryview] = deque()  # frames (or their unsent tails) not written yet
        self._writing = False  # the writer thread owns the socket's writes until the outbox is empty
        self._writer: threading.Thread | None = None
        self._closed = False

    def send(self, message: Any) -> None:
        frames = _frames(cloudpickle.dumps(message, protocol=5))
        with self._lock:
            if self._closed:
                raise OSError(f"the channel to {self.peer} is closed")
            if not self._writing and not self._tls:
                frames = self._write_now(frames)
            if frames:
                self._outbox.extend(frames)
                self._writing = True
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write, name="ringwatch-direct-writer", daemon=True)
                    self._writer.start()
                self._wake.notify()

    def _write_now(self, frames: list[bytes | memoryview]) -> list[bytes | memoryview]:
        """Write what the socket takes without waiting; return what is left, in order."""
        for i, frame in enumerate(frames):
            try:
                sent = self._sock.send(frame, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                return []  # the channel broke: its reader sees it
            if sent < len(frame):
                return [memoryview(frame)[sent:], *frames[i + 1:]]
        return []

    def _write(self) -> None:
        while True:
            with self._lock:
                while not self._outbox and not self._closed:
                    self._writing = False
                    self._wake.wait()
                if self._closed:
                    return
                frames, self._outbox = list(self._outbox), deque()
            try:
                for frame in frames:
                    self._sock.sendall(frame)
            except OSError:
                self._shut()
                return

    def recv(self) -> Any:
        (size,) = _HEADER.unpack(_read_exactly(self._sock, _HEADER.size))
        if size > MAX_FRAME:
            raise ConnectionError(f"a frame of {size} bytes from {self.peer} is over the {MAX_FRAME}-byte limit")
        return pickle.loads(_read_exactly(self._sock, size))

    def _shut(self) -> None:
        """Mark the channel closed and wake whatever thread reads or writes its socket."""
        with self._lock:
            self._closed = True
            self._outbox.clear()
            self._wake.notify()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self._shut()
        self._sock.close()


def _read_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError("the channel was closed")
        got += n
    return buffer


def _mac(key: bytes, role: bytes, *nonces: bytes) -> bytes:
    return hmac.new(key, role + b"".join(nonces), hashlib.sha256).digest()


def _server_handshake(sock: socket.socket, key: bytes) -> None:
    """Raise AuthError unless the client proves it holds `key`; then prove it back."""
    mine = secrets.token_bytes(_NONCE)
    sock.sendall(mine)
    answer = _read_exactly(sock, 32 + _NONCE)
    proof, theirs = bytes(answer[:32]), bytes(answer[32:])
    if not hmac.compare_digest(proof, _mac(key, b"client", mine, theirs)):
        raise AuthError("a direct-call client did not prove it holds the cluster key")
    sock.sendall(_mac(key, b"server", theirs, mine))


def _client_handshake(sock: socket.socket, key: bytes) -> None:
    """Prove this side holds `key`; raise AuthError unless the server proves it too."""
    theirs = bytes(_read_exactly(sock, _NONCE))
    mine = secrets.token_bytes(_NONCE)
    sock.sendall(_mac(key, b"client", theirs, mine) + mine)
    if not hmac.compare_digest(bytes(_read_exactly(sock, 32)), _mac(key, b"server", mine, theirs)):
        raise AuthError("a direct-call server did not prove it holds the cluster key")


class DirectServer:
    """The listening side, in an actor's worker: authenticated channels whose messages go to `on_message`.

    `on_message(channel, message)` and `on_closed(channel)` run on the channel's reader thread.
    """

    def __init__(self, host: str, key: bytes, on_message: Callable[[Channel, Any], None],
                 on_closed: Callable[[Channel], None], tls: ssl.SSLContext | None = None):
        self._key = key
        self._on_message = on_message
        self._on_closed = on_closed
        self._tls = tls
        self._sock = socket.create_server((host, 0))
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, name="ringwatch-direct-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock, f"{peer[0]}:{peer[1]}"), daemon=True,
                             name="ringwatch-direct-reader").start()

    def _serve(self, sock: socket.socket, peer: str) -> None:
        try:
            sock.settimeout(HANDSHAKE_S)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            _server_handshake(sock, self._key)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, EOFError, AuthError, ssl.SSLError) as exc:
            logger.warning("refused a direct-call connection from %s: %s", peer, exc)
            sock.close()
            return
        channel = Channel(sock, peer)
        try:
            while True:
                self._on_message(channel, channel.recv())
        except (OSError, EOFError, ConnectionError):
            pass
        finally:
            channel.close()
            self._on_closed(channel)

    def close(self) -> None:
        self._sock.close()


class DirectClients:
    """The calling side, in a node: one channel per worker address, opened on first use.

    `send` is called on the node's dispatcher thread and never blocks on a
    connect: messages wait until the channel is up, then go in order. Replies
    are posted to the node as `direct_reply(address, message)`; a channel that
    cannot be opened, or breaks, is posted once as `direct_lost(address, reason,
    refused)` (`refused`: the peer failed the handshake — a wrong key, CA or
    certificate — which no retry mends) and forgotten (the next send opens a
    new one).
    """

    def __init__(self, key: bytes, post: Callable[[str, tuple], None], tls: ssl.SSLContext | None = None):
        self._key = key
        self._post = post
        self._tls = tls
        self._lock = threading.Lock()
        self._channels: dict[str, _ClientChannel] = {}

    def send(self, address: str, message: Any) -> None:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = _ClientChannel(
                    address, self._key, self._tls, lambda reply, a=address: self._post("direct_reply", (a, reply)),
                    self._lost)
        channel.send(message)

    def drop(self, address: str) -> None:
        """Close the channel to `address` (its node is declared dead); its loss is posted as usual."""
        with self._lock:
            channel = self._channels.get(address)
        if channel is not None:
            channel.close()

    def _lost(self, channel: "_ClientChannel", reason: str, refused: bool) -> None:
        with self._lock:
            if self._channels.get(channel.address) is channel:
                del self._channels[channel.address]
        self._post("direct_lost", (channel.address, reason, refused))

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()


class _ClientChannel:
    """One channel being opened or open: messages queue until it is up; a reader thread takes the replies."""

    def __init__(self, address: str, key: bytes, tls: ssl.SSLContext | None, on_reply: Callable[[Any], None],
                 on_lost: Callable[["_ClientChannel", str, bool], None]):
        self.address = address
        self._key = key
        self._tls = tls
        self._on_reply = on_reply
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._waiting: list[Any] | None = []  # messages sent before the channel was up; None once up
        self._channel: Channel | None = None
        self._closed = False
        threading.Thread(target=self._run, name="ringwatch-direct-client", daemon=True).start()

    def send(self, message: Any) -> None:
        with self._lock:
            if self._waiting is not None:
                self._waiting.append(message)
                return
            channel = self._channel
        try:
            channel.send(message)  # never blocks (see Channel)
        except OSError:
            pass  # the reader sees the break and reports the loss

    def _open(self) -> Channel:
        host, _, port = self.address.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=HANDSHAKE_S)
        try:
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=host)
            _client_handshake(sock, self._key)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return Channel(sock, self.address)

    def _run(self) -> None:
        try:
            channel = self._open()
        except (AuthError, ssl.SSLError) as exc:  # SSLError before OSError: it is one
            self._on_lost(self, f"{self.address} refused a direct channel: {exc}", True)
            return
        except (OSError, EOFError) as exc:
            self._on_lost(self, f"cannot open a direct channel to {self.address}: {exc}", False)
            return
        with self._lock:
            self._channel = channel
            waiting, self._waiting = self._waiting, None
            try:
                for message in waiting:
                    channel.send(message)
            except OSError:
                pass
            if self._closed:
                channel.close()
        reason = "closed"
        try:
            while True:
                self._on_reply(channel.recv())
        except (OSError, EOFError, ConnectionError) as exc:
            reason = str(exc) or type(exc).__name__
        finally:
            channel.close()
            self._on_lost(self, f"the direct channel to {self.address} broke ({reason})", False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channel = self._channel
        if channel is not None:
            channel.close()


def _frames(data: bytes) -> list[bytes | memoryview]:
    """A message's frame: its length, then its bytes (a large one is not copied behind its header)."""
    header = _HEADER.pack(len(data))
    return [header + data] if len(data) < 65536 else [header, data]


def direct_tls(files: list[str] | None) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """(server, client) TLS contexts from [cert, key, ca] paths (None without TLS): this party's
    certificate, and peers' certificates checked against the cluster's CA both ways."""
    if not files:
        return None
    cert, key, ca = files
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    server.load_verify_locations(ca)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(cert, key)
    client.load_verify_locations(ca)
    return server, client

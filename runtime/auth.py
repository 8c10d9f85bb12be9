"""Proof of the cluster token without sending it: derived keys, sealed GCS records, signed calls.

The cluster token never leaves the process that was given it. Everything that
crosses a trust boundary carries an HMAC-SHA256 under a key derived from it
(HKDF, RFC 5869, one key per purpose), so a peer or a Redis writer without the
token can neither forge nor replay what a node or driver acts on:

- GCS records (`RecordSealer`): every value written to Redis is sealed with the
  record key over (namespace, table, key, value) and opened (verified) before
  it is parsed, let alone unpickled. A value moved to another key, or written
  by someone without the token, fails to open.
- Calls (`CallSigner` / `CallVerifier`): a request carries, in its metadata, a
  MAC over the server it is meant for (its audience), the gRPC method, the time,
  a fresh nonce and the SHA-256 of its body. The server checks all of it from
  the metadata alone, before it reads the body; it keeps the nonces it saw while
  their time is inside the allowed skew, so a captured request cannot be played
  again to the same server, and the audience stops it being played to another.
  The answer comes back sealed with the same key and the request's nonce: a
  server without the token cannot make a client unpickle anything.
- The query token (`query_token_for`) is derived from the cluster token one way:
  a dashboard holding it can query an engine but cannot compute the cluster
  token, so it cannot run code on the nodes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import AuthError, CallRefusedError, ForgedRecordError

logger = logging.getLogger(__name__)

AUTH_HEADER = "x-ringwatch-auth"
MAX_SKEW_S = 30.0  # a signed call is accepted this long either side of the server's clock
_SALT = b"ringwatch hkdf v1"
_SEAL_MAGIC = b"RWS1"
_MAC_LEN = 32

RECORDS_PURPOSE = "ringwatch/gcs-records/v1"
NODE_CALLS_PURPOSE = "ringwatch/node-calls/v1"
QUERY_TOKEN_PURPOSE = "ringwatch/query-token/v1"
QUERY_CALLS_PURPOSE = "ringwatch/query-calls/v1"


def derive_key(secret: str, purpose: str) -> bytes:
    """A 32-byte key for one purpose, derived from a token with HKDF-SHA256 (extract, then one expand block)."""
    if not secret:
        raise ValueError("cannot derive a key from an empty token")
    prk = hmac.new(_SALT, secret.encode(), hashlib.sha256).digest()
    return hmac.new(prk, purpose.encode() + b"\x01", hashlib.sha256).digest()


def query_token_for(cluster_token: str) -> str:
    """The read-only query token of a cluster: derived one way, so it does not reveal the cluster token."""
    return derive_key(cluster_token, QUERY_TOKEN_PURPOSE).hex()


def query_call_key(query_token: str) -> bytes:
    """The key query clients sign with and the query service verifies with."""
    return derive_key(query_token, QUERY_CALLS_PURPOSE)


def _frame(*parts: str | bytes) -> bytes:
    """Length-prefixed parts, so no choice of strings can make two different tuples MAC alike."""
    out = bytearray()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out += struct.pack(">I", len(data)) + data
    return bytes(out)


@dataclass(frozen=True)
class ClusterKeys:
    """The keys a node or driver derives from the cluster token; the token itself is not kept."""

    records: bytes
    calls: bytes

    @classmethod
    def from_token(cls, token: str) -> "ClusterKeys":
        return cls(derive_key(token, RECORDS_PURPOSE), derive_key(token, NODE_CALLS_PURPOSE))

    def __repr__(self) -> str:  # keys must not reach a log line
        return "ClusterKeys(<derived>)"


# ---- GCS records -------------------------------------------------------------------------------------


class RecordSealer:
    """Seals GCS values with the record key, bound to their namespace, table and key."""

    def __init__(self, key: bytes, namespace: str):
        self._key = key
        self._namespace = namespace

    def seal(self, table: str, key: str, payload: bytes) -> bytes:
        return _SEAL_MAGIC + self._mac(table, key, payload) + payload

    def open(self, table: str, key: str, sealed: bytes) -> bytes:
        """The payload of a value this cluster sealed for `table`/`key`; ForgedRecordError otherwise."""
        if not sealed.startswith(_SEAL_MAGIC) or len(sealed) < len(_SEAL_MAGIC) + _MAC_LEN:
            raise ForgedRecordError(f"GCS {table}[{key}] is not sealed")
        start = len(_SEAL_MAGIC)
        mac, payload = sealed[start:start + _MAC_LEN], sealed[start + _MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(table, key, payload)):
            raise ForgedRecordError(f"GCS {table}[{key}] has a seal this cluster's token did not make")
        return payload

    def _mac(self, table: str, key: str, payload: bytes) -> bytes:
        mac = hmac.new(self._key, _frame("record", self._namespace, table, key), hashlib.sha256)
        mac.update(payload)
        return mac.digest()


# ---- signed calls ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallClaims:
    """What a verified request header says: its nonce, target method and the SHA-256 its body must have."""

    nonce: str
    target: str
    digest: bytes


def _request_mac(key: bytes, audience: str, path: str, target: str, ts_ms: str, nonce: str, digest: bytes) -> str:
    return hmac.new(key, _frame("request", audience, path, target, ts_ms, nonce, digest), hashlib.sha256).hexdigest()


def _response_mac(key: bytes, audience: str, nonce: str, kind: bytes, payload: bytes) -> bytes:
    mac = hmac.new(key, _frame("response", audience, nonce, kind), hashlib.sha256)
    mac.update(payload)
    return mac.digest()


class CallSigner:
    """The client side: signs requests for one server (`audience`) and opens its sealed answers."""

    def __init__(self, key: bytes, audience: str):
        self._key = key
        self.audience = audience

    def sign(self, path: str, target: str, digest: bytes) -> tuple[tuple[str, str], str]:
        """The metadata entry for one request, and its nonce (to open the answer with)."""
        ts_ms, nonce = str(int(time.time() * 1000)), secrets.token_hex(16)
        mac = _request_mac(self._key, self.audience, path, target, ts_ms, nonce, digest)
        return (AUTH_HEADER, f"v1 {ts_ms} {nonce} {digest.hex()} {mac} {target}"), nonce

    def open_response(self, nonce: str, sealed: bytes) -> tuple[bytes, bytes]:
        """(kind, payload) of an answer sealed by a server holding the key; AuthError otherwise."""
        if len(sealed) < 1 + _MAC_LEN:
            raise AuthError(f"{self.audience} answered without a seal: it does not hold the token")
        kind, mac, payload = sealed[:1], sealed[1:1 + _MAC_LEN], sealed[1 + _MAC_LEN:]
        if not hmac.compare_digest(mac, _response_mac(self._key, self.audience, nonce, kind, payload)):
            raise AuthError(f"{self.audience} answered with a seal the token did not make: it does not hold "
                            f"the token (or the answer was tampered with)")
        return kind, payload


class CallVerifier:
    """The server side: checks request headers (before any body is read), bodies, and seals answers."""

    def __init__(self, key: bytes, audience: str, *, max_skew_s: float = MAX_SKEW_S):
        self._key = key
        self.audience = audience
        self.max_skew_s = max_skew_s
        self._seen: dict[int, set[str]] = {}  # second of the request's time -> nonces seen with it
        self._lock = threading.Lock()

    def check(self, path: str, metadata: Iterable[tuple[str, str | bytes]]) -> CallClaims:
        """The claims of a request signed for this server, now, once; CallRefusedError otherwise."""
        header = next((v for k, v in metadata if k == AUTH_HEADER), None)
        if not isinstance(header, str):
            raise CallRefusedError("the call is not signed with the token")
        parts = header.split(" ", 5)
        if len(parts) != 6 or parts[0] != "v1":
            raise CallRefusedError("the call's signature is malformed")
        _, ts_ms, nonce, digest_hex, mac, target = parts
        try:
            digest = bytes.fromhex(digest_hex)
            sent_at = int(ts_ms) / 1000
        except ValueError:
            raise CallRefusedError("the call's signature is malformed") from None
        expected = _request_mac(self._key, self.audience, path, target, ts_ms, nonce, digest)
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            raise CallRefusedError("the call's signature does not prove the token (or it was meant for "
                                   "another server)")
        now = time.time()
        if abs(now - sent_at) > self.max_skew_s:
            raise CallRefusedError(f"the call was signed {now - sent_at:+.0f} s from this server's clock "
                                   f"(more than {self.max_skew_s:.0f} s: a replay, or clocks out of step)")
        self._remember(nonce, int(sent_at), now)
        return CallClaims(nonce, target, digest)

    def _remember(self, nonce: str, second: int, now: float) -> None:
        """Refuse a nonce seen before; a replay carries the same signed time, so one bucket holds it."""
        with self._lock:
            bucket = self._seen.get(second)
            if bucket is None:
                horizon = now - self.max_skew_s - 1
                for old in [s for s in self._seen if s < horizon]:
                    del self._seen[old]
                bucket = self._seen[second] = set()
            if nonce in bucket:
                raise CallRefusedError("the call was played before (same nonce): refused")
            bucket.add(nonce)

    @staticmethod
    def check_body(claims: CallClaims, body: bytes) -> None:
        if not hmac.compare_digest(hashlib.sha256(body).digest(), claims.digest):
            raise CallRefusedError("the call's body is not the one its signature covers")

    def seal_response(self, claims: CallClaims, kind: bytes, payload: bytes) -> bytes:
        return kind + _response_mac(self._key, self.audience, claims.nonce, kind, payload) + payload

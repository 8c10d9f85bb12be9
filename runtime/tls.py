"""Optional TLS with client certificates for node gRPC and the query service.

Given a certificate, its key and the CA that signed every party's certificate,
a server accepts only clients that present a certificate from that CA, and a
client accepts only servers that do (the server's certificate must name the
host or IP the client dials). TLS adds confidentiality and a second proof of
membership; calls are still signed with the token (see `auth.py`).

Paths come from `--tls-cert/--tls-key/--tls-ca`, or from RINGWATCH_TLS_CERT,
RINGWATCH_TLS_KEY and RINGWATCH_TLS_CA (how a driver such as `ringwatch run`
finds them). All three or none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from .errors import TlsConfigError

ENV = {"cert": "RINGWATCH_TLS_CERT", "key": "RINGWATCH_TLS_KEY", "ca": "RINGWATCH_TLS_CA"}


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: this party's certificate chain and private key, and the CA that signs the cluster's certificates."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_options(cls, cert: str | None, key: str | None, ca: str | None, *,
                     prefix: str = "--tls-") -> "TlsFiles | None":
        """None when no option is given; all three when any is (else TlsConfigError naming the missing ones)."""
        given = {"cert": cert, "key": key, "ca": ca}
        if not any(given.values()):
            return None
        missing = [f"{prefix}{name}" for name, value in given.items() if not value]
        if missing:
            raise TlsConfigError(f"TLS needs a certificate, its key and the CA together: {', '.join(missing)} "
                                 f"missing")
        files = cls(Path(cert), Path(key), Path(ca))
        for name in ("cert", "key", "ca"):
            path = getattr(files, name)
            if not path.is_file():
                raise TlsConfigError(f"{prefix}{name} {path}: no such file")
        return files

    @classmethod
    def from_env(cls) -> "TlsFiles | None":
        return cls.from_options(*(os.environ.get(ENV[n]) for n in ("cert", "key", "ca")), prefix="RINGWATCH_TLS_")

    def _read(self) -> tuple[bytes, bytes, bytes]:
        try:
            return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()
        except OSError as exc:
            raise TlsConfigError(f"cannot read a TLS file: {exc}") from None

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve with this certificate; refuse clients without a certificate from the CA."""
        cert, key, ca = self._read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Dial with this certificate; trust only servers with a certificate from the CA."""
        cert, key, ca = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

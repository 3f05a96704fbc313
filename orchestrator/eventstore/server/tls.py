"""The server's certificate: ``--tls-cert`` and ``--tls-key`` (both, or neither for an insecure server),
read and checked once at start-up so that a wrong file is named in a clear error rather than in gRPC's
"Failed to bind to address"."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import grpc

#: the usage error when only one of the two options is given
PAIR_REQUIRED = "--tls-cert and --tls-key go together: give both (TLS) or neither (insecure)"


class TlsError(ValueError):
    """The certificate or key cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True, repr=False)
class ServerCertificate:
    """A PEM certificate (chain: the server's first, then intermediates) and its unencrypted private key."""

    chain: bytes
    key: bytes
    source: str

    @classmethod
    def load(cls, cert: Path, key: Path) -> Self:
        for option, path in (("--tls-cert", cert), ("--tls-key", key)):
            if not path.is_file():
                raise TlsError(f"{option} {path}: no such file")
        try:
            # The standard library parses both and checks that the key belongs to the certificate; an
            # encrypted key fails here (empty passphrase) instead of prompting for one.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=b"")
        except (ssl.SSLError, OSError) as e:
            raise TlsError(
                f"--tls-cert {cert} / --tls-key {key}: not a usable PEM certificate and matching "
                f"unencrypted private key ({e})"
            ) from e
        return cls(cert.read_bytes(), key.read_bytes(), f"{cert}")

    def credentials(self) -> Any:
        """gRPC server credentials; clients are not asked for a certificate (users authenticate by name)."""
        return grpc.ssl_server_credentials([(self.key, self.chain)])

    def __repr__(self) -> str:  # never the key's bytes in a log line or a traceback
        return f"ServerCertificate({self.source})"


def certificate_option(cert: Path | None, key: Path | None) -> ServerCertificate | None:
    """What ``--tls-cert`` and ``--tls-key`` ask for: ``None`` (insecure) when neither is given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise TlsError(PAIR_REQUIRED)
    return ServerCertificate.load(cert, key)

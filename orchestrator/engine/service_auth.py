"""How the engine proves who it is to a participant, beyond a static header: a short-lived signed token
per call (``ServiceToken``), and a client certificate (``ServiceTls``, mTLS).

A token is a JWT signed with the service's private key: ``iss`` the orchestrator, ``aud`` the service,
``iat``, ``exp`` within the attempt's deadline (and ``max_ttl_s``), ``jti`` unique per attempt, and the
tenant, saga, step, phase and attempt as claims, so a participant can refuse a token replayed for another
call. The public half is published as a JWKS (``/.well-known/jwks.json``) and can be handed to the
participant's team as a PEM file.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from orchestrator.engine.calls import StepCall
from orchestrator.settings import ServiceConfig, ServiceTls, ServiceToken

_SIGNING = {
    "RS256": rsa.RSAPrivateKey,
    "PS256": rsa.RSAPrivateKey,
    "ES256": ec.EllipticCurvePrivateKey,
    "EdDSA": ed25519.Ed25519PrivateKey,
}


class ServiceKeyError(ValueError):
    """A service's key or certificate settings cannot be used (the message names the setting)."""


@dataclass(frozen=True)
class TokenSigner:
    service: str
    settings: ServiceToken
    key: Any
    kid: str

    @classmethod
    def load(cls, service: str, settings: ServiceToken) -> TokenSigner:
        where = f"services.{service}.token.private_key_file"
        try:
            key = serialization.load_pem_private_key(settings.private_key_file.read_bytes(), password=None)
        except OSError as e:
            raise ServiceKeyError(f"{where}: cannot be read ({e.strerror})") from None
        except (ValueError, TypeError):
            raise ServiceKeyError(f"{where}: not an unencrypted PEM private key") from None
        if not isinstance(key, _SIGNING[settings.algorithm]):
            raise ServiceKeyError(f"{where}: not a key for {settings.algorithm}")
        if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name != "secp256r1":
            raise ServiceKeyError(f"{where}: ES256 needs a P-256 key")
        return cls(service, settings, key, settings.kid or public_key_id(key.public_key()))

    def token(self, call: StepCall, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time())
        remaining = max(1.0, call.send_deadline - time.monotonic())
        claims = {
            "iss": self.settings.issuer,
            "aud": self.settings.audience or self.service,
            "iat": issued,
            "exp": issued + int(min(remaining, call.timeout, self.settings.max_ttl_s)) + 1,
            "jti": f"{call.idempotency_key}.{call.attempt}",
            "tenant": call.tenant,
            "saga_id": call.saga_id,
            "step": call.step,
            "phase": call.phase.value,
            "attempt": call.attempt,
        }
        return jwt.encode(claims, self.key, algorithm=self.settings.algorithm, headers={"kid": self.kid})

    def jwk(self) -> dict[str, Any]:
        public = self.key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            entry = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            entry = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            entry = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**entry, "kid": self.kid, "alg": self.settings.algorithm, "use": "sig"}


def public_key_id(public: Any) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def public_der(public: Any) -> bytes:
    return bytes(
        public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def signers(services: dict[str, ServiceConfig]) -> dict[str, TokenSigner]:
    return {n: TokenSigner.load(n, c.token) for n, c in services.items() if c.token is not None}


def jwks(services: dict[str, ServiceConfig]) -> dict[str, Any]:
    """The public keys participants verify the engine's tokens with (one per distinct key)."""
    keys = {s.kid: s.jwk() for s in signers(services).values()}
    return {"keys": [keys[k] for k in sorted(keys)]}


def ssl_context(service: str, tls: ServiceTls) -> ssl.SSLContext:
    where = f"services.{service}.tls"
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.client_cert_file is not None and tls.client_key_file is not None:
            context.load_cert_chain(str(tls.client_cert_file), str(tls.client_key_file))
    except (OSError, ssl.SSLError) as e:
        raise ServiceKeyError(f"{where}: cannot be used ({type(e).__name__})") from None
    return context


def json_jwks(services: dict[str, ServiceConfig]) -> bytes:
    return json.dumps(jwks(services), sort_keys=True).encode()

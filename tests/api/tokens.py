"""Keys and tokens for the jwt auth mode's tests: real key pairs (cryptography), tokens signed by PyJWT
or assembled by hand (for what a well-behaved library refuses to produce: ``alg: none``, tampering), and
a JWKS endpoint on a real aiohttp server that a test can rotate or break."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from orchestrator.settings import AuthSettings, JwtSettings

ISSUER = "https://idp.example.test/"
AUDIENCE = "saga-orchestrator"
SECRET = "s" * 24 + "-hmac-secret-for-tests"  # 46 bytes


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def pem(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    rsa_other: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ec256: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    ec384: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))
    ed: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)

    def jwks(self, *, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The identity provider's published keys: RSA pinned to RS256, EC P-256, and a P-384 key."""

        def jwk(key: Any, kid: str, alg: str | None) -> dict[str, Any]:
            entry: dict[str, Any] = json.loads(_to_jwk(key))
            entry.update(kid=kid, use="sig")
            if alg:
                entry["alg"] = alg
            return entry

        keys = [
            jwk(self.rsa.public_key(), "rsa-1", "RS256"),
            jwk(self.ec256.public_key(), "ec-1", None),
            jwk(self.ec384.public_key(), "ec384-1", None),
        ]
        return {"keys": [*keys, *(extra or [])]}


def _to_jwk(public_key: Any) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return json.dumps(jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True))
    return json.dumps(jwt.algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice@acme",
        "tenant": "acme",
        "roles": ["operator"],
        "iat": now,
        "nbf": now - 5,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


DROP: Any = object()


def sign(payload: dict[str, Any], key: Any, algorithm: str, **headers: Any) -> str:
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers or None)


def unsigned(payload: dict[str, Any], alg: str = "none", signature: str = "", **headers: Any) -> str:
    return f"{b64json({'alg': alg, 'typ': 'JWT', **headers})}.{b64json(payload)}.{signature}"


def hmac_with(payload: dict[str, Any], secret: bytes, alg: str = "HS256", **headers: Any) -> str:
    """An HMAC token with any bytes as the secret (PyJWT refuses PEM keys as HMAC secrets, as it should;
    a forger would not ask it)."""
    import hashlib
    import hmac

    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    head = b64json({"alg": alg, "typ": "JWT", **headers})
    body = b64json(payload)
    mac = hmac.new(secret, f"{head}.{body}".encode(), digest).digest()
    return f"{head}.{body}.{b64(mac)}"


def settings(jwks_url: str, keys: Keys, **jwt_overrides: Any) -> AuthSettings:
    return AuthSettings(
        mode="jwt",
        jwt=JwtSettings(
            algorithms=["RS256", "PS256", "ES256", "EdDSA", "HS256"],
            issuer=ISSUER,
            audience=AUDIENCE,
            secret=SECRET,  # type: ignore[arg-type]
            public_keys=[pem(keys.ed.public_key()).decode()],  # type: ignore[list-item]
            jwks_url=jwks_url,
            **jwt_overrides,
        ),
    )


class JwksServer:
    """``GET /jwks.json`` on loopback; ``document`` may be replaced, ``status`` set to fail it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.status = 200
        self.requests = 0
        app = web.Application()
        app.router.add_get("/jwks.json", self._serve)
        self._server = TestServer(app, host="127.0.0.1")

    async def _serve(self, _: web.Request) -> web.Response:
        self.requests += 1
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response(self.document)

    async def start(self) -> str:
        await self._server.start_server()
        return str(self._server.make_url("/jwks.json"))

    async def close(self) -> None:
        await self._server.close()

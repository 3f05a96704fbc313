"""Bearer tokens (the ``jwt`` auth mode): PyJWT with an explicit algorithm allow-list and keys that must
fit the algorithm.

What a token cannot do: choose its own algorithm beyond the allow-list (``none`` is never on it), bring its
own key (``jku``, ``x5u``, ``jwk`` and ``x5c`` headers are never read), make an HMAC check use a public
key as the secret (an HS token is checked only against ``auth.jwt.secret``; RS/PS only against RSA keys,
ES only against EC keys of the algorithm's curve, EdDSA only against Ed25519/Ed448 keys), or name a
critical extension (``crit``) this verifier does not implement. ``iss`` and ``aud`` must be the configured
ones; ``exp`` is required; ``exp`` and ``nbf`` allow ``leeway_s`` of clock skew.

Keys come from PEM public keys in the settings and from a JWKS URL, fetched with aiohttp (never a blocking
client) with a timeout and a size cap, cached for ``jwks_cache_s``, fetched again on an unknown ``kid`` at
most every ``jwks_min_refresh_s`` (so a flood of invented kids costs one fetch), and kept when a refresh
fails. A denial says why in a few fixed words, never quoting the token.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from orchestrator.settings import JwtSettings

log = structlog.get_logger("orchestrator.auth")

#: a JWKS document larger than this is refused; keys beyond MAX_JWKS_KEYS are ignored
MAX_JWKS_BYTES = 1024 * 1024
MAX_JWKS_KEYS = 100
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
Key = PublicKey | bytes


class KeyConfigError(ValueError):
    """A configured key cannot be used; the message names the setting, never the key."""


class TokenRejected(Exception):
    """Why a token was refused: ``reason`` is a metric label, ``description`` the RFC 6750
    ``error_description`` (fixed words; nothing from the token)."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


def fits(algorithm: str, key: Key) -> bool:
    """Whether ``key`` is the kind ``algorithm`` is defined for (RFC 7518 §3, RFC 8037)."""
    if algorithm.startswith("HS"):
        return isinstance(key, bytes)
    if algorithm.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm.startswith("ES"):
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _CURVES.get(algorithm)
    if algorithm == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def load_public_key(pem: bytes) -> PublicKey:
    key = load_pem_public_key(pem)
    if not isinstance(key, PublicKey):
        raise ValueError("not an RSA, EC, Ed25519 or Ed448 public key")
    return key


def _configured_key(where: str, pem: bytes) -> PublicKey:
    try:
        return load_public_key(pem)
    except (ValueError, TypeError):
        # Never the key's text in the message: settings errors are logged.
        raise KeyConfigError(f"{where}: not a PEM RSA, EC, Ed25519 or Ed448 public key") from None


@dataclass(frozen=True, slots=True)
class JwkEntry:
    key: PublicKey
    #: the ``alg`` the set pins this key to ("" when it does not)
    algorithm: str


class Jwks:
    """A JWKS URL's signing keys by ``kid``."""

    def __init__(
        self,
        url: str,
        *,
        cache_s: float,
        min_refresh_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._cache_s = cache_s
        self._min_refresh_s = min_refresh_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._keys: dict[str, JwkEntry] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        #: fetches made (tests and the metric read it)
        self.fetches = 0

    async def key(self, kid: str) -> JwkEntry | None:
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at >= self._cache_s:
            await self._refresh(force=False)
        found = self._keys.get(kid)
        if found is None and self._may_refresh(self._clock()):
            await self._refresh(force=True)
            found = self._keys.get(kid)
        return found

    def _may_refresh(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._min_refresh_s

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            now = self._clock()
            if not self._may_refresh(now):
                return
            if not force and self._fetched_at is not None and now - self._fetched_at < self._cache_s:
                return  # another request refreshed it while this one waited
            self._attempted_at = now
            self.fetches += 1
            try:
                self._keys = await self._fetch()
                self._fetched_at = self._clock()
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                # Keep the keys we have: an identity provider's hiccup must not log everyone out.
                log.warning("jwks_fetch_failed", url=self.url, error=type(e).__name__, kept=len(self._keys))

    async def _fetch(self) -> dict[str, JwkEntry]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.get(self.url, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"JWKS answered {response.status}")
            body = await response.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError("JWKS document too large")
        document = json.loads(body)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys: dict[str, JwkEntry] = {}
        for entry in document["keys"][:MAX_JWKS_KEYS]:
            parsed = _jwk(entry)
            if parsed is not None:
                keys[parsed[0]] = parsed[1]
        return keys

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _jwk(entry: Any) -> tuple[str, JwkEntry] | None:
    """One signing key of the set, or None (no kid, an encryption key, a private or unusable key)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
        return None
    if entry.get("use", "sig") != "sig" or "d" in entry:  # never a private key from a URL
        return None
    try:
        key = jwt.PyJWK(entry).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(key, PublicKey):
        return None  # symmetric ("oct") keys are never taken from a URL
    algorithm = entry.get("alg", "")
    return entry["kid"], JwkEntry(key, algorithm if isinstance(algorithm, str) else "")


def claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


class JwtVerifier:
    def __init__(self, settings: JwtSettings, *, jwks: Jwks | None = None) -> None:
        self._s = settings
        self._algorithms = frozenset(a for a in settings.algorithms if a != "none")
        self._secret = settings.secret.get_secret_value().encode() if settings.secret is not None else None
        static: list[PublicKey] = []
        for i, inline in enumerate(settings.public_keys):
            static.append(_configured_key(f"auth.jwt.public_keys[{i}]", inline.get_secret_value().encode()))
        for i, path in enumerate(settings.public_key_files):
            try:
                data = path.read_bytes()
            except OSError as e:
                raise KeyConfigError(
                    f"auth.jwt.public_key_files[{i}]: cannot be read ({e.strerror})"
                ) from None
            static.append(_configured_key(f"auth.jwt.public_key_files[{i}]", data))
        self._static = tuple(static)
        self.jwks = jwks
        if self.jwks is None and settings.jwks_url:
            self.jwks = Jwks(
                settings.jwks_url,
                cache_s=settings.jwks_cache_s,
                min_refresh_s=settings.jwks_min_refresh_s,
                timeout_s=settings.jwks_timeout_s,
            )

    @property
    def static_keys(self) -> tuple[PublicKey, ...]:
        """The PEM public keys of the settings (the composition root checks no outbound key is one)."""
        return self._static

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature, algorithm, issuer, audience and times check out."""
        if len(token) > self._s.max_token_bytes:
            raise TokenRejected("malformed", "the token is too long")
        if not _COMPACT_JWS.match(token):
            # Three base64url segments without padding (RFC 7515 §7.1), or it is not a token we read.
            raise TokenRejected("malformed", "the token is not a signed JWT")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise TokenRejected("malformed", "the token is not a signed JWT") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise TokenRejected("algorithm", "the token's algorithm is not accepted")
        if "crit" in header:
            raise TokenRejected("malformed", "the token names critical extensions")
        # jku / x5u / jwk / x5c are never read: keys come from the settings only.
        kid = header.get("kid")
        candidates = await self._keys(algorithm, kid if isinstance(kid, str) else None)
        if not candidates:
            raise TokenRejected("unknown-key", "no key of this service verifies the token")
        failure: TokenRejected | None = None
        for key in candidates:
            try:
                return self._decode(token, key, algorithm)
            except jwt.InvalidSignatureError:
                failure = TokenRejected("signature", "the token's signature does not verify")
        assert failure is not None
        raise failure

    async def _keys(self, algorithm: str, kid: str | None) -> list[Key]:
        if algorithm.startswith("HS"):
            return [self._secret] if self._secret is not None else []
        keys: list[Key] = []
        if kid is not None and self.jwks is not None:
            entry = await self.jwks.key(kid)
            if entry is not None and entry.algorithm in ("", algorithm) and fits(algorithm, entry.key):
                keys.append(entry.key)
        keys += [k for k in self._static if fits(algorithm, k)]
        return keys

    def _decode(self, token: str, key: Key, algorithm: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._s.audience,
                issuer=self._s.issuer,
                leeway=self._s.leeway_s,
                options={"require": ["exp", "iss", "aud"], "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            raise
        except jwt.ExpiredSignatureError:
            raise TokenRejected("expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("not-yet-valid", "the token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("issuer", "the token's issuer is not accepted") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("audience", "the token is not meant for this service") from None
        except jwt.MissingRequiredClaimError:
            raise TokenRejected("claims", "the token lacks a required claim (exp, iss, aud)") from None
        except jwt.InvalidKeyError:
            raise TokenRejected("unknown-key", "no key of this service verifies the token") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise TokenRejected("malformed", "the token is not a valid JWT") from None
        return claims

    def identity(self, claims: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        """The raw tenant, actor and roles claims (the resolver validates them)."""
        s = self._s
        return claim(claims, s.tenant_claim), claim(claims, s.actor_claim), claim(claims, s.roles_claim)


def role_list(value: Any) -> Sequence[str] | None:
    """A roles claim: a list of strings, or one space-separated string (OAuth ``scope`` style)."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None

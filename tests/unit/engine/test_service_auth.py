"""Service-to-service authentication of the engine's calls: a signed token per call that the participant
verifies with the published JWKS (audience, expiry within the deadline, the call's own claims), a client
certificate for mutual TLS, and the start-up checks (a bad key names its setting; the outbound key is
never one that verifies inbound tokens)."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from orchestrator.composition import check_service_keys
from orchestrator.domain import OutcomeKind
from orchestrator.engine.http_executor import HttpExecutor
from orchestrator.engine.service_auth import ServiceKeyError, jwks
from orchestrator.settings import AuthSettings, JwtSettings, ServiceConfig, Settings
from tests.eventstore_server.certificates import make_certificates
from tests.unit.engine.test_http_executor import _call


def _private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return key


@pytest.fixture
async def participant() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/inventory/{action}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/inventory")), seen
    await server.close()


async def test_each_call_carries_a_token_the_participant_can_verify(
    tmp_path: Path, participant: tuple[str, list[dict[str, str]]]
) -> None:
    url, seen = participant
    _private_key(tmp_path / "engine.key")
    services = {
        "inventory": ServiceConfig.model_validate(
            {"base_url": url, "token": {"private_key_file": str(tmp_path / "engine.key")}}
        )
    }
    executor = HttpExecutor(services)
    try:
        before = int(time.time())
        result = await executor.call(_call("reserve", timeout=5.0, attempt=2))
        assert result.kind is OutcomeKind.SUCCEEDED
    finally:
        await executor.close()
    token = seen[0]["Authorization"].removeprefix("Bearer ")
    published = jwks(services)
    [key] = published["keys"]
    assert "d" not in key  # the public half only
    header = jwt.get_unverified_header(token)
    assert header["kid"] == key["kid"]
    claims: dict[str, Any] = jwt.decode(
        token, jwt.PyJWK(key).key, algorithms=["ES256"], audience="inventory", issuer="saga-orchestrator"
    )
    assert (claims["tenant"], claims["saga_id"], claims["step"], claims["phase"], claims["attempt"]) == (
        "acme",
        "s-1",
        "reserve",
        "action",
        2,
    )
    assert claims["jti"] == "key-1.2"
    assert before <= claims["iat"] <= claims["exp"] <= before + 5 + 2  # within the attempt's deadline
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, jwt.PyJWK(key).key, algorithms=["ES256"], audience="payment")


async def test_mutual_tls_presents_the_client_certificate(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "tls", client=True)
    assert certs.client_cert is not None
    assert certs.client_key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    context.load_cert_chain(str(certs.cert), str(certs.key))
    context.verify_mode = ssl.CERT_REQUIRED
    peers: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        transport = request.transport
        assert transport is not None
        peers.append(transport.get_extra_info("peercert"))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/inventory/{action}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    base = f"https://localhost:{port}/inventory"
    tls = {
        "ca_file": str(certs.ca),
        "client_cert_file": str(certs.client_cert),
        "client_key_file": str(certs.client_key),
    }
    with_cert = HttpExecutor({"inventory": ServiceConfig.model_validate({"base_url": base, "tls": tls})})
    without = HttpExecutor(
        {"inventory": ServiceConfig.model_validate({"base_url": base, "tls": {"ca_file": str(certs.ca)}})}
    )
    try:
        assert (await with_cert.call(_call("reserve"))).kind is OutcomeKind.SUCCEEDED
        subject = dict(x[0] for x in peers[0]["subject"])
        assert subject["commonName"] == "saga orchestrator engine"
        refused = await without.call(_call("reserve"))
        assert refused.kind is OutcomeKind.TRANSIENT
        assert len(peers) == 1  # the call without a certificate never reached the handler
    finally:
        await with_cert.close()
        await without.close()
        await runner.cleanup()


def signing(key_file: Path) -> dict[str, ServiceConfig]:
    config = {"base_url": "http://x", "token": {"private_key_file": str(key_file)}}
    return {"inventory": ServiceConfig.model_validate(config)}


def test_start_up_checks_name_the_setting_and_refuse_a_shared_key(tmp_path: Path) -> None:
    (tmp_path / "bad.key").write_text("not a key")
    bad = {
        "inventory": ServiceConfig.model_validate(
            {"base_url": "http://x", "token": {"private_key_file": str(tmp_path / "bad.key")}}
        )
    }
    with pytest.raises(ServiceKeyError, match=r"services\.inventory\.token\.private_key_file: not an"):
        check_service_keys(Settings(), bad)
    key = _private_key(tmp_path / "shared.key")
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    auth = AuthSettings(
        mode="jwt",
        jwt=JwtSettings(issuer="i", audience="a", algorithms=["ES256"], public_keys=[public.decode()]),  # type: ignore[list-item]
    )
    shared = {
        "inventory": ServiceConfig.model_validate(
            {"base_url": "http://x", "token": {"private_key_file": str(tmp_path / "shared.key")}}
        )
    }
    with pytest.raises(ServiceKeyError, match="also verifies inbound tokens"):
        check_service_keys(Settings(auth=auth), shared)
    own = _private_key(tmp_path / "own.key")
    assert own is not None
    fine = {
        "inventory": ServiceConfig.model_validate(
            {"base_url": "http://x", "token": {"private_key_file": str(tmp_path / "own.key")}}
        )
    }
    assert json.loads(check_service_keys(Settings(auth=auth), fine))["keys"][0]["alg"] == "ES256"

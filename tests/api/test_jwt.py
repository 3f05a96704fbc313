"""The jwt auth mode through the HTTP API: valid tokens of every accepted kind get in with their tenant,
actor and roles; a forged-token suite (every family an attacker tries) gets 401 with ``WWW-Authenticate``,
a problem+json body that does not quote the token, a counted denial, and no change to the store."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.api.conftest import DEFINITIONS, INSTANCES, Api, ApiFactory, problem
from tests.api.tokens import (
    AUDIENCE,
    DROP,
    ISSUER,
    SECRET,
    JwksServer,
    Keys,
    b64,
    b64json,
    claims,
    hmac_with,
    pem,
    settings,
    sign,
    unsigned,
)
from tests.seed import SEED_DEFINITION, SEED_START

KEYS = Keys()


@pytest.fixture
async def jwks() -> AsyncIterator[JwksServer]:
    server = JwksServer(KEYS.jwks())
    await server.start()
    yield server
    await server.close()


async def jwt_api(make_api: ApiFactory, jwks: JwksServer, **jwt_overrides: Any) -> Api:
    url = str(jwks._server.make_url("/jwks.json"))
    api = await make_api(mode=settings(url, KEYS, **jwt_overrides))
    admin = rs(claims(roles=["admin"]))
    response = await api.register(SEED_DEFINITION, bearer(admin))
    assert response.status == 201, await response.text()
    return api


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def denials(api: Api) -> float:
    total = 0.0
    for metric in api.registry.collect():
        if metric.name == "saga_auth_denials":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


def _resign_rsa(token: str, payload: dict[str, Any]) -> str:
    """The token's header and signature on another payload (claims tampered with after signing)."""
    head, _, signature = token.split(".")
    return f"{head}.{b64json(payload)}.{signature}"


def forged() -> list[tuple[str, dict[str, str]]]:
    """(what it tries, request headers): none of them may get in."""
    k = KEYS
    good = claims()
    valid = rs(good)
    head, body, sig = valid.split(".")
    now = int(time.time())
    out: list[tuple[str, str]] = []

    # alg none and its spellings, with and without a signature
    for alg in ("none", "None", "NONE", "nOnE"):
        out.append((f"alg {alg}", unsigned(good, alg)))
    out.append(("alg none with the RS256 signature kept", unsigned(good, "none", sig)))
    out.append(("alg none with kid of a real key", unsigned(good, "none", kid="rsa-1")))
    out.append(("alg missing", f"{b64json({'typ': 'JWT'})}.{body}.{sig}"))
    out.append(("alg not a string", f"{b64json({'alg': ['RS256']})}.{body}.{sig}"))

    # key confusion: HMAC with a public key (or another public document) as the secret
    out.append(("HS256 keyed with the RSA public key PEM", hmac_with(good, pem(k.rsa.public_key()))))
    out.append(("HS256 keyed with the EC public key PEM", hmac_with(good, pem(k.ec256.public_key()))))
    out.append(("HS256 keyed with the Ed25519 public key PEM", hmac_with(good, pem(k.ed.public_key()))))
    out.append(("HS256 keyed with the JWKS document", hmac_with(good, json.dumps(k.jwks()).encode())))
    out.append(("HS256 with kid of the RSA key", hmac_with(good, pem(k.rsa.public_key()), kid="rsa-1")))
    out.append(("HS256 with a wrong secret", hmac_with(good, b"x" * 48)))
    out.append(("HS256 with an empty secret", hmac_with(good, b"")))
    out.append(("HS384 (not allowed) with the right secret", hmac_with(good, SECRET.encode(), "HS384")))
    out.append(("HS512 (not allowed) with the right secret", hmac_with(good, SECRET.encode(), "HS512")))

    # algorithms outside the allow-list, validly signed
    out.append(("RS384 not allowed", sign(good, k.rsa, "RS384", kid="rsa-1")))
    out.append(("RS512 not allowed", sign(good, k.rsa, "RS512", kid="rsa-1")))
    out.append(("PS384 not allowed", sign(good, k.rsa, "PS384", kid="rsa-1")))
    out.append(("ES384 not allowed", sign(good, k.ec384, "ES384", kid="ec384-1")))
    out.append(("ES512 not allowed", sign(good, ec.generate_private_key(ec.SECP521R1()), "ES512")))

    # keys the token brings along, or points at
    attacker = rsa.generate_private_key(65537, 2048)
    attacker_jwk = json.loads(json.dumps(_rsa_jwk(attacker)))
    out.append(
        ("jku to an attacker's set", sign(good, attacker, "RS256", kid="evil", jku="http://evil.test/"))
    )
    out.append(("x5u to an attacker's cert", sign(good, attacker, "RS256", x5u="http://evil.test/c.pem")))
    out.append(("embedded jwk header", sign(good, attacker, "RS256", jwk=attacker_jwk)))
    out.append(("embedded jwk with a real kid", sign(good, attacker, "RS256", kid="rsa-1", jwk=attacker_jwk)))
    out.append(("x5c header", sign(good, attacker, "RS256", x5c=["MIIB"])))
    out.append(("signed by an unknown RSA key, no kid", sign(good, attacker, "RS256")))
    out.append(("signed by an unknown RSA key, real kid", sign(good, attacker, "RS256", kid="rsa-1")))
    out.append(("signed by the other RSA key", sign(good, k.rsa_other, "RS256", kid="rsa-1")))
    out.append(("kid path traversal", sign(good, attacker, "RS256", kid="../../../../etc/passwd")))
    out.append(("kid SQL injection", sign(good, attacker, "RS256", kid="x' OR '1'='1")))
    out.append(("kid empty", sign(good, attacker, "RS256", kid="")))
    out.append(("kid not a string", sign_raw(json.dumps(good).encode(), kid=["rsa-1"])))
    out.append(("RS256 with the EC key's kid", sign(good, attacker, "RS256", kid="ec-1")))
    other_ec = ec.generate_private_key(ec.SECP256R1())
    out.append(("ES256 with the RSA key's kid", sign(good, other_ec, "ES256", kid="rsa-1")))
    out.append(("PS256 under the kid pinned to RS256", _ps256(good, k.rsa, kid="rsa-1")))
    out.append(("ES256 header, P-384 key of the set", _es_with_curve(good, k.ec384, "ec384-1")))
    out.append(("ES256 by an unknown P-256 key, real kid", sign(good, other_ec, "ES256", kid="ec-1")))
    out.append(("EdDSA by an unknown key", sign(good, _new_ed(), "EdDSA")))
    out.append(("crit header", sign(good, k.rsa, "RS256", kid="rsa-1", crit=["exp"])))

    # the signature itself
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    out.append(("signature byte flipped", f"{head}.{body}.{flipped}"))
    out.append(("signature truncated", f"{head}.{body}.{sig[:-8]}"))
    out.append(("signature empty", f"{head}.{body}."))
    another = rs(claims(sub="x")).split(".")[2]
    out.append(("signature of another token", f"{head}.{body}.{another}"))
    out.append(("signature not base64url", f"{head}.{body}.!!!{sig[3:]}"))
    out.append(("signature padded with =", f"{head}.{body}.{sig}=="))

    # claims changed after signing
    out.append(("tenant changed after signing", _resign_rsa(valid, {**good, "tenant": "globex"})))
    out.append(("roles raised after signing", _resign_rsa(valid, {**good, "roles": ["admin"]})))
    out.append(("subject changed after signing", _resign_rsa(valid, {**good, "sub": "root"})))
    out.append(("expiry extended after signing", _resign_rsa(valid, {**good, "exp": now + 10**6})))
    out.append(("claim added after signing", _resign_rsa(valid, {**good, "admin": True})))

    # times
    out.append(("expired", rs(claims(exp=now - 100))))
    out.append(("expired just past the leeway", rs(claims(exp=now - 40))))
    out.append(("no exp", rs(claims(exp=DROP))))
    out.append(("exp not a number", rs(claims(exp="tomorrow"))))
    out.append(("not yet valid", rs(claims(nbf=now + 100))))
    out.append(("not yet valid past the leeway", rs(claims(nbf=now + 40))))
    out.append(("nbf not a number", rs(claims(nbf="now"))))

    # issuer and audience
    out.append(("wrong issuer", rs(claims(iss="https://evil.test/"))))
    out.append(("no issuer", rs(claims(iss=DROP))))
    out.append(("issuer without its slash", rs(claims(iss=ISSUER.rstrip("/")))))
    out.append(("issuer in another case", rs(claims(iss=ISSUER.upper()))))
    out.append(("issuer as a list", rs(claims(iss=[ISSUER]))))
    out.append(("wrong audience", rs(claims(aud="another-service"))))
    out.append(("no audience", rs(claims(aud=DROP))))
    out.append(("audience list without ours", rs(claims(aud=["a", "b"]))))
    out.append(("audience empty", rs(claims(aud=""))))
    out.append(("audience with a prefix of ours", rs(claims(aud=AUDIENCE[:-1]))))

    # who the token says it is
    out.append(("no tenant claim", rs(claims(tenant=DROP))))
    out.append(("tenant path traversal", rs(claims(tenant="../globex"))))
    out.append(("tenant a number", rs(claims(tenant=7))))
    out.append(("tenant a list", rs(claims(tenant=["acme", "globex"]))))
    out.append(("no subject", rs(claims(sub=DROP))))
    out.append(("empty subject", rs(claims(sub=""))))
    out.append(("roles an object", rs(claims(roles={"admin": True}))))
    out.append(("roles with a bad name", rs(claims(roles=["admin\nroot"]))))
    out.append(("roles, too many", rs(claims(roles=[f"r{i}" for i in range(40)]))))

    # malformed
    out += [
        ("empty token", ""),
        ("one segment", "abc"),
        ("two segments", f"{head}.{body}"),
        ("four segments", f"{head}.{body}.{sig}.x"),
        ("header not base64", f"%%%.{body}.{sig}"),
        ("header not JSON", f"{b64(b'not json')}.{body}.{sig}"),
        ("header a JSON list", f"{b64json(['RS256'])}.{body}.{sig}"),
        ("payload not JSON", sign_raw(b"not json")),
        ("payload a JSON list", sign_raw(b"[1,2]")),
        ("oversize token (8,125 bytes)", rs(claims(pad="x" * 5600))),
        ("non-ASCII garbage", "ü.ö.ä"),
        ("JWE-shaped (five segments)", "a.b.c.d.e"),
    ]
    headers = [(name, bearer(token)) for name, token in out]
    headers += [
        ("no Authorization header", {}),
        ("Basic scheme", {"Authorization": "Basic YWxpY2U6c2VjcmV0"}),
        ("Bearer without a token", {"Authorization": "Bearer"}),
        ("Bearer with only spaces", {"Authorization": "Bearer    "}),
        ("token in another header", {"X-Access-Token": valid}),
        ("scheme glued to the token", {"Authorization": f"Bearer{valid}"}),
    ]
    return headers


def rs(payload: dict[str, Any]) -> str:
    """RS256 by the identity provider's key, under its kid (any claims: PyJWT checks some when signing)."""
    return sign_raw(json.dumps(payload).encode())


def sign_raw(payload: bytes, **header: Any) -> str:
    """RS256 by the provider's key over any payload bytes and header (PyJWT would refuse some)."""
    head = b64json({"alg": "RS256", "typ": "JWT", "kid": "rsa-1", **header})
    signing_input = f"{head}.{b64(payload)}".encode()
    from cryptography.hazmat.primitives import hashes

    signature = KEYS.rsa.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{b64(payload)}.{b64(signature)}"


def _rsa_jwk(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    import jwt

    return dict(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True))


def _ps256(payload: dict[str, Any], key: rsa.RSAPrivateKey, kid: str) -> str:
    return sign(payload, key, "PS256", kid=kid)


def _es_with_curve(payload: dict[str, Any], key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    """An ES256 header over a signature made with a key of another curve (PyJWT would refuse to sign)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    head = b64json({"alg": "ES256", "typ": "JWT", "kid": kid})
    signing_input = f"{head}.{b64json(payload)}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    return f"{head}.{b64json(payload)}.{b64(raw)}"


def _new_ed() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate()


async def test_the_forged_token_suite_gets_nothing_in(make_api: ApiFactory, jwks: JwksServer) -> None:
    api = await jwt_api(make_api, jwks)
    cases = forged()
    assert len(cases) >= 60
    before, counted = await api.snapshot(), denials(api)
    let_in = []
    for name, headers in cases:
        response = await api.post(INSTANCES, json.loads(SEED_START), headers)
        if response.status != 401:
            let_in.append(f"{name}: {response.status} {await response.text()}")
            continue
        body = await problem(response, 401)
        challenge = response.headers.get("WWW-Authenticate", "")
        assert challenge.startswith('Bearer realm="saga-orchestrator"'), (name, challenge)
        token = headers.get("Authorization", "").removeprefix("Bearer").strip()
        if len(token) > 8:
            assert token not in json.dumps(body), name
            assert token not in challenge, name
    assert not let_in, "\n".join(let_in)
    assert await api.snapshot() == before  # no state change from any of them
    assert denials(api) - counted == len(cases)
    print(f"{len(cases)} forged tokens, all refused")


async def test_valid_tokens_of_every_accepted_kind_get_in(make_api: ApiFactory, jwks: JwksServer) -> None:
    api = await jwt_api(make_api, jwks)
    now = int(time.time())
    tokens = {
        "RS256 from the JWKS": rs(claims()),
        "ES256 from the JWKS": sign(claims(), KEYS.ec256, "ES256", kid="ec-1"),
        "EdDSA from a PEM in the settings": sign(claims(), KEYS.ed, "EdDSA"),
        "HS256 with the secret": sign(claims(), SECRET, "HS256"),
        "expired within the leeway": rs(claims(exp=now - 10)),
        "audience list with ours": rs(claims(aud=["x", AUDIENCE])),
        "roles as a scope string": rs(claims(roles="viewer operator")),
    }
    for name, token in tokens.items():
        response = await api.post(INSTANCES, json.loads(SEED_START), bearer(token))
        assert response.status == 201, (name, await response.text())
        saga_id = (await response.json())["saga_id"]
        events = await api.client.get(f"{INSTANCES}/{saga_id}/events", headers=bearer(token))
        assert events.status == 200, name
        assert (await events.json())["items"][0]["actor"] == "alice@acme"


async def test_roles_decide_and_tenants_stay_apart(make_api: ApiFactory, jwks: JwksServer) -> None:
    api = await jwt_api(make_api, jwks)
    viewer = bearer(rs(claims(roles=["viewer"])))
    operator = bearer(rs(claims()))
    other = bearer(rs(claims(tenant="globex", roles=["admin"])))
    no_roles = bearer(rs(claims(roles=DROP)))
    before = await api.snapshot()
    for who in (viewer, no_roles):
        await problem(await api.post(INSTANCES, json.loads(SEED_START), who), 403)
        await problem(await api.register(SEED_DEFINITION, who), 403)
    assert await api.snapshot() == before
    saga_id = (await api.start(json.loads(SEED_START), operator))["saga_id"]
    assert (await api.client.get(f"{INSTANCES}/{saga_id}/events", headers=viewer)).status == 200
    await problem(await api.client.get(f"{INSTANCES}/{saga_id}/events", headers=other), 404)
    await problem(await api.client.get(f"{DEFINITIONS}/order-processing", headers=other), 404)


async def test_rbac_off_gives_every_role_within_the_tenant(make_api: ApiFactory, jwks: JwksServer) -> None:
    url = str(jwks._server.make_url("/jwks.json"))
    auth = settings(url, KEYS).model_copy(update={"rbac_enabled": False})
    api = await make_api(mode=auth)
    nobody = bearer(rs(claims(roles=DROP)))
    assert (await api.register(SEED_DEFINITION, nobody)).status == 201
    saga_id = (await api.start(json.loads(SEED_START), nobody))["saga_id"]
    other = bearer(rs(claims(tenant="globex", roles=DROP)))
    await problem(await api.client.get(f"{INSTANCES}/{saga_id}/events", headers=other), 404)


async def test_jwks_is_fetched_again_for_a_new_kid_but_not_for_a_flood(
    make_api: ApiFactory, jwks: JwksServer
) -> None:
    api = await jwt_api(make_api, jwks, jwks_min_refresh_s=30)
    fetched = jwks.requests
    attacker = rsa.generate_private_key(65537, 2048)
    for i in range(25):
        token = sign(claims(), attacker, "RS256", kid=f"invented-{i}")
        await problem(await api.post(INSTANCES, json.loads(SEED_START), bearer(token)), 401)
    assert jwks.requests - fetched <= 1  # one refresh at most within jwks_min_refresh_s


async def test_a_rotated_key_is_picked_up_and_an_unreachable_set_keeps_the_keys(
    make_api: ApiFactory, jwks: JwksServer
) -> None:
    api = await jwt_api(make_api, jwks, jwks_min_refresh_s=0)
    rotated = rsa.generate_private_key(65537, 2048)
    jwks.document = {"keys": [*jwks.document["keys"], {**_rsa_jwk(rotated), "kid": "rsa-2", "use": "sig"}]}
    token = sign(claims(), rotated, "RS256", kid="rsa-2")
    assert (await api.post(INSTANCES, json.loads(SEED_START), bearer(token))).status == 201
    jwks.status = 503
    still = rs(claims())
    assert (await api.post(INSTANCES, json.loads(SEED_START), bearer(still))).status == 201
    await problem(
        await api.post(
            INSTANCES, json.loads(SEED_START), bearer(sign(claims(), rotated, "RS256", kid="nope"))
        ),
        401,
    )

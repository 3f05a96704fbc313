"""Hostile bodies: each is refused with the right 4xx problem+json naming the problem, and the store is
unchanged afterwards (nothing invalid is appended)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.api.conftest import DEFINITIONS, INSTANCES, Api, ApiFactory, fields, problem
from tests.seed import SEED_DEFINITION

DEEP = "[" * 65 + "]" * 65
CASES = [
    pytest.param(b'{"saga_name": "x", "context": {"a": NaN}}', 400, "non-finite-number", "NaN", id="nan"),
    pytest.param(
        b'{"saga_name": "x", "context": {"a": Infinity}}', 400, "non-finite-number", "Infinity", id="inf"
    ),
    pytest.param(
        b'{"saga_name": "x", "context": {"a": -Infinity}}', 400, "non-finite-number", "Infinity", id="-inf"
    ),
    pytest.param(
        b'{"saga_name": "x", "saga_name": "y"}', 400, "duplicate-key", "saga_name", id="duplicate-key"
    ),
    pytest.param(
        b'{"saga_name": "x", "context": {"a": "\\ud800"}}', 400, "lone-surrogate", "surrogate", id="surrogate"
    ),
    pytest.param(
        b'{"saga_name": "x", "context": {"a": 9007199254740993}}',
        400,
        "number-too-large",
        "2^53",
        id="2^53+1",
    ),
    pytest.param(
        b'{"saga_name": "x", "context": {"a": ' + b"9" * 500 + b"}}",
        400,
        "number-too-large",
        "digits",
        id="500-digits",
    ),
    pytest.param(
        b'{"saga_name": "x", "context": {"a": 1e400}}', 400, "number-too-large", "float", id="1e400"
    ),
    pytest.param(
        ('{"saga_name": "x", "context": {"a": ' + DEEP + "}}").encode(), 400, "too-deep", "64", id="deep"
    ),
    pytest.param(b'{"saga_name": "caf\xe9"}', 400, "invalid-utf8", "UTF-8", id="latin-1"),
    pytest.param(b'{"saga_name": ', 400, "invalid-json", "JSON", id="truncated"),
    pytest.param(b"", 400, "invalid-json", "empty", id="empty"),
    pytest.param(b"[1, 2]", 422, "invalid-request", "", id="not-an-object"),
    pytest.param(b'{"saga_name": 5}', 422, "invalid-request", "string", id="wrong-type"),
]


@pytest.mark.parametrize(("body", "status", "kind", "named"), CASES)
async def test_hostile_start_bodies(api: Api, body: bytes, status: int, kind: str, named: str) -> None:
    assert (await api.register(SEED_DEFINITION)).status == 201
    before = await api.snapshot()
    found = await problem(await api.post(INSTANCES, body), status)
    assert found["type"].endswith(kind)
    assert named in found["errors"][0]["problem"] or named in found["detail"]
    assert fields(found)[0].startswith("body")
    assert await api.snapshot() == before


async def test_the_same_checks_guard_definitions_and_commands(api: Api) -> None:
    before = await api.snapshot()
    await problem(await api.register(b'{"name": "a", "name": "b"}'), 400)
    await problem(
        await api.post(f"{INSTANCES}/00000000-0000-0000-0000-000000000001/abort", b'{"reason": NaN}'), 400
    )
    assert await api.snapshot() == before


async def test_wrong_content_type_is_415(api: Api) -> None:
    before = await api.snapshot()
    for headers in (
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/json; charset=latin-1"},
        {},
    ):
        response = await api.client.post(DEFINITIONS, data=SEED_DEFINITION.encode(), headers=headers)
        body = await problem(response, 415)
        assert fields(body) == ["header.Content-Type"]
    assert await api.snapshot() == before


async def test_body_over_the_limit_is_413(make_api: ApiFactory) -> None:
    api = await make_api(max_body_bytes=2048)
    assert (await api.register(SEED_DEFINITION)).status == 201
    before = await api.snapshot()
    big = json.dumps({"saga_name": "order-processing", "context": {"blob": "x" * 4096}})
    body = await problem(await api.post(INSTANCES, big), 413)
    assert "2048" in body["errors"][0]["problem"]

    async def chunked() -> AsyncIterator[bytes]:
        # No Content-Length: the cap must hold while reading, too.
        for _ in range(8):
            yield b" " * 512
        yield big.encode()

    response = await api.client.post(INSTANCES, data=chunked(), headers={"Content-Type": "application/json"})
    await problem(response, 413)
    assert await api.snapshot() == before


async def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    await problem(await api.client.get("/api/v1/nothing-here"), 404)
    response = await api.client.delete(DEFINITIONS)
    await problem(response, 405)
    assert "POST" in response.headers["Allow"]

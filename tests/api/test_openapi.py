"""The published OpenAPI 3.1 document, and schemathesis against the live app: no 5xx, and every
response conforms to the document (status code, content type, headers, body schema)."""

from __future__ import annotations

import asyncio
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orchestrator.api.app import ROUTES
from tests.api.conftest import Api, ApiFactory
from tests.seed import SEED_DEFINITION, SEED_START

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 25


async def test_document_covers_every_route(api: Api) -> None:
    doc = await (await api.client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    served = {(r.method.lower(), r.path) for r in ROUTES}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == served
    start = doc["paths"]["/api/v1/sagas/instances"]["post"]
    assert set(start["responses"]) >= {"200", "201", "400", "413", "415", "422"}
    assert start["responses"]["422"]["content"]["application/problem+json"]
    schema = doc["components"]["schemas"]["StartSagaRequest"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["saga_name"]


def _fuzz(base_url: str) -> list[str]:
    """Every operation, ``EXAMPLES`` cases each; returns the failures (empty when all conform)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid document fails right here
        # Valid requests and deliberately invalid ones (which must be refused with a documented 4xx).
        cases = operation.as_strategy(generation_mode=GenerationMode.POSITIVE) | operation.as_strategy(
            generation_mode=GenerationMode.NEGATIVE
        )

        @given(case=cases)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=10)

        try:
            run()
        except Exception as e:
            failures.append(f"{operation.method.upper()} {operation.path}: {e}")
    return failures


async def test_schemathesis_against_the_live_app(
    make_api: ApiFactory, redis_url: str, redis_prefix: str
) -> None:
    api = await make_api(redis=(redis_url, redis_prefix))
    # Some real data, so reads of existing things are exercised too.
    assert (await api.register(SEED_DEFINITION)).status == 201
    await api.start(SEED_START)
    base_url = str(api.client.make_url("")).rstrip("/")
    failures = await asyncio.wait_for(asyncio.to_thread(_fuzz, base_url), 150)
    assert not failures, "\n\n".join(failures)

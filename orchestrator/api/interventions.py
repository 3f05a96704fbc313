"""Manual interventions: ``POST …/instances/{id}/abort|retry|skip|resolve|resume``.

Each folds the saga stream and decides with the pure core (never on a read model); ``If-Match:
"<revision>"`` guards against acting on a saga that changed since the person looked (412), and the
``Idempotency-Key`` is recorded, so repeating a request returns its result and appends nothing. When the
client sends no key, one is generated: the command is then applied once per request.
"""

from __future__ import annotations

import re
import uuid

from aiohttp import web

from orchestrator.api.common import (
    deps,
    json_response,
    principal,
    saga_id_param,
    sagas,
    store_guard,
    validate,
)
from orchestrator.api.instances import BASE, idempotency_key
from orchestrator.api.json_body import read_json
from orchestrator.api.models import CommandName, InterventionRequest, InterventionResult
from orchestrator.api.problems import invalid_field
from orchestrator.api.routes import (
    BODY_PROBLEMS,
    IDEMPOTENCY_KEY,
    SAGA_ID,
    TENANT_PROBLEMS,
    Handler,
    Param,
    Reply,
    Route,
)
from orchestrator.domain.vocabulary import ManualCommand

_ETAG = re.compile(r'^(?:W/)?"(\d{1,12})"$|^(\d{1,12})$')


def if_match(request: web.Request) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    m = _ETAG.match(raw.strip())
    if m is None:
        raise invalid_field(
            400, "invalid-header", "header.If-Match", 'the saga revision as an ETag: "<revision>"'
        )
    return int(m.group(1) or m.group(2))


async def _head_position(request: web.Request, saga_id: str) -> str | None:
    last = await sagas(request).last_event(principal(request), saga_id)
    return last.position.encode()


def handler(command: ManualCommand) -> Handler:
    async def intervene(request: web.Request) -> web.Response:
        who = principal(request)
        d = deps(request)
        saga_id = saga_id_param(request)
        key = idempotency_key(request) or f"generated:{uuid.uuid4()}"
        expected = if_match(request)
        body = validate(InterventionRequest, await read_json(request, d.settings.server.max_body_bytes))
        async with store_guard():
            result = await sagas(request).intervene(
                who,
                saga_id,
                command,
                reason=body.reason,
                idempotency_key=key,
                step=body.step,
                if_match=expected,
            )
            position = result.position.encode() if result.position else await _head_position(request, saga_id)
        name: CommandName = command.value
        answer = InterventionResult(
            saga_id=saga_id,
            command=name,
            applied=result.applied,
            revision=result.revision,
            position=position,
            idempotency_key=key,
        )
        return json_response(answer, 202 if result.applied else 200, {"ETag": f'"{result.revision}"'})

    return intervene


_IF_MATCH = Param(
    "If-Match", "header", {"type": "string"}, description='"<revision>": refuse (412) if the saga moved'
)

ROUTES = tuple(
    Route(
        "POST",
        f"{BASE}/{{id}}/{command.value}",
        handler(command),
        f"{command.value}Saga",
        f"Manual intervention: {command.value} (see the status x command table in the README)",
        "interventions",
        {
            202: Reply(
                "applied; the engine acts on it", InterventionResult, headers={"ETag": "the new revision"}
            ),
            200: Reply("this Idempotency-Key was applied before; nothing changed", InterventionResult),
        },
        request=InterventionRequest,
        params=(SAGA_ID, IDEMPOTENCY_KEY, _IF_MATCH),
        problems=(*TENANT_PROBLEMS, *BODY_PROBLEMS, 404, 409, 412, 503),
    )
    for command in ManualCommand
)

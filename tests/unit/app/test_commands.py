"""Commands fold the stream and append with the expected revision: definitions, start identity, and
manual interventions (on the embedded store)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.app.commands import SagaCommands
from orchestrator.app.errors import Conflict, Invalid, NotFound, PreconditionFailed
from orchestrator.domain.timing import Tuning
from orchestrator.domain.vocabulary import ManualCommand, SagaStatus
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.records.streams import saga_stream
from tests.e2e.conftest import seed_definition


@pytest.fixture
async def commands(tmp_path: Path) -> AsyncIterator[SagaCommands]:
    store = await EmbeddedEventStore.open(tmp_path)
    yield SagaCommands(store, Tuning(), service_known=lambda s: s.endswith("-service"))
    await store.close()


async def _start(c: SagaCommands, **kw: Any) -> Any:
    args: dict[str, Any] = {"name": "order-processing", "version": None, "context": {"order_id": 1}}
    args.update(kw)
    return await c.start(args.pop("tenant", "acme"), "tester", **args)


async def test_registering_the_same_content_again_is_a_no_op(commands: SagaCommands) -> None:
    first = await commands.register_definition("acme", "t", seed_definition())
    again = await commands.register_definition("acme", "t", seed_definition())
    assert (first.created, again.created) == (True, False)
    assert again.position == first.position


async def test_different_content_under_an_existing_version_is_a_conflict(commands: SagaCommands) -> None:
    await commands.register_definition("acme", "t", seed_definition())
    changed = seed_definition()
    changed["steps"][0]["retries"] = 5
    with pytest.raises(Conflict, match="already exists"):
        await commands.register_definition("acme", "t", changed)
    # Another tenant's namespace is separate.
    assert (await commands.register_definition("other", "t", changed)).created


async def test_unknown_services_and_invalid_definitions_are_refused(commands: SagaCommands) -> None:
    bad = seed_definition()
    bad["steps"][0]["service"] = "mailer"
    with pytest.raises(Invalid, match="'mailer' is not in the service registry"):
        await commands.register_definition("acme", "t", bad)
    with pytest.raises(Invalid):
        await commands.register_definition("acme", "t", {"name": "x", "version": "1", "steps": []})


async def test_latest_is_the_highest_semantic_version(commands: SagaCommands) -> None:
    for version in ("1.2.0", "1.10.0", "1.9.3"):
        await commands.register_definition("acme", "t", seed_definition(version=version))
    assert (await commands.get_definition("acme", "order-processing", None)).version == "1.10.0"
    started = await _start(commands)
    assert started.definition_version == "1.10.0"


async def test_start_identity_by_client_id(commands: SagaCommands) -> None:
    await commands.register_definition("acme", "t", seed_definition())
    await commands.register_definition("globex", "t", seed_definition())
    first = await _start(commands, client_id="order-123")
    again = await _start(commands, client_id="order-123")
    assert (first.created, again.created) == (True, False)
    assert (again.saga_id, again.position) == (first.saga_id, first.position)
    with pytest.raises(Invalid, match="different request"):
        await _start(commands, client_id="order-123", context={"order_id": 2})
    with pytest.raises(Invalid, match="different request"):
        await _start(commands, client_id="order-123", version="1.0.0")
    # The same client id in another tenant is another saga.
    other = await _start(commands, tenant="globex", client_id="order-123")
    assert other.created
    assert other.saga_id != first.saga_id
    with pytest.raises(Invalid, match="must match") as info:
        await _start(commands, client_id="-bad id")
    assert [i.path for i in info.value.issues] == ["saga_id"]


async def test_start_identity_by_idempotency_key(commands: SagaCommands) -> None:
    await commands.register_definition("acme", "t", seed_definition())
    first = await _start(commands, idempotency_key="k-1")
    again = await _start(commands, idempotency_key="k-1")
    assert again.saga_id == first.saga_id
    assert not again.created
    assert (await _start(commands)).saga_id != (await _start(commands)).saga_id


async def test_reads_and_commands_do_not_cross_tenants(commands: SagaCommands) -> None:
    await commands.register_definition("acme", "t", seed_definition())
    started = await _start(commands)
    with pytest.raises(NotFound):
        await commands.load("globex", started.saga_id)
    with pytest.raises(NotFound):
        await commands.intervene(
            "globex", "x", started.saga_id, ManualCommand.ABORT, reason="r", idempotency_key="k"
        )
    with pytest.raises(NotFound):
        await commands.get_definition("globex", "order-processing", None)


async def test_interventions_follow_the_table_if_match_and_idempotency(commands: SagaCommands) -> None:
    await commands.register_definition("acme", "t", seed_definition())
    started = await _start(commands)
    saga = started.saga_id
    with pytest.raises(Conflict):
        await commands.intervene("acme", "ops", saga, ManualCommand.RESUME, reason="r", idempotency_key="a")
    with pytest.raises(PreconditionFailed):
        await commands.intervene(
            "acme", "ops", saga, ManualCommand.ABORT, reason="r", idempotency_key="b", if_match=7
        )
    done = await commands.intervene(
        "acme", "ops", saga, ManualCommand.ABORT, reason="customer cancelled", idempotency_key="b", if_match=0
    )
    assert done.applied
    assert done.revision == 1
    repeat = await commands.intervene(
        "acme", "ops", saga, ManualCommand.ABORT, reason="customer cancelled", idempotency_key="b"
    )
    assert not repeat.applied
    state, events = await commands.load("acme", saga)
    assert len(events) == 2
    assert state.abort_requested
    assert state.status is SagaStatus.RUNNING
    assert events[0].stream == saga_stream(saga)


async def test_identical_starts_racing_each_other_create_the_saga_once(commands: SagaCommands) -> None:
    """Both read "no saga yet"; only one may answer "created", the other finds the saga it raced."""
    await commands.register_definition("acme", "t", seed_definition())
    first, second = await asyncio.gather(
        _start(commands, client_id="order-9"), _start(commands, client_id="order-9")
    )
    assert first.saga_id == second.saga_id
    assert sorted([first.created, second.created]) == [False, True]
    assert first.position == second.position

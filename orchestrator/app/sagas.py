"""``Sagas``: the use cases every interface calls, each with the caller's :class:`Principal`.

Commands fold the stream they change and append (``SagaCommands``), then let this process's engine look at
the saga at once; queries read the read models of the caller's tenant. Who may do what is decided
here, once, for every interface: each use case checks the permission table (``app.permissions``) first.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from typing import Any

from orchestrator.app.commands import Intervened, Registered, SagaCommands, Started
from orchestrator.app.errors import AppError, Invalid, NotFound, Unavailable
from orchestrator.app.limits import StartRate, TenantCaps, check_in_flight, check_rate
from orchestrator.app.permissions import Permission, authorize
from orchestrator.app.ports import EngineStatus, ReadModels, ReadModelUnavailable
from orchestrator.app.principal import Principal
from orchestrator.domain.errors import Issue
from orchestrator.domain.events import SagaStarted
from orchestrator.domain.vocabulary import ManualCommand
from orchestrator.eventstore.errors import StreamDeleted, StreamNotFound
from orchestrator.eventstore.port import EventStore, StreamSubscription
from orchestrator.eventstore.types import Position, RecordedEvent
from orchestrator.records.codec import from_recorded
from orchestrator.records.streams import saga_stream
from projections.views import DefinitionSummary, Page, SagaCounters, SagaSummary, SagaView

#: the longest a command waits for the engine to take its wake-up (only a latency hint)
WAKE_TIMEOUT_S = 0.5


def auth_of(who: Principal) -> str:
    """How the caller was authenticated, as the audit log records it (never a secret)."""
    return f"{who.authenticated_by}:{who.credential_id}" if who.credential_id else who.authenticated_by


class Sagas:
    def __init__(
        self,
        store: EventStore,
        commands: SagaCommands,
        *,
        read_models: ReadModels | None = None,
        engine: EngineStatus | None = None,
        caps: TenantCaps | None = None,
    ) -> None:
        self._store = store
        self.commands = commands
        self._read_models = read_models
        self._engine = engine
        self._caps = caps = caps or TenantCaps()
        self._rate = StartRate(caps.start_rate_per_s, caps.start_burst) if caps.start_rate_per_s else None

    # --- commands ----------------------------------------------------------------------------------------
    async def register_definition(self, who: Principal, raw: Any) -> Registered:
        authorize(who, Permission.REGISTER_DEFINITIONS)
        return await self.commands.register_definition(who.tenant, who.actor, raw, auth=auth_of(who))

    async def definition_versions(self, who: Principal, name: str) -> dict[str, tuple[dict[str, Any], str]]:
        authorize(who, Permission.READ_DEFINITIONS)
        return await self.commands.definition_versions(who.tenant, name)

    async def start(
        self,
        who: Principal,
        *,
        name: str,
        version: str | None,
        context: dict[str, Any],
        client_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Started:
        authorize(who, Permission.START)
        await self._admit(who.tenant)
        started = await self.commands.start(
            who.tenant,
            who.actor,
            name=name,
            version=version,
            context=context,
            client_id=client_id,
            idempotency_key=idempotency_key,
            auth=auth_of(who),
        )
        if started.created:
            await self._wake(started.saga_id)
        return started

    async def intervene(
        self,
        who: Principal,
        saga_id: str,
        command: ManualCommand,
        *,
        reason: str,
        idempotency_key: str,
        step: str | None = None,
        if_match: int | None = None,
    ) -> Intervened:
        authorize(who, Permission.INTERVENE)
        result = await self.commands.intervene(
            who.tenant,
            who.actor,
            saga_id,
            command,
            reason=reason,
            idempotency_key=idempotency_key,
            step=step,
            if_match=if_match,
            auth=auth_of(who),
        )
        if result.applied:
            await self._wake(saga_id)
        return result

    async def intervene_matching(
        self,
        who: Principal,
        command: ManualCommand,
        *,
        reason: str,
        idempotency_key: str,
        status: str | None = None,
        definition: str | None = None,
        limit: int = 100,
    ) -> list[tuple[str, Intervened | AppError]]:
        """One person's command for every saga of the caller's tenant the read model lists under the
        filter (at most ``limit``), each decided on its own stream as :meth:`intervene` decides it: the read
        model only selects, it never decides. Each saga's key is ``idempotency_key`` and its id, so repeating
        the request changes nothing already done. Returns each saga's result or refusal."""
        authorize(who, Permission.BULK_INTERVENE)
        page = await self.list_sagas(who, status=status, definition=definition, limit=limit)
        results: list[tuple[str, Intervened | AppError]] = []
        for summary in page.items:
            try:
                result: Intervened | AppError = await self.intervene(
                    who,
                    summary.saga_id,
                    command,
                    reason=reason,
                    idempotency_key=f"{idempotency_key}:{summary.saga_id}",
                )
            except AppError as e:
                result = e
            results.append((summary.saga_id, result))
        return results

    async def _admit(self, tenant: str) -> None:
        """The tenant's caps (app.limits): the in-flight count first (it costs no token), then the rate."""
        if self._caps.max_in_flight:
            if self._read_models is None:
                raise Unavailable(
                    "the in-flight cap needs the read models, which this node does not serve",
                    code="read-model-unavailable",
                )
            counters = await self._read_models.counters(tenant)
            check_in_flight(self._caps, tenant, counters.by_status)
        check_rate(self._rate, tenant)

    async def _wake(self, saga_id: str) -> None:
        """Let this process's actor look at the saga now. Only a latency hint (the kick timer and the
        subscription bring the saga back anyway), so a busy engine never holds up the answer."""
        engine = self._engine
        if engine is None or engine.stopping:
            return
        # A clean context: an actor created here outlives the request and must not carry its trace id.
        task = asyncio.create_task(engine.wake(saga_stream(saga_id)), context=contextvars.Context())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, WAKE_TIMEOUT_S)

    # --- the saga's own history (the store, not a read model) --------------------------------------------
    async def first_event(self, who: Principal, saga_id: str) -> RecordedEvent:
        """The saga's ``SagaStarted``, if the saga exists for the caller's tenant; else ``NotFound``."""
        authorize(who, Permission.READ_SAGAS)
        try:
            first = await self._store.read_stream(saga_stream(saga_id), limit=1)
        except (StreamNotFound, StreamDeleted):
            first = []
        event = from_recorded(first[0]).event if first else None
        if not isinstance(event, SagaStarted) or event.tenant != who.tenant:
            raise NotFound(f"no saga {saga_id!r}")
        return first[0]

    async def history(
        self, who: Principal, saga_id: str, *, from_revision: int = 0, limit: int = 200
    ) -> list[RecordedEvent]:
        """Up to ``limit`` recorded events of the caller's saga from ``from_revision`` on."""
        first = await self.first_event(who, saga_id)
        return list(await self._store.read_stream(first.stream, from_revision=from_revision, limit=limit))

    async def last_event(self, who: Principal, saga_id: str) -> RecordedEvent:
        first = await self.first_event(who, saga_id)
        found = await self._store.read_stream(first.stream, from_revision=-1, backwards=True, limit=1)
        return found[0] if found else first

    async def follow(self, who: Principal, saga_id: str, after_revision: int | None) -> StreamSubscription:
        """The caller's saga's events after ``after_revision``, history then live (SSE, GraphQL later)."""
        first = await self.first_event(who, saga_id)
        return await self._store.subscribe_stream(first.stream, after_revision=after_revision)

    # --- queries (read models of the caller's tenant) ------------------------------------------------------
    def _models(self) -> ReadModels:
        if self._read_models is None:
            raise ReadModelUnavailable("this node serves no read models")
        return self._read_models

    async def saga(self, who: Principal, saga_id: str) -> SagaView | None:
        authorize(who, Permission.READ_SAGAS)
        view = await self._models().saga(who.tenant, saga_id)
        return view if view is not None and view.tenant == who.tenant else None

    async def list_sagas(
        self,
        who: Principal,
        *,
        status: str | None = None,
        definition: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[SagaSummary]:
        authorize(who, Permission.READ_SAGAS)
        try:
            return await self._models().list_sagas(
                who.tenant, status=status, definition=definition, limit=limit, cursor=cursor
            )
        except ValueError:
            raise Invalid([Issue("cursor", "not a cursor from this list")], code="invalid-query") from None

    async def dlq(self, who: Principal, *, limit: int = 50, cursor: str | None = None) -> Page[SagaSummary]:
        authorize(who, Permission.READ_SAGAS)
        try:
            return await self._models().dlq(who.tenant, limit=limit, cursor=cursor)
        except ValueError:
            raise Invalid([Issue("cursor", "not a cursor from this list")], code="invalid-query") from None

    async def definitions(self, who: Principal) -> list[DefinitionSummary]:
        authorize(who, Permission.READ_DEFINITIONS)
        return await self._models().definitions(who.tenant)

    async def counters(self, who: Principal) -> SagaCounters:
        authorize(who, Permission.READ_SAGAS)
        return await self._models().counters(who.tenant)

    async def wait_for_read_model(self, position: Position, timeout: float) -> tuple[bool, Position | None]:  # noqa: ASYNC109
        """Wait (bounded) until the read models reached ``position``; (reached, where they are)."""
        return await self._models().wait_for(position, timeout)

"""The ports the application layer and the interfaces code against; adapters implement them (the Redis
read models in ``projections``, the engine of this process). Their values and errors live here too, so an
interface never imports an adapter to name what it gets back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from orchestrator.eventstore.types import Position
from projections.views import DefinitionSummary, Page, SagaCounters, SagaSummary, SagaView


class ReadModelUnavailable(Exception):
    """The read side cannot answer now (its store is down or too slow): a read answers 503, nothing else
    is affected."""


RebuildPhase = Literal["building", "switching", "cleaning", "done", "failed"]


@dataclass(frozen=True, slots=True)
class RebuildProgress:
    generation: int
    phase: RebuildPhase
    events_applied: int
    position: Position | None
    head: Position | None
    elapsed_seconds: float
    events_per_second: float
    #: seconds until the head at the current rate (positions, which count events in the embedded store)
    eta_seconds: float | None
    error: str = ""


class ReadModels(Protocol):
    """The query side (``projections.queries.ReadModels``); every method may raise ReadModelUnavailable."""

    async def saga(self, tenant: str, saga_id: str) -> SagaView | None: ...

    async def list_sagas(
        self,
        tenant: str,
        *,
        status: str | None = None,
        definition: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[SagaSummary]: ...

    async def dlq(self, tenant: str, *, limit: int = 50, cursor: str | None = None) -> Page[SagaSummary]: ...

    async def definitions(self, tenant: str) -> list[DefinitionSummary]: ...

    async def counters(self, tenant: str) -> SagaCounters: ...

    async def position(self) -> Position | None: ...

    async def wait_for(self, position: Position, timeout: float) -> tuple[bool, Position | None]: ...  # noqa: ASYNC109


class Projector(Protocol):
    """The projector of this process (``projections.service.ProjectorService``): admin rebuilds."""

    @property
    def progress(self) -> RebuildProgress | None: ...

    async def rebuild(
        self, on_progress: Callable[[RebuildProgress], None] | None = None
    ) -> RebuildProgress: ...


class EngineStatus(Protocol):
    """The engine of this process, as the interfaces see it: whether it runs, and a way to ask it to look
    at a saga now (after a command was appended)."""

    @property
    def stopping(self) -> bool: ...

    @property
    def group(self) -> str: ...

    @property
    def active_actors(self) -> int: ...

    @property
    def timers_running(self) -> bool: ...

    @property
    def timers_fired(self) -> int: ...

    async def wake(self, stream: str) -> None: ...

"""``Operations``: the deployment's own use cases, across tenants: the event store's persistent
subscription groups and their parked messages, and read-model rebuilds (through the ``Projector`` port).
Each needs the ``deployment:operate`` permission (the admin role) in the operations tenant."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from orchestrator.app.errors import Forbidden, NotFound, Unavailable
from orchestrator.app.permissions import Permission, authorize
from orchestrator.app.ports import Projector, RebuildProgress
from orchestrator.app.principal import Principal
from orchestrator.eventstore.errors import SubscriptionNotFound
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import SubscriptionInfo


class Operations:
    def __init__(
        self, store: EventStore, *, projector: Projector | None = None, operations_tenant: str = "default"
    ) -> None:
        self._store = store
        self._projector = projector
        self.operations_tenant = operations_tenant

    def authorize(self, who: Principal) -> None:
        """The deployment's operations are for the operations tenant's admins only."""
        authorize(who, Permission.OPERATE)
        if who.tenant != self.operations_tenant:
            raise Forbidden(f"{Permission.OPERATE} is for the operations tenant's admins")

    async def subscriptions(self, who: Principal) -> Sequence[SubscriptionInfo]:
        self.authorize(who)
        return await self._store.list_subscriptions()

    async def replay_parked(self, who: Principal, group: str) -> None:
        """Deliver the group's parked messages again."""
        self.authorize(who)
        try:
            await self._store.replay_parked(group)
        except SubscriptionNotFound:
            raise NotFound(f"no subscription group {group!r}") from None

    def _projector_here(self) -> Projector:
        if self._projector is None:
            raise Unavailable("this node runs no projector", code="projector-unavailable")
        return self._projector

    def rebuild(
        self, who: Principal, on_progress: Callable[[RebuildProgress], None] | None = None
    ) -> Awaitable[RebuildProgress]:
        """Checked now (the caller answers at once and runs the rebuild in the background): the rebuild of
        the read models into a new generation, to await."""
        self.authorize(who)
        return self._projector_here().rebuild(on_progress)

    def rebuild_progress(self, who: Principal) -> RebuildProgress | None:
        self.authorize(who)
        return self._projector_here().progress

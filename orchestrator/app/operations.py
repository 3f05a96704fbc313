"""``Operations``: the admin use cases (cross-tenant, the admin role): the event store's persistent
subscription groups and their parked messages. Projection rebuilds go through the ``Projector`` port."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.app.errors import Forbidden, NotFound
from orchestrator.app.principal import ADMIN, Principal
from orchestrator.eventstore.errors import SubscriptionNotFound
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import SubscriptionInfo


def require_admin(who: Principal) -> None:
    if ADMIN not in who.roles:
        raise Forbidden("the admin role is required")


class Operations:
    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def subscriptions(self, who: Principal) -> Sequence[SubscriptionInfo]:
        require_admin(who)
        return await self._store.list_subscriptions()

    async def replay_parked(self, who: Principal, group: str) -> None:
        """Deliver the group's parked messages again."""
        require_admin(who)
        try:
            await self._store.replay_parked(group)
        except SubscriptionNotFound:
            raise NotFound(f"no subscription group {group!r}") from None

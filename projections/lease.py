"""A lease in Redis (``SET NX PX``, renewed at a third of its TTL): the projector lease that makes one
projector process active and the others standbys, and the per-generation lease of a lone runner.

The lease only decides who works; it is not trusted as a fence by its holder's memory. Every write its
holder makes is conditional on the lease inside the script that writes (:class:`Fence`), and batches
also on the stored position (a compare-and-set), so an owner paused past its TTL is refused by Redis
when it wakes, before it has noticed anything itself.

Times are judged on this process's monotonic clock only; nothing compares clocks across processes.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from projections.redis_store import Fence, ReadModelError, RedisViewStore

__all__ = ["Lease", "LeaseLost"]

log = structlog.get_logger(__name__)


class LeaseLost(ReadModelError):
    """This process no longer holds the lease it worked under: another owner carries on."""


class Lease:
    """One owner's view of one lease. ``acquire`` waits (the standby's job), ``keep`` renews until the
    lease is lost, ``lose`` is called by whoever learns first (a renewal, or a write the fence refused)."""

    def __init__(
        self,
        views: RedisViewStore,
        owner: str,
        ttl: float,
        *,
        generation: int | None = None,
        poll: float | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the lease TTL must be positive")
        self.views = views
        self.owner = owner
        self.ttl = ttl
        self.generation = generation
        #: how often a standby tries to take the lease: the hand-over bound is ``ttl + poll``
        self.poll = poll if poll is not None else ttl / 10
        self.fence = Fence(views.lease_key(generation), owner)
        self._held = asyncio.Event()
        self._lost = asyncio.Event()
        self._renewed_at = float("-inf")

    @property
    def held(self) -> bool:
        """What this owner believes (the fence, not this flag, protects the writes)."""
        return self._held.is_set()

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    async def try_acquire(self) -> bool:
        sent = time.monotonic()
        # Still ours (we gave up on it while Redis did not answer, say): renewing takes it back.
        if not (
            await self.views.acquire_lease(self.generation, self.owner, self._ttl_ms)
            or await self.views.renew_lease(self.generation, self.owner, self._ttl_ms)
        ):
            return False
        self._renewed_at = sent
        self._lost.clear()
        self._held.set()
        return True

    async def acquire(self) -> float | None:
        """Wait until this owner holds the lease. Returns the hand-over time: seconds from the previous
        holder's last renewal (judged from the TTL it had left when last seen, on this clock) until now;
        ``None`` when nobody held it meanwhile."""
        last_renewal: float | None = None
        # The lease lives in Redis, so there is no local event to wait on: poll it.
        while not await self.try_acquire():
            holder, remaining = await self.views.lease_holder(self.generation)
            if holder is not None and remaining is not None:
                last_renewal = time.monotonic() - max(0.0, self.ttl - remaining)
            await asyncio.sleep(self.poll)
        return None if last_renewal is None else time.monotonic() - last_renewal

    async def keep(self) -> None:
        """Renew at a third of the TTL; return once the lease is lost (taken, or expired while Redis did
        not answer). The fence refuses our writes from then on, so correctness never depends on this."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            sent = time.monotonic()
            try:
                renewed = await self.views.renew_lease(self.generation, self.owner, self._ttl_ms)
            except ReadModelError as e:
                log.warning("lease renewal failed", lease=self.fence.key, error=str(e))
                if time.monotonic() - self._renewed_at < self.ttl:
                    continue
                renewed = False
            if not renewed:
                log.warning("lease lost", lease=self.fence.key, owner=self.owner)
                self.lose()
                return
            self._renewed_at = sent

    def lose(self) -> None:
        self._held.clear()
        self._lost.set()

    async def wait_held(self) -> None:
        await self._held.wait()

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def release(self) -> None:
        """Give the lease up (a standby takes it at its next poll instead of after the TTL)."""
        self.lose()
        await self.views.release_lease(self.generation, self.owner)

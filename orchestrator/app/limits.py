"""Fairness between tenants: a cap on each tenant's sagas in flight and on its start rate, so that one
tenant cannot starve the others (design.md §9). A start over a cap is refused with ``TooManyRequests``
(HTTP 429 with ``Retry-After``) before anything is appended.

- **Start rate**: a token bucket per tenant (``start_rate_per_s``, ``start_burst``), kept in each API
  process. It is per node: N API nodes admit up to N times the rate (the README says how to size it).
- **In flight**: the tenant's running and compensating sagas as the read models count them (Redis,
  shared by every node), so the cap holds across nodes. The read models follow the store within
  milliseconds, so a burst can pass the cap by the starts they have not seen yet; the rate cap bounds that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.app.errors import TooManyRequests

#: the statuses that hold a saga "in flight" (the engine works on it)
IN_FLIGHT = ("running", "compensating")
#: buckets kept at most (the least recently used tenant's is forgotten: it refills anyway)
MAX_BUCKETS = 100_000


@dataclass(frozen=True, slots=True)
class TenantCaps:
    #: 0: no cap
    max_in_flight: int = 0
    #: starts per second per tenant per node; 0: no cap
    start_rate_per_s: float = 0.0
    #: starts a tenant may make at once before the rate applies
    start_burst: int = 50


@dataclass
class StartRate:
    """Token buckets by tenant."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, tenant: str) -> float:
        """0 when the start may go ahead (a token is taken), else the seconds until one is there."""
        now = self.clock()
        tokens, then = self._buckets.pop(tenant, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[tenant] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[tenant] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        if len(self._buckets) > MAX_BUCKETS:
            del self._buckets[next(iter(self._buckets))]  # dicts keep insertion order: the oldest use
        return wait


def check_rate(rate: StartRate | None, tenant: str) -> None:
    if rate is None:
        return
    wait = rate.take(tenant)
    if wait > 0:
        raise TooManyRequests(
            f"tenant {tenant!r} starts sagas faster than its cap ({rate.rate:g}/s)", wait, code="start-rate"
        )


def check_in_flight(caps: TenantCaps, tenant: str, by_status: dict[str, int]) -> None:
    active = sum(by_status.get(s, 0) for s in IN_FLIGHT)
    if caps.max_in_flight and active >= caps.max_in_flight:
        raise TooManyRequests(
            f"tenant {tenant!r} has {active} sagas in flight, its cap is {caps.max_in_flight}",
            1.0,
            code="in-flight-cap",
        )

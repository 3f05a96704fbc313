"""Child process for the active/standby tests: a projector service (the counting projector, slowed down a
little so a parent can catch it mid-stream) over a read-only embedded store, until it is killed.

``python -m tests.integration._projector_child STORE_DIR REDIS_URL PREFIX TTL [rebuild]`` prints
``child: active`` or ``child: standby`` once started; with ``rebuild`` an active child then starts a
rebuild and prints ``child: rebuilding`` (its log lines go to the same stdout)."""

import asyncio
import sys

from prometheus_client import CollectorRegistry

from orchestrator.eventstore.embedded import EmbeddedEventStore
from projections.metrics import ProjectionMetrics
from projections.redis_store import RedisViewStore
from projections.runner import RunnerSettings
from projections.service import ProjectorService, SagaGauges
from tests.integration._projection_support import CountingProjector


async def main(directory: str, url: str, prefix: str, ttl: str, *mode: str) -> None:
    store = await EmbeddedEventStore.open(directory, read_only=True)
    views = RedisViewStore.connect(url, prefix)
    settings = RunnerSettings(batch_events=20, linger=0.005, lease_ttl=float(ttl))
    service = ProjectorService(
        store,
        views,
        [CountingProjector(delay=0.002)],
        metrics=ProjectionMetrics(CollectorRegistry()),
        gauges=SagaGauges(),
        settings=settings,
        owner="child",
    )
    await service.start()
    print("child:", "active" if service.active else "standby", flush=True)
    if "rebuild" in mode and service.active:
        task = asyncio.create_task(service.rebuild())
        await asyncio.sleep(0)
        print("child: rebuilding", flush=True)
        await task
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))

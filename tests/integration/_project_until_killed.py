"""Child process for the SIGKILL test: runs a projection runner over a read-only embedded store until it
is killed. The projector is slowed down a little so the parent reliably kills it mid-stream."""

import asyncio
import sys

from orchestrator.eventstore.embedded import EmbeddedEventStore
from projections.redis_store import RedisViewStore
from projections.runner import Runner, RunnerSettings
from tests.integration._projection_support import CountingProjector


async def main(directory: str, url: str, prefix: str) -> None:
    store = await EmbeddedEventStore.open(directory, read_only=True)
    views = RedisViewStore.connect(url, prefix)
    settings = RunnerSettings(batch_events=7, lease_ttl=0.5)
    runner = Runner(store, views, 1, [CountingProjector(delay=0.0002)], settings=settings, owner="child")
    print("ready", flush=True)
    await runner.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))

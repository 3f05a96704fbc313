"""Child process for the crash test: runs one or more engines on one embedded store until SIGTERM (clean
stop) or SIGKILL (sent by the test, or by a failpoint armed through ``SAGA_FAILPOINTS``).

argv: data_dir, JSON {service: base_url}, ``--engines N`` (each engine its own timer index under
``data_dir/engine-i``, all in one consumer group, so they compete for deliveries and every timer firer
fires every due timer), ``--park`` (deliveries time out fast and are parked at the first timeout, so the
store's parking path runs under the engine)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
from pathlib import Path
from typing import Any

from orchestrator.engine.engine import Engine
from orchestrator.engine.http_executor import HttpExecutor
from orchestrator.engine.router import ExecutorRouter
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.observability.logging import configure_logging
from orchestrator.settings import EngineSettings, ServiceConfig

ACQUIRE_CAP_MS = 200
SETTINGS: dict[str, Any] = {"kick_ms": 500, "deadline_slack_ms": 300, "message_timeout_s": 2.0}
#: a delivery not acked within 50 ms is parked at once (the saga's timers still bring it back)
PARK_SETTINGS: dict[str, Any] = {"message_timeout_s": 0.05, "max_retry_count": 0, "max_in_flight": 4}


async def main(data_dir: Path, services: dict[str, str], engines: int, park: bool) -> None:
    configure_logging("json", "WARNING")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    store = await EmbeddedEventStore.open(data_dir / "store")
    settings = EngineSettings(**{**SETTINGS, **(PARK_SETTINGS if park else {})})
    routers: list[ExecutorRouter] = []
    running: list[Engine] = []
    for i in range(engines):
        router = ExecutorRouter(
            http=HttpExecutor(
                {
                    n: ServiceConfig(base_url=u, pool_acquire_timeout_ms=ACQUIRE_CAP_MS)
                    for n, u in services.items()
                }
            )
        )
        engine = Engine(
            store,
            router,
            settings=settings,
            data_dir=data_dir / f"engine-{i}",
            acquire_caps_ms=dict.fromkeys(services, ACQUIRE_CAP_MS),
        )
        if i == 0:
            # The group keeps the settings it was created with: give it this run's (the checkpoint stays).
            await engine.ensure_group()
            info = await store.get_subscription_info(settings.group)
            await store.update_subscription(
                settings.group,
                dataclasses.replace(
                    info.settings,
                    message_timeout=settings.message_timeout_s,
                    max_retry_count=settings.max_retry_count,
                ),
            )
        await engine.start()
        routers.append(router)
        running.append(engine)
    print("ready", flush=True)
    await stop.wait()
    await asyncio.gather(*(engine.stop(grace=5) for engine in running))
    for router in routers:
        await router.close()
    await store.close()
    print("stopped", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("services", type=json.loads)
    parser.add_argument("--engines", type=int, default=1)
    parser.add_argument("--park", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.data_dir, args.services, args.engines, args.park))

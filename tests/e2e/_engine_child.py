"""Child process for the crash test: runs one engine on the embedded store until SIGTERM (clean stop)
or SIGKILL. argv: data_dir, JSON {service: base_url}."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from orchestrator.engine.engine import Engine
from orchestrator.engine.http_executor import HttpExecutor
from orchestrator.engine.router import ExecutorRouter
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.observability.logging import configure_logging
from orchestrator.settings import EngineSettings, ServiceConfig


async def main(data_dir: Path, services: dict[str, str]) -> None:
    configure_logging("json", "WARNING")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    store = await EmbeddedEventStore.open(data_dir / "store")
    router = ExecutorRouter(
        http=HttpExecutor(
            {n: ServiceConfig(base_url=u, pool_acquire_timeout_ms=200) for n, u in services.items()}
        )
    )
    engine = Engine(
        store,
        router,
        settings=EngineSettings(kick_ms=500, deadline_slack_ms=300, message_timeout_s=2.0),
        data_dir=data_dir,
        acquire_caps_ms={n: 200 for n in services},
    )
    await engine.start()
    print("ready", flush=True)
    await stop.wait()
    await engine.stop(grace=5)
    await router.close()
    await store.close()
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), json.loads(sys.argv[2])))

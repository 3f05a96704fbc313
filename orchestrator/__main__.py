"""Composition root and CLI: the only place that picks concrete adapters.

saga-orchestrator serve [--role all|engine]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Sequence

import structlog

from orchestrator.engine.engine import Engine
from orchestrator.engine.http_executor import HttpExecutor
from orchestrator.engine.router import ExecutorRouter
from orchestrator.eventstore.port import EventStore
from orchestrator.observability.logging import configure_logging
from orchestrator.settings import ConfigError, Settings, load_settings

log = structlog.get_logger("orchestrator")


@contextlib.asynccontextmanager
async def open_store(settings: Settings, *, read_only: bool = False) -> AsyncIterator[EventStore]:
    """The configured event store: the embedded one, or KurrentDB / EventStoreDB for a connection URL."""
    url = settings.event_store.url
    store: EventStore
    if url == "embedded":
        from orchestrator.eventstore.embedded import EmbeddedEventStore

        store = await EmbeddedEventStore.open(
            settings.event_store.data_dir / "eventstore", read_only=read_only
        )
    else:
        from orchestrator.eventstore.kurrent import open_kurrent_store

        store = await open_kurrent_store(url)
    try:
        yield store
    finally:
        await store.close()


async def serve(settings: Settings, role: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_store(settings) as store:
        executor = ExecutorRouter(http=HttpExecutor(settings.services))
        engine: Engine | None = None
        try:
            if role in ("all", "engine"):
                engine = Engine(
                    store,
                    executor,
                    settings=settings.engine,
                    data_dir=settings.event_store.data_dir,
                    acquire_caps_ms={n: s.pool_acquire_timeout_ms for n, s in settings.services.items()},
                )
                await engine.start()
            log.info("serving", role=role, event_store=settings.event_store.url)
            await stop.wait()
            log.info("stopping", grace_s=settings.engine.shutdown_grace_s)
        finally:
            if engine is not None:
                await engine.stop()
            await executor.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saga-orchestrator")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the service")
    run.add_argument("--role", choices=["all", "engine"], default="all")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "serve":
        return asyncio.run(serve(settings, args.role))
    return 2


if __name__ == "__main__":
    sys.exit(main())

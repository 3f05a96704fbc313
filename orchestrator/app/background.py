"""Background work that must keep going: run a step again after it fails (logged), until cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("orchestrator.app")


async def forever(step: Callable[[], Awaitable[None]], *, dropped: str, pause_s: float = 1.0) -> None:
    """Await ``step()`` again and again: it returns or fails (``dropped`` is logged), then, after
    ``pause_s``, runs again. Only cancellation ends it."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning(dropped, exc_info=True)
        await asyncio.sleep(pause_s)

"""One harness per adapter: the contract suite's single factory hook (``create()``), plus what differs
between a private store and a shared server (``restart()``, ``shared``, timing and size slack).

Adapters are imported inside the harness, so collecting the suite never depends on them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import suppress
from pathlib import Path
from typing import ClassVar

from orchestrator.eventstore import EventStore, EventStoreError, SubscriptionNotFound

EVENTSTORE_URL = "EVENTSTORE_URL"
NO_SERVER = "EVENTSTORE_URL not set: contract suite runs against the embedded store only"


class StoreHarness(ABC):
    """Creates stores of one adapter for one test and disposes of them (and of its groups) afterwards."""

    name: ClassVar[str]
    #: Other test runs use the same store at the same time: assert only on what this test wrote.
    shared: ClassVar[bool] = False
    #: Bytes below MAX_APPEND_SIZE (counted as NewEvent.size) under which an append must be accepted.
    append_size_slack: ClassVar[int] = 0
    #: Seconds a redelivery may come after its message timeout (a server checks timeouts on a tick).
    redelivery_slack: ClassVar[float] = 0.5
    #: Whether :meth:`restart` can simulate a process restart.
    can_restart: ClassVar[bool] = False

    def __init__(self) -> None:
        self._stores: list[EventStore] = []
        self._groups: list[str] = []

    async def create(self) -> EventStore:
        """Open a store on this test's data (the same data on every call)."""
        store = await self._open()
        self._stores.append(store)
        return store

    async def restart(self, store: EventStore) -> EventStore | None:
        """Simulate a process restart: close ``store`` and open the same data again.

        ``None`` when the adapter cannot be restarted from a test (``store`` is then left open).
        """
        return None

    def track_group(self, group: str) -> None:
        """Remember a persistent subscription group to delete when the test ends."""
        self._groups.append(group)

    async def dispose(self) -> None:
        try:
            # An embedded store's directory is discarded with tmp_path; a server keeps groups for ever.
            if self.shared and self._groups:
                await self._delete_groups()
        finally:
            for store in reversed(self._stores):
                with suppress(EventStoreError):
                    await store.close()

    async def _delete_groups(self) -> None:
        store = await self._open()  # the test's own stores may be closed by now
        try:
            for group in self._groups:
                with suppress(SubscriptionNotFound):
                    await store.delete_subscription(group)
        finally:
            with suppress(EventStoreError):
                await store.close()

    @abstractmethod
    async def _open(self) -> EventStore: ...


class EmbeddedHarness(StoreHarness):
    name = "embedded"
    can_restart = True

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self._data_dir = data_dir

    async def _open(self) -> EventStore:
        from orchestrator.eventstore.embedded import EmbeddedEventStore

        store: EventStore = await EmbeddedEventStore.open(self._data_dir)
        return store

    async def restart(self, store: EventStore) -> EventStore | None:
        await store.close()
        return await self.create()


class KurrentHarness(StoreHarness):
    name = "kurrent"
    shared = True
    # The server counts an event type twice (UTF-16) where NewEvent.size counts its UTF-8 bytes once.
    append_size_slack = 4096
    # The server looks for timed-out messages on a one-second clock tick.
    redelivery_slack = 2.0

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url

    async def _open(self) -> EventStore:
        from orchestrator.eventstore.kurrent import open_kurrent_store

        store: EventStore = await open_kurrent_store(self._url)
        return store

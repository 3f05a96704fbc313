"""The embedded store's writer counters are exported through Prometheus at scrape time."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from orchestrator.eventstore import NO_STREAM, new_events
from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.observability.metrics import EmbeddedStoreCollector


async def test_store_collector_exports_writer_counters(tmp_path: Path) -> None:
    store = await EmbeddedEventStore.open(tmp_path)
    registry = CollectorRegistry()
    registry.register(EmbeddedStoreCollector(store))
    await store.append("s", new_events("s", NO_STREAM, [("E", b"{}", b"{}")] * 3), expected=NO_STREAM)
    assert registry.get_sample_value("saga_eventstore_events_total") == 3
    assert registry.get_sample_value("saga_eventstore_appends_total") == 1
    assert registry.get_sample_value("saga_eventstore_commits_total") == 1
    assert (registry.get_sample_value("saga_eventstore_wal_bytes") or 0) > 0
    await store.close()

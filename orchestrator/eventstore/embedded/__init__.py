"""The embedded event store (default): SQLite in WAL mode with synchronous=FULL, single process."""

from orchestrator.eventstore.embedded.store import EmbeddedEventStore, EmbeddedSettings
from orchestrator.eventstore.embedded.writer import WriterStats

__all__ = ["EmbeddedEventStore", "EmbeddedSettings", "WriterStats"]

"""The event store's exception family.

Adapters translate every foreign exception (sqlite3, gRPC, kurrentdbclient) into one of these, in one
place each, with ``raise ... from e``. Nothing outside an adapter catches a client library's exceptions.
Names follow PEP 249 where there is a counterpart: ``IntegrityError`` for "the data says no",
``OperationalError`` for "the store could not do it right now" (worth retrying).
"""

from __future__ import annotations


class EventStoreError(Exception):
    """Root of every error raised through the event store port."""


class IntegrityError(EventStoreError):
    """The request contradicts what the store holds; retrying the same request cannot succeed."""


class WrongExpectedRevision(IntegrityError):
    """The stream is not at the expected revision (or a retried append only partly matches)."""

    def __init__(self, stream: str, expected: object, actual: int | None) -> None:
        self.stream = stream
        self.expected = expected
        #: revision of the stream's last event, ``None`` when the stream does not exist (or unknown)
        self.actual = actual
        super().__init__(f"stream {stream!r}: expected {expected}, actual {actual}")


class StreamNotFound(IntegrityError):
    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(f"stream {stream!r} not found")


class StreamDeleted(IntegrityError):
    """The stream was tombstoned: it can be neither read nor appended to, ever again."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(f"stream {stream!r} is deleted (tombstoned)")


class AppendTooLarge(IntegrityError):
    """One append exceeds the maximum append size (1 MiB, EventStoreDB's default)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"append of {size} bytes exceeds the limit of {limit} bytes")


class SubscriptionNotFound(IntegrityError):
    def __init__(self, group: str) -> None:
        self.group = group
        super().__init__(f"persistent subscription group {group!r} not found")


class SubscriptionExists(IntegrityError):
    def __init__(self, group: str) -> None:
        self.group = group
        super().__init__(f"persistent subscription group {group!r} already exists")


class SubscriptionSettingsError(IntegrityError):
    """An update tried to change what the server does not let change (filter, strategy), or bad settings."""


class MaxSubscribersReached(IntegrityError):
    def __init__(self, group: str, limit: int) -> None:
        self.group = group
        self.limit = limit
        super().__init__(f"persistent subscription group {group!r} has its maximum of {limit} subscribers")


class ReadOnlyStore(EventStoreError):
    """A write was attempted through a store opened read-only."""


class OperationalError(EventStoreError):
    """The store could not serve the request now (unavailable, timeout, lost connection, IO error).

    The outcome of a write that failed this way is unknown: resend the exact same events with the same
    expected revision (idempotent) and, on a conflict, read the stream to learn whether it was written.
    """


class StoreLocked(OperationalError):
    """Another process holds the embedded store's data directory (single process by contract)."""

    def __init__(self, path: str, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(
            f"event store at {path!r} is locked by {holder}; the embedded store is single-process: "
            "stop that process, open read-only, or use KurrentDB/EventStoreDB for several processes"
        )


class SubscriptionDropped(OperationalError):
    """A live subscription ended because the store closed or the connection was lost; resubscribe."""


class StoreClosed(OperationalError):
    """The store was closed while (or before) serving the request."""

"""The one place where kurrentdbclient and gRPC exceptions become :mod:`orchestrator.eventstore.errors`.

The client raises one exception class per server condition but rarely says *which* stream, group or
expectation was involved, so callers pass that context in; :func:`translated` wraps a block of client
calls and always chains the original (``raise ... from e``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from kurrentdbclient import exceptions as kx

from orchestrator.eventstore.errors import (
    AppendTooLarge,
    EventStoreError,
    IntegrityError,
    MaxSubscribersReached,
    OperationalError,
    StoreClosed,
    StreamDeleted,
    StreamNotFound,
    SubscriptionDropped,
    SubscriptionExists,
    SubscriptionNotFound,
    WrongExpectedRevision,
)
from orchestrator.eventstore.types import MAX_APPEND_SIZE, Expected, StreamState

_MAX_SIZE_IN_MESSAGE = re.compile(r"Max size is (\d+)")


def translate(
    e: BaseException,
    *,
    stream: str | None = None,
    group: str | None = None,
    expected: Expected | None = None,
    append_size: int | None = None,
    max_subscribers: int | None = None,
    live: bool = False,
) -> EventStoreError:
    """Map a client/gRPC exception onto our family.

    ``live`` marks a running subscription: transport failures then mean the subscription is gone
    (``SubscriptionDropped``) rather than that one request failed (``OperationalError``).
    ``expected`` marks a conditional write, where "not found" means the expectation failed.
    """
    if isinstance(e, EventStoreError):
        return e
    name = stream or "?"
    transient: type[OperationalError] = SubscriptionDropped if live else OperationalError
    detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

    if isinstance(e, kx.WrongCurrentVersionError):
        actual = e.actual_version if isinstance(e.actual_version, int) else None
        if expected is None and e.expected_version is not None:
            reported = e.expected_version
            # The client's sentinels share our names; never hand one of its objects out.
            expected = reported if isinstance(reported, int) else StreamState[reported.name]
        return WrongExpectedRevision(stream or e.stream_name or "?", expected, actual)
    if isinstance(e, kx.ConsistencyChecksFailedError | kx.InvalidTransactionError):
        # The server reports a retried append that only partly matches its original as a conflict too.
        return WrongExpectedRevision(name, expected, None)
    if isinstance(e, kx.StreamIsDeletedError | kx.StreamTombstonedError):
        return StreamDeleted(name)
    if isinstance(e, kx.NotFoundError):
        if group is not None:
            return SubscriptionNotFound(group)
        if expected is not None:
            # Deleting/tombstoning with an exact expectation on a missing stream comes back as "not found".
            return WrongExpectedRevision(name, expected, None)
        if stream is not None:
            return StreamNotFound(stream)
        return IntegrityError(f"not found ({detail})")
    if isinstance(e, kx.AlreadyExistsError):
        return SubscriptionExists(group) if group is not None else IntegrityError(detail)
    if isinstance(e, kx.RecordMaxSizeExceededError | kx.TransactionMaxSizeExceededError):
        return AppendTooLarge(e.size, e.max_size)
    if isinstance(e, kx.MaximumAppendSizeExceededError):
        match = _MAX_SIZE_IN_MESSAGE.search(str(e))
        limit = int(match.group(1)) if match else MAX_APPEND_SIZE
        return AppendTooLarge(append_size if append_size is not None else -1, limit)
    if isinstance(e, kx.MaximumSubscriptionsReachedError):
        return MaxSubscribersReached(group or "?", max_subscribers if max_subscribers is not None else -1)
    if isinstance(e, kx.InvalidCommitPositionError):
        return IntegrityError(f"no event at that position in $all ({detail})")
    if isinstance(e, kx.AccessDeniedError | kx.UnauthenticatedError | kx.BadRequestError):
        # Neither a conflict nor worth retrying: credentials or our own request are wrong.
        return EventStoreError(f"the server refused the request ({detail})")
    if isinstance(e, kx.InvalidArgumentError):
        return EventStoreError(f"the server refused the request ({detail})")
    if type(e) is kx.GrpcError and "UNIMPLEMENTED" in str(e):
        # The client has no class for UNIMPLEMENTED (it wraps the whole RpcError text); retrying a request
        # this server does not know would loop for ever, so it is an error, not a transient failure.
        return EventStoreError(f"the server does not implement this request ({detail})")
    if isinstance(e, kx.CancelledByClientError | kx.ProgrammingError):
        # The client cancels its streams when the connection is closed under them, and raises
        # ProgrammingError when used without (or after) a connection.
        return SubscriptionDropped(detail) if live else StoreClosed(detail)
    # ConsumerTooSlow, ServiceUnavailable (incl. SSL), deadlines, discovery, leader changes, UNKNOWN and
    # INTERNAL statuses, timeouts; and anything unforeseen (a raw grpc.RpcError, a channel UsageError)
    # is treated the same way: the outcome is unknown, and a retry may succeed.
    if isinstance(e, kx.KurrentDBClientError | TimeoutError):
        return transient(detail)
    return transient(f"unexpected error from the KurrentDB client ({detail})")


@contextmanager
def translated(
    *,
    stream: str | None = None,
    group: str | None = None,
    expected: Expected | None = None,
    append_size: int | None = None,
    max_subscribers: int | None = None,
    live: bool = False,
) -> Iterator[None]:
    """Run a block of client calls, translating whatever they raise (see :func:`translate`)."""
    try:
        yield
    except (EventStoreError, StopAsyncIteration):
        # StopAsyncIteration is how the client ends an iteration, not a failure.
        raise
    except Exception as e:
        raise translate(
            e,
            stream=stream,
            group=group,
            expected=expected,
            append_size=append_size,
            max_subscribers=max_subscribers,
            live=live,
        ) from e

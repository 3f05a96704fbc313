"""The one place where a failed request becomes what the KurrentDB server answers: a gRPC status with its
message and trailers (Core/Services/Transport/Grpc/RpcExceptions.cs), or, inside BatchAppend, a
``google.rpc.Status`` with packed details (Grpc/Status.cs). The client recognises several of these by their
exact wording (kurrentdbclient ``handle_rpc_error`` / ``handle_streams_rpc_error``), so it is copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from kurrentdbclient.protos.google.rpc import code_pb2
from kurrentdbclient.protos.v1 import shared_pb2, status_pb2, streams_pb2

from orchestrator.eventstore.errors import (
    AppendTooLarge,
    MaxSubscribersReached,
    StoreClosed,
    StreamDeleted,
    StreamNotFound,
    SubscriptionDropped,
    SubscriptionExists,
    SubscriptionNotFound,
    WrongExpectedRevision,
)
from orchestrator.eventstore.server.convert import BadRequest, expected_long
from orchestrator.eventstore.server.psconfig import GroupFailed
from orchestrator.eventstore.types import MAX_APPEND_SIZE, Expected, StreamState

# google.rpc.Code values, as BatchAppend's Status carries them
_ALREADY_EXISTS, _NOT_FOUND = code_pb2.ALREADY_EXISTS, code_pb2.NOT_FOUND
_INVALID_ARGUMENT, _UNKNOWN = code_pb2.INVALID_ARGUMENT, code_pb2.UNKNOWN


@dataclass(frozen=True, slots=True)
class Failure:
    code: Any  # grpc.StatusCode (untyped library)
    details: str
    trailers: tuple[tuple[str, str], ...] = ()


class Unexpected(Exception):
    """A failure this server has no mapping for: a bug, logged and counted by the caller."""


def failure(
    e: BaseException, *, operation: str = "", stream: str = "", expected: Expected | None = None
) -> Failure:
    """The status a unary or streaming call ends with (RpcExceptions)."""
    if isinstance(e, StreamDeleted):
        return Failure(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"Event stream '{e.stream}' is deleted.",
            (("exception", "stream-deleted"), ("stream-name", e.stream)),
        )
    if isinstance(e, WrongExpectedRevision):
        # Delete and Tombstone both report as "Delete" (Streams.Delete.cs, DeleteInternal); the client
        # parses this message, and takes "Actual version: -1" for "not found".
        wanted = expected_long(expected if expected is not None else StreamState.ANY)
        actual = -1 if e.actual is None else e.actual
        return Failure(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{operation} failed due to WrongExpectedVersion. Stream: {e.stream}, "
            f"Expected version: {wanted}, Actual version: {actual}",
            (
                ("exception", "wrong-expected-version"),
                ("stream-name", e.stream),
                ("expected-version", str(wanted)),
                ("actual-version", str(actual)),
            ),
        )
    if isinstance(e, StreamNotFound):
        return Failure(
            grpc.StatusCode.NOT_FOUND,
            f"Event stream '{e.stream}' is not found.",
            (("exception", "stream-not-found"), ("stream-name", e.stream)),
        )
    if isinstance(e, AppendTooLarge):
        return Failure(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Maximum Append Size of {MAX_APPEND_SIZE} Exceeded.",
            (("exception", "maximum-append-size-exceeded"), ("maximum-append-size", str(MAX_APPEND_SIZE))),
        )
    if isinstance(e, BadRequest):
        return Failure(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    if isinstance(e, StoreClosed):
        # The server's answer while it cannot serve (RpcExceptions.ServerNotReady): worth a retry.
        return Failure(grpc.StatusCode.UNAVAILABLE, "Server Is Not Ready")
    raise Unexpected(f"{type(e).__name__}: {e}") from e


def batch_append_error(e: BaseException, stream: str, expected: Expected) -> status_pb2.Status:
    """The ``error`` of a BatchAppendResp (Streams.BatchAppend.cs, ConvertMessage)."""
    if isinstance(e, WrongExpectedRevision):
        details = shared_pb2.WrongExpectedVersion()
        if e.actual is None:
            details.current_no_stream.SetInParent()
        else:
            details.current_stream_revision = e.actual
        match expected:
            case StreamState.ANY:
                details.expected_any.SetInParent()
            case StreamState.NO_STREAM:
                details.expected_no_stream.SetInParent()
            case StreamState.EXISTS:
                details.expected_stream_exists.SetInParent()
            case int():
                details.expected_stream_position = expected
        return _status(_ALREADY_EXISTS, "WrongExpectedVersion", details)
    if isinstance(e, StreamDeleted):
        identifier = shared_pb2.StreamIdentifier(stream_name=stream.encode("utf-8"))
        return _status(_NOT_FOUND, "StreamDeleted", shared_pb2.StreamDeleted(stream_identifier=identifier))
    if isinstance(e, AppendTooLarge):
        too_large = shared_pb2.MaximumAppendSizeExceeded(maxAppendSize=MAX_APPEND_SIZE)
        return _status(_INVALID_ARGUMENT, "MaximumAppendSizeExceeded", too_large)
    if isinstance(e, BadRequest):
        return _status(_INVALID_ARGUMENT, "BadRequest", shared_pb2.BadRequest(message=str(e)))
    if isinstance(e, StoreClosed):
        return _status(_UNKNOWN, "Unknown", shared_pb2.Unknown())
    raise Unexpected(f"{type(e).__name__}: {e}") from e


def append_wrong_expected(e: WrongExpectedRevision, expected: Expected) -> streams_pb2.AppendResp:
    """Append answers a conflict in its response, not as a status (Streams.Append.cs)."""
    wrong = streams_pb2.AppendResp.WrongExpectedVersion()
    if e.actual is None:
        wrong.current_no_stream.SetInParent()
    else:
        wrong.current_revision = e.actual
    match expected:
        case StreamState.ANY:
            wrong.expected_any.SetInParent()
        case StreamState.NO_STREAM:
            wrong.expected_no_stream.SetInParent()
        case StreamState.EXISTS:
            wrong.expected_stream_exists.SetInParent()
        case int():
            wrong.expected_revision = expected
    return streams_pb2.AppendResp(wrong_expected_version=wrong)


def _status(code: Any, message: str, details: Any) -> status_pb2.Status:
    packed = any_pb2.Any()
    packed.Pack(details)
    return status_pb2.Status(code=code, message=message, details=packed)


def persistent_failure(e: BaseException, stream: str, group: str) -> Failure:
    """The status of a persistent-subscription call (RpcExceptions.PersistentSubscription*): the client
    maps NOT_FOUND, ALREADY_EXISTS, "Maximum subscriptions reached" and INTERNAL to its exceptions."""
    names = (("stream-name", stream), ("group-name", group))
    if isinstance(e, SubscriptionNotFound):
        return Failure(
            grpc.StatusCode.NOT_FOUND,
            f"Subscription group {group} on stream {stream} does not exist.",
            (("exception", "persistent-subscription-does-not-exist"), *names),
        )
    if isinstance(e, SubscriptionExists):
        return Failure(
            grpc.StatusCode.ALREADY_EXISTS,
            f"Subscription group {group} on stream {stream} exists.",
            (("exception", "persistent-subscription-exists"), *names),
        )
    if isinstance(e, MaxSubscribersReached):
        return Failure(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"Maximum subscriptions reached for subscription group {group} on stream {stream}.",
            (("exception", "maximum-subscribers-reached"), *names),
        )
    if isinstance(e, GroupFailed):
        return Failure(
            grpc.StatusCode.INTERNAL,
            f"Subscription group {group} on stream {stream} failed: '{e}'",
            (("exception", "persistent-subscription-failed"), *names, ("reason", str(e))),
        )
    if isinstance(e, SubscriptionDropped):
        # PersistentSubscriptionDropped: the server let go of the consumer (update, restart, shutdown).
        return Failure(
            grpc.StatusCode.CANCELLED,
            f"Subscription group {group} on stream {stream} was dropped.",
            (("exception", "persistent-subscription-dropped"), *names),
        )
    return failure(e, stream=stream)

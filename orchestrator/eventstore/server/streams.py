"""The Streams service (event_store.client.streams.Streams): Read (reads and catch-up subscriptions),
Append, BatchAppend, Delete and Tombstone, over :class:`ServerStore`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from kurrentdbclient.protos.v1 import shared_pb2, streams_pb2

from orchestrator.eventstore.errors import EventStoreError, WrongExpectedRevision
from orchestrator.eventstore.server import catchup, convert
from orchestrator.eventstore.server.accounting import INTERNAL, Accounting
from orchestrator.eventstore.server.convert import BadRequest
from orchestrator.eventstore.server.status import (
    Unexpected,
    append_wrong_expected,
    batch_append_error,
    failure,
)
from orchestrator.eventstore.server.storage import ServerStore
from orchestrator.eventstore.types import AppendResult, Expected, NewEvent, StreamState

_BACKWARDS = streams_pb2.ReadReq.Options.Backwards


class StreamsServicer:
    def __init__(self, store: ServerStore, accounting: Accounting) -> None:
        self._store = store
        self._accounting = accounting

    # --- errors --------------------------------------------------------------------------------------
    async def _fail(
        self, context: Any, method: str, e: Exception, *, stream: str = "", expected: Expected | None = None
    ) -> None:
        """End the call with the server's status for ``e``; a failure without a mapping is a bug of ours:
        counted, logged, and answered UNKNOWN with the wording .NET's gRPC server uses for a handler
        exception (the client maps it to ExceptionThrownByHandlerError)."""
        try:
            f = failure(e, operation="Delete", stream=stream, expected=expected)
        except Unexpected:
            self._accounting.record(INTERNAL, method, f"{type(e).__name__}: {e}")
            await context.abort(grpc.StatusCode.UNKNOWN, "Exception was thrown by handler.")
            return
        await context.abort(f.code, f.details, trailing_metadata=f.trailers)

    # --- Read ----------------------------------------------------------------------------------------
    async def Read(self, request: streams_pb2.ReadReq, context: Any) -> AsyncIterator[streams_pb2.ReadResp]:
        stream = ""
        try:
            options = request.options
            if options.WhichOneof("stream_option") == "stream":
                stream = convert.stream_name(options.stream.stream_identifier)
            responses = self._read(options, stream)
            async for response in responses:
                yield response
        except (EventStoreError, BadRequest) as e:
            await self._fail(context, "Read", e, stream=stream)
        except Exception as e:
            await self._fail(context, "Read", e, stream=stream)

    def _read(self, options: Any, stream: str) -> AsyncIterator[streams_pb2.ReadResp]:
        embedded = self._store.store
        backwards = options.read_direction == _BACKWARDS
        subscribe = options.WhichOneof("count_option") == "subscription"
        count = options.count if options.WhichOneof("count_option") == "count" else 2**63 - 1
        if options.WhichOneof("stream_option") == "stream":
            which = options.stream.WhichOneof("revision_option")
            revision = int(options.stream.revision) if which == "revision" else None
            if subscribe:
                return catchup.subscribe_stream(embedded, stream, revision, from_end=which == "end")
            if which == "end" and not backwards:
                revision = 2**63 - 1  # forwards from the end: nothing, but "not found" still says so
            return catchup.read_stream(embedded, stream, revision, backwards, count)
        if options.WhichOneof("stream_option") != "all":
            raise BadRequest("a read needs a stream or $all")
        flt = convert.all_filter(options)
        which = options.all.WhichOneof("all_option")
        position = int(options.all.position.commit_position) if which == "position" else None
        if subscribe:
            return catchup.subscribe_all(embedded, position, which == "end", flt)
        # Forwards from a position includes it; backwards from one excludes it (all_page).
        start = position if position is not None else 0 if which == "start" else embedded.notifier.head + 1
        return catchup.read_all(embedded, start, backwards, count, flt)

    # --- appends -------------------------------------------------------------------------------------
    async def Append(self, requests: AsyncIterator[streams_pb2.AppendReq], context: Any) -> Any:
        stream, expected = "", None
        try:
            options = None
            events: list[NewEvent] = []
            async for request in requests:
                if request.WhichOneof("content") == "options":
                    options = request.options
                else:
                    events.append(convert.new_event(request.proposed_message))
            if options is None:
                raise BadRequest("the first message of an append must carry its options")
            stream = convert.stream_name(options.stream_identifier)
            expected = convert.expected_of(options, "revision")
            try:
                result = await self._store.append(stream, events, expected)
            except WrongExpectedRevision as e:
                return append_wrong_expected(e, expected)
            return streams_pb2.AppendResp(success=_append_success(streams_pb2.AppendResp.Success(), result))
        except Exception as e:
            await self._fail(context, "Append", e, stream=stream, expected=expected)

    async def BatchAppend(
        self, requests: AsyncIterator[streams_pb2.BatchAppendReq], context: Any
    ) -> AsyncIterator[streams_pb2.BatchAppendResp]:
        # Chunks of one write share a correlation id; the write happens at its final chunk
        # (Streams.BatchAppend.cs, Receive). Writes are answered in the order they complete.
        pending: dict[str, tuple[Any, list[NewEvent]]] = {}
        try:
            async for request in requests:
                response = await self._batch(request, pending)
                if response is not None:
                    yield response
        except Exception as e:
            await self._fail(context, "BatchAppend", e)

    async def _batch(
        self, request: streams_pb2.BatchAppendReq, pending: dict[str, tuple[Any, list[NewEvent]]]
    ) -> streams_pb2.BatchAppendResp | None:
        correlation = request.correlation_id.string
        if request.HasField("options"):
            pending.setdefault(correlation, (request.options, []))
        if correlation not in pending:
            return None
        options, events = pending[correlation]
        stream = convert.stream_name(options.stream_identifier)
        response = streams_pb2.BatchAppendResp(
            correlation_id=request.correlation_id,
            stream_identifier=shared_pb2.StreamIdentifier(stream_name=stream.encode("utf-8")),
        )
        try:
            expected = convert.expected_of(options, "stream_position")
            events.extend(convert.new_event(m) for m in request.proposed_messages)
            if not request.is_final:
                return None
            del pending[correlation]
            result = await self._store.append(stream, events, expected)
        except (EventStoreError, BadRequest) as e:
            pending.pop(correlation, None)
            # Unexpected (a bug) propagates to BatchAppend, which ends the call and counts it.
            response.error.CopyFrom(batch_append_error(e, stream, _expected_or_any(options)))
            return response
        _append_success(response.success, result)
        return response

    # --- deletes -------------------------------------------------------------------------------------
    async def Delete(self, request: streams_pb2.DeleteReq, context: Any) -> Any:
        return await self._delete(request, context, "Delete", self._store.soft_delete, streams_pb2.DeleteResp)

    async def Tombstone(self, request: streams_pb2.TombstoneReq, context: Any) -> Any:
        return await self._delete(
            request, context, "Tombstone", self._store.tombstone, streams_pb2.TombstoneResp
        )

    async def _delete(
        self,
        request: Any,
        context: Any,
        method: str,
        delete: Callable[[str, Expected], Awaitable[None]],
        response: Callable[[], Any],
    ) -> Any:
        stream, expected = "", None
        try:
            stream = convert.stream_name(request.options.stream_identifier)
            expected = convert.expected_of(request.options, "revision")
            await delete(stream, expected)
            # The position of the delete record is not kept by the embedded store; the client ignores it.
            answer = response()
            answer.no_position.SetInParent()
            return answer
        except Exception as e:
            await self._fail(context, method, e, stream=stream, expected=expected)
            return None


def _append_success(success: Any, result: AppendResult) -> Any:
    position = result.position.commit
    if result.next_revision is None:
        success.no_stream.SetInParent()
    else:
        success.current_revision = result.next_revision
    success.position.commit_position = position
    success.position.prepare_position = position
    return success


def _expected_or_any(options: Any) -> Expected:
    try:
        return convert.expected_of(options, "stream_position")
    except BadRequest:
        return StreamState.ANY

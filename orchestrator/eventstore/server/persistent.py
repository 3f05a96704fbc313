"""The PersistentSubscriptions service (event_store.client.persistent_subscriptions): groups on ``$all``
(with filters) and on single streams, Read with ack and nack, ReplayParked and RestartSubsystem, over
:class:`Groups`. Behaviour follows the server's Services/Transport/Grpc/PersistentSubscriptions.*.cs and
Services/PersistentSubscription/PersistentSubscriptionService.cs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from kurrentdbclient.protos.v1 import persistent_pb2, shared_pb2

from orchestrator.eventstore.errors import SubscriptionDropped, SubscriptionNotFound
from orchestrator.eventstore.port import PersistentSubscription
from orchestrator.eventstore.server import psconvert
from orchestrator.eventstore.server.accounting import INTERNAL, Accounting
from orchestrator.eventstore.server.convert import BadRequest
from orchestrator.eventstore.server.psconfig import GroupConfig, group_key
from orchestrator.eventstore.server.psgroups import Groups
from orchestrator.eventstore.server.status import Unexpected, persistent_failure

#: the header the client names its connection with (Constants.Headers.ConnectionName)
_CONNECTION_NAME = "connection-name"
#: streams $all never yields (EventFilter.DefaultAllFilterStrategy, Services/Storage/ReaderIndex/
#: EventFilter.cs: AllReader reads and PersistentSubscriptionService.ProcessEventCommitted apply it, and
#: every $all filter includes it); every other event, system events included, reaches $all groups
_EPOCH_INFORMATION = "$epoch-information"
_ALL_GROUP_STREAMS = "$persistentsubscription-$all::"


def in_all(stream: str) -> bool:
    """Whether a $all persistent subscription on the server delivers events of ``stream``."""
    if not stream.startswith("$"):
        return True
    if stream == _EPOCH_INFORMATION:
        return False
    return not (stream.startswith(_ALL_GROUP_STREAMS) and stream.endswith(("-checkpoint", "-parked")))


@dataclass(eq=False)
class _Connection:
    consumer: PersistentSubscription
    peer: str
    name: str
    buffer_size: int
    delivered: int = 0
    #: why the server let go of it: "dropped" (update, restart) or "deleted"
    ended: str | None = None

    def state(self) -> psconvert.ConnectionState:
        in_flight = len(getattr(self.consumer, "in_flight", ()))
        return psconvert.ConnectionState(self.peer, self.name, self.buffer_size, in_flight, self.delivered)


class PersistentSubscriptionsServicer:
    def __init__(self, groups: Groups, accounting: Accounting) -> None:
        self._groups = groups
        self._accounting = accounting
        self._connections: dict[str, set[_Connection]] = {}

    async def _fail(self, context: Any, method: str, e: Exception, stream: str, group: str) -> None:
        try:
            f = persistent_failure(e, stream, group)
        except Unexpected:
            self._accounting.record(INTERNAL, method, f"{type(e).__name__}: {e}")
            await context.abort(grpc.StatusCode.UNKNOWN, "Exception was thrown by handler.")
            return
        await context.abort(f.code, f.details, trailing_metadata=f.trailers)

    # --- groups ----------------------------------------------------------------------------------------
    async def Create(self, request: persistent_pb2.CreateReq, context: Any) -> Any:
        stream, group = "", request.options.group_name
        try:
            config = psconvert.create_config(request)
            stream = config.stream
            await self._groups.create(config)
            return persistent_pb2.CreateResp()
        except Exception as e:
            stream = stream or _stream_of(request.options)
            await self._fail(context, "Create", e, stream, group)

    async def Update(self, request: persistent_pb2.UpdateReq, context: Any) -> Any:
        stream, group = _stream_of(request.options), request.options.group_name
        try:
            config = psconvert.update_config(request)
            await self._groups.update(config)
            # UpdateSubscription shuts the old subscription down: its clients are dropped.
            self._end(config.key, "dropped")
            return persistent_pb2.UpdateResp()
        except Exception as e:
            await self._fail(context, "Update", e, stream, group)

    async def Delete(self, request: persistent_pb2.DeleteReq, context: Any) -> Any:
        stream, group = "", request.options.group_name
        try:
            stream = psconvert.source(request.options)
            self._end(group_key(stream, group), "deleted", close=False)
            await self._groups.delete(stream, group)
            return persistent_pb2.DeleteResp()
        except Exception as e:
            await self._fail(context, "Delete", e, stream, group)

    async def GetInfo(self, request: persistent_pb2.GetInfoReq, context: Any) -> Any:
        stream, group = "", request.options.group_name
        try:
            stream = psconvert.source(request.options)
            config = self._groups.get(stream, group)
            return persistent_pb2.GetInfoResp(subscription_info=await self._info(config))
        except Exception as e:
            await self._fail(context, "GetInfo", e, stream, group)

    async def List(self, request: persistent_pb2.ListReq, context: Any) -> Any:
        stream = ""
        try:
            options = request.options
            if options.WhichOneof("list_option") == "list_for_stream":
                stream = psconvert.list_source(options.list_for_stream)
                configs = self._groups.configs(stream)
                if not configs:
                    # GetStreamPersistentSubscriptionStats: no group on the stream is "not found"
                    # (the client answers an empty list).
                    raise SubscriptionNotFound(group_key(stream, ""))
            else:
                configs = self._groups.configs()
            infos = [await self._info(c) for c in configs]
            return persistent_pb2.ListResp(subscriptions=infos)
        except Exception as e:
            await self._fail(context, "List", e, stream, "")

    async def ReplayParked(self, request: persistent_pb2.ReplayParkedReq, context: Any) -> Any:
        stream, group = "", request.options.group_name
        try:
            stream = psconvert.source(request.options)
            # stop_at is not honoured: every parked message is replayed (a deviation, see README).
            await self._groups.replay_parked(self._groups.get(stream, group))
            return persistent_pb2.ReplayParkedResp()
        except Exception as e:
            await self._fail(context, "ReplayParked", e, stream, group)

    async def RestartSubsystem(self, request: shared_pb2.Empty, context: Any) -> shared_pb2.Empty:
        # PersistentSubscriptionsRestart: every subscription is shut down (clients dropped) and reloaded
        # from its configuration; the embedded groups keep their state, so dropping the clients is all.
        for key in list(self._connections):
            self._end(key, "dropped")
        return shared_pb2.Empty()

    async def _info(self, config: GroupConfig) -> persistent_pb2.SubscriptionInfo:
        info = await self._groups.info(config)
        connections = [c.state() for c in self._connections.get(config.key, ())]
        return psconvert.subscription_info(
            config,
            info,
            connections,
            checkpoint=await self._groups.checkpoint_text(config, info.checkpoint),
            last_known=await self._groups.last_known_text(config),
        )

    def _end(self, key: str, why: str, *, close: bool = True) -> None:
        for connection in self._connections.get(key, ()):
            connection.ended = why
            if close:
                # Closing ends its iteration; what it held goes back to the group for redelivery,
                # as RemoveClientByCorrelationId retries a dropped client's messages.
                asyncio.get_running_loop().create_task(connection.consumer.close())

    # --- Read ------------------------------------------------------------------------------------------
    async def Read(
        self, requests: AsyncIterator[persistent_pb2.ReadReq], context: Any
    ) -> AsyncIterator[persistent_pb2.ReadResp]:
        stream, group = "", ""
        connection: _Connection | None = None
        pump: asyncio.Task[None] | None = None
        try:
            first = await anext(aiter(requests), None)
            if first is None:
                return
            if first.WhichOneof("content") != "options":
                raise BadRequest("the first message of a Read must carry its options")
            options = first.options
            stream, group = psconvert.source(options), options.group_name
            config = self._groups.get(stream, group)
            if options.buffer_size < 1:
                # The server sizes a bounded channel with it, which refuses a capacity below 1
                # (PersistentStreamSubscriptionEnumerator); kurrentdbclient never sends one.
                raise BadRequest(f"buffer_size must be at least 1, not {options.buffer_size}")
            # buffer_size is the client's in-flight limit: ConnectToPersistentSubscriptionToAll/ToStream
            # carry it as AllowedInFlightMessages, and PersistentSubscriptionClient pushes no more
            # unanswered messages than that (PersistentSubscriptions.Read.cs,
            # Services/PersistentSubscription/PersistentSubscriptionClient.cs).
            consumer = await self._groups.connect(config, buffer_size=options.buffer_size)
            name = dict(context.invocation_metadata() or ()).get(_CONNECTION_NAME, "<unknown>")
            connection = _Connection(consumer, str(context.peer()), str(name), options.buffer_size)
            self._connections.setdefault(config.key, set()).add(connection)
            yield psconvert.confirmation(config.key)
            pump = asyncio.create_task(self._pump(requests, connection))
            selects = config.acceptor()
            accepts = (lambda e: in_all(e.stream) and selects(e)) if config.is_all else selects
            async for event in consumer:
                if not accepts(event):
                    # The server never reads it for this group; done, so the checkpoint passes it.
                    await consumer.ack(event.id)
                    continue
                connection.delivered += 1
                yield psconvert.read_event(event)
            if connection.ended == "deleted":
                raise SubscriptionNotFound(config.key)
            if connection.ended is not None:
                raise SubscriptionDropped(config.key)
            # Else the client closed its request stream: it is leaving, and the call ends quietly.
        except SubscriptionDropped as e:
            # PersistentSubscriptionDeleted is answered "does not exist" (Read.cs, OnMessage).
            deleted = connection is not None and connection.ended == "deleted"
            await self._fail(context, "Read", SubscriptionNotFound(group) if deleted else e, stream, group)
        except Exception as e:
            await self._fail(context, "Read", e, stream, group)
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            if connection is not None:
                self._connections.get(group_key(stream, group), set()).discard(connection)
                await connection.consumer.close()

    async def _pump(self, requests: AsyncIterator[persistent_pb2.ReadReq], connection: _Connection) -> None:
        """Acks and nacks, in order; the end of the request stream means the client is leaving."""
        consumer = connection.consumer
        try:
            async for request in requests:
                which = request.WhichOneof("content")
                if which == "ack":
                    for identifier in request.ack.ids:
                        await consumer.ack(psconvert.event_id(identifier))
                elif which == "nack":
                    action = psconvert.NACK_ACTIONS.get(request.nack.action)
                    for identifier in request.nack.ids:
                        if action is not None:
                            await consumer.nack(psconvert.event_id(identifier), action)
        finally:
            await consumer.close()


def _stream_of(options: Any) -> str:
    which = options.WhichOneof("stream_option")
    if which == "all":
        return "$all"
    if which == "stream":
        return str(options.stream.stream_identifier.stream_name.decode("utf-8", "replace"))
    return ""

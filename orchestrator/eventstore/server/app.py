"""The server: a grpc.aio server over one embedded store, one servicer class per service (Streams,
PersistentSubscriptions, Gossip), and a last
handler that answers (and counts) every method no servicer implements."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import grpc
from kurrentdbclient.protos.v1 import (
    gossip_pb2,
    gossip_pb2_grpc,
    persistent_pb2_grpc,
    shared_pb2,
    streams_pb2_grpc,
)

from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.server.accounting import Accounting, UnimplementedHandler
from orchestrator.eventstore.server.persistent import PersistentSubscriptionsServicer
from orchestrator.eventstore.server.psgroups import Groups
from orchestrator.eventstore.server.storage import ServerStore
from orchestrator.eventstore.server.streams import StreamsServicer

#: what the server prints once it listens; tests wait for this line
LISTENING = "eventstore server listening on"


class GossipServicer:
    """Gossip.Read, which the client calls to discover the cluster (``+discover`` URIs, several hosts):
    one node, always the leader."""

    def __init__(self, host: str, port: int) -> None:
        self._member = gossip_pb2.MemberInfo(
            instance_id=shared_pb2.UUID(string=str(uuid.uuid4())),
            state=gossip_pb2.MemberInfo.VNodeState.Leader,
            is_alive=True,
            http_end_point=gossip_pb2.EndPoint(address=host, port=port),
        )

    async def Read(self, request: shared_pb2.Empty, context: Any) -> gossip_pb2.ClusterInfo:
        member = gossip_pb2.MemberInfo()
        member.CopyFrom(self._member)
        member.time_stamp = time.time_ns() // 100  # .NET ticks, as the server sends them
        return gossip_pb2.ClusterInfo(members=[member])


@dataclass(frozen=True, slots=True)
class ServerOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    #: 0 picks a free port
    port: int = 2113
    #: where refused requests are reported, one JSON line each (see accounting)
    report: Path | None = None


class EventStoreServer:
    def __init__(
        self, server: Any, store: EmbeddedEventStore, accounting: Accounting, host: str, port: int
    ) -> None:
        self._server = server
        self.store = store
        self.accounting = accounting
        self.host = host
        self.port = port

    @classmethod
    async def start(cls, options: ServerOptions) -> Self:
        # The embedded store's directory lock makes this process the one writer of the data.
        store = await EmbeddedEventStore.open(options.data_dir)
        try:
            accounting = Accounting(options.report)
            server = grpc.aio.server()
            port = server.add_insecure_port(f"{options.host}:{options.port}")
            if port == 0:
                raise OSError(f"cannot listen on {options.host}:{options.port}")
            # Generated, unannotated registration functions: the one untyped edge.
            add_streams: Any = streams_pb2_grpc.add_StreamsServicer_to_server
            add_persistent: Any = persistent_pb2_grpc.add_PersistentSubscriptionsServicer_to_server
            add_gossip: Any = gossip_pb2_grpc.add_GossipServicer_to_server
            server_store = ServerStore(store)
            groups = Groups(server_store)
            await groups.load()
            add_streams(StreamsServicer(server_store, accounting), server)
            add_persistent(PersistentSubscriptionsServicer(groups, accounting), server)
            add_gossip(GossipServicer(options.host, port), server)
            # Last: consulted only for methods no service above registered.
            server.add_generic_rpc_handlers((UnimplementedHandler(accounting),))
            await server.start()
        except BaseException:
            await store.close()
            raise
        return cls(server, store, accounting, options.host, port)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def stop(self, grace: float = 1.0) -> None:
        # Calls first (their subscriptions read from the store), then the store.
        await self._server.stop(grace)
        await self.store.close()

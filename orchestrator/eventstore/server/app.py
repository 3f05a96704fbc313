"""The server: a grpc.aio server over one embedded store, one servicer class per service (Streams,
PersistentSubscriptions, Gossip), and a last handler that answers (and counts) every method no servicer
implements. Insecure, or TLS with a certificate it is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import grpc
import structlog
from kurrentdbclient.protos.v1 import gossip_pb2_grpc, persistent_pb2_grpc, streams_pb2_grpc

from orchestrator.eventstore.embedded import EmbeddedEventStore
from orchestrator.eventstore.server.accounting import Accounting, UnimplementedHandler
from orchestrator.eventstore.server.gossip import GossipServicer
from orchestrator.eventstore.server.network import bind_address, is_loopback
from orchestrator.eventstore.server.persistent import PersistentSubscriptionsServicer
from orchestrator.eventstore.server.psgroups import Groups
from orchestrator.eventstore.server.storage import ServerStore
from orchestrator.eventstore.server.streams import StreamsServicer
from orchestrator.eventstore.server.tls import ServerCertificate

log = structlog.get_logger("orchestrator.eventstore.server")

#: what the server prints once it listens; tests wait for this line
LISTENING = "eventstore server listening on"


@dataclass(frozen=True, slots=True)
class ServerOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    #: 0 picks a free port
    port: int = 2113
    #: where refused requests are reported, one JSON line each (see accounting)
    report: Path | None = None
    #: serve TLS with this certificate (see tls.certificate_option); insecure when None
    certificate: ServerCertificate | None = None


class EventStoreServer:
    def __init__(
        self,
        server: Any,
        store: EmbeddedEventStore,
        accounting: Accounting,
        host: str,
        port: int,
        tls: bool = False,
    ) -> None:
        self._server = server
        self.store = store
        self.accounting = accounting
        self.host = host
        self.port = port
        self.tls = tls

    @classmethod
    async def start(cls, options: ServerOptions) -> Self:
        # The embedded store's directory lock makes this process the one writer of the data.
        store = await EmbeddedEventStore.open(options.data_dir)
        try:
            accounting = Accounting(options.report)
            server = grpc.aio.server()
            where = bind_address(options.host, options.port)
            if options.certificate is not None:
                port = server.add_secure_port(where, options.certificate.credentials())
            else:
                port = server.add_insecure_port(where)
            if port == 0:
                raise OSError(f"cannot listen on {where}")
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
        tls = options.certificate is not None
        if not tls and not is_loopback(options.host):
            # As the README promises, insecure is for loopback; the real server refuses this unless told
            # --insecure. Here it is allowed (a trusted network, a container), but never silently.
            log.warning(
                "eventstore_server_insecure_on_network",
                host=options.host,
                port=port,
                detail="serving without TLS on a non-loopback address: anyone who can reach it can read "
                "and write every stream; give --tls-cert and --tls-key",
            )
        return cls(server, store, accounting, options.host, port, tls)

    @property
    def address(self) -> str:
        return bind_address(self.host, self.port)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def stop(self, grace: float = 1.0) -> None:
        # Calls first (their subscriptions read from the store), then the store.
        await self._server.stop(grace)
        await self.store.close()

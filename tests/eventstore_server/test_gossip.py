"""Discovery: Gossip.Read as the client's ``+discover`` and several-hosts URIs use it, the address the one
member advertises (one the asking client can connect to, also when the server is bound to a wildcard),
what node preferences do against a one-node cluster, and the warning for an insecure non-loopback bind."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import grpc
import pytest
from kurrentdbclient.protos.v1 import gossip_pb2, gossip_pb2_grpc, shared_pb2
from structlog.testing import capture_logs

from orchestrator.eventstore import NO_STREAM, NewEvent, OperationalError
from orchestrator.eventstore.kurrent import open_kurrent_store
from orchestrator.eventstore.server import EventStoreServer, ServerOptions
from orchestrator.eventstore.server.gossip import advertised_host
from orchestrator.eventstore.server.network import LOOPBACK, local_address_towards
from orchestrator.eventstore.server.tls import ServerCertificate
from tests.contract.harness import LocalServer
from tests.eventstore_server.certificates import make_certificates

pytestmark = pytest.mark.timeout(60)

WITHIN = 10.0
INSECURE_ON_NETWORK = "eventstore_server_insecure_on_network"


async def _append_and_read_back(url: str) -> None:
    stream = f"gossip-{uuid4().hex}"
    events = [NewEvent(uuid4(), "Happened", b"{}") for _ in range(2)]
    async with asyncio.timeout(WITHIN):
        store = await open_kurrent_store(url)
        try:
            await store.append(stream, events, expected=NO_STREAM)
            assert [e.id for e in await store.read_stream(stream)] == [e.id for e in events]
        finally:
            await store.close()


async def _gossip(target: str) -> list[gossip_pb2.MemberInfo]:
    async with grpc.aio.insecure_channel(target) as channel:
        info = await gossip_pb2_grpc.GossipStub(channel).Read(shared_pb2.Empty(), timeout=WITHIN)
    return list(info.members)


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("scheme", ["kurrentdb+discover", "esdb+discover"])
async def test_the_adapter_connects_through_discovery(server: LocalServer, scheme: str) -> None:
    await _append_and_read_back(f"{scheme}://127.0.0.1:{server.port}?tls=false")


@pytest.mark.parametrize("dead_first", [True, False], ids=["dead-host-first", "dead-host-last"])
async def test_the_adapter_gossips_over_several_hosts(server: LocalServer, dead_first: bool) -> None:
    hosts = [f"127.0.0.1:{server.port}", f"127.0.0.1:{_free_port()}"]
    if dead_first:
        hosts.reverse()
    await _append_and_read_back(f"kurrentdb://{','.join(hosts)}?tls=false")


async def test_the_one_member_is_an_alive_leader_at_the_address_the_client_used(server: LocalServer) -> None:
    (member,) = await _gossip(f"127.0.0.1:{server.port}")
    assert member.state == gossip_pb2.MemberInfo.VNodeState.Leader
    assert member.is_alive
    assert (member.http_end_point.address, member.http_end_point.port) == ("127.0.0.1", server.port)
    # The same node on every read (clients compare instance ids across gossip rounds).
    (again,) = await _gossip(f"127.0.0.1:{server.port}")
    assert again.instance_id == member.instance_id


@pytest.mark.parametrize(
    ("preference", "refusal"),
    [
        pytest.param("leader", None, id="leader"),
        pytest.param("random", None, id="random"),
        pytest.param("follower", "FollowerNotFoundError", id="follower"),
        pytest.param("readonlyreplica", "ReadOnlyReplicaNotFoundError", id="readonlyreplica"),
    ],
)
async def test_node_preferences_against_a_one_node_cluster(
    server: LocalServer, preference: str, refusal: str | None
) -> None:
    # As against a real one-node cluster: gossip names one leader; the client finds no follower or
    # read-only replica in it and says so (after maxDiscoverAttempts rounds), it does not fall back.
    url = f"kurrentdb+discover://127.0.0.1:{server.port}?tls=false&nodePreference={preference}"
    url += "&maxDiscoverAttempts=2"
    if refusal is None:
        await _append_and_read_back(url)
    else:
        with pytest.raises(OperationalError, match=refusal):
            async with asyncio.timeout(WITHIN):
                await open_kurrent_store(url)


async def test_a_preference_without_discovery_connects_to_the_one_node(server: LocalServer) -> None:
    # One host and no +discover: the client does not gossip, and the node (the leader) serves everything.
    await _append_and_read_back(f"kurrentdb://127.0.0.1:{server.port}?tls=false&nodePreference=follower")


@pytest.fixture
async def wildcard_server(tmp_path: Path) -> AsyncIterator[EventStoreServer]:
    with capture_logs() as logs:
        server = await EventStoreServer.start(ServerOptions(tmp_path / "data", host="0.0.0.0", port=0))
    try:
        assert INSECURE_ON_NETWORK in [entry["event"] for entry in logs]
        yield server
    finally:
        await server.stop(grace=0.1)


def _non_loopback(family: socket.AddressFamily) -> str | None:
    # Documentation prefixes: only the route matters (no packet is sent).
    return local_address_towards("192.0.2.1" if family == socket.AF_INET else "2001:db8::1")


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
async def test_bound_to_a_wildcard_it_advertises_the_address_the_client_reached(
    wildcard_server: EventStoreServer, family: socket.AddressFamily
) -> None:
    address = _non_loopback(family)
    if address is None:
        pytest.skip(f"this machine has no non-loopback {family.name} address")
    host = f"[{address}]" if family == socket.AF_INET6 else address
    (member,) = await _gossip(f"{host}:{wildcard_server.port}")
    assert (member.http_end_point.address, member.http_end_point.port) == (address, wildcard_server.port)
    await _append_and_read_back(f"kurrentdb://{host}:{member.http_end_point.port}?tls=false")


async def test_bound_to_a_wildcard_it_advertises_loopback_to_a_local_client(
    wildcard_server: EventStoreServer,
) -> None:
    (member,) = await _gossip(f"127.0.0.1:{wildcard_server.port}")
    assert member.http_end_point.address == "127.0.0.1"
    await _append_and_read_back(f"kurrentdb+discover://127.0.0.1:{wildcard_server.port}?tls=false")


def test_what_is_advertised_for_each_peer() -> None:
    assert advertised_host("127.0.0.1", "ipv4:10.1.2.3:5000") == "127.0.0.1"  # bound to one address
    assert advertised_host("::1", "ipv6:%5B::1%5D:5000") == "::1"
    assert advertised_host("0.0.0.0", "ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert advertised_host("::", "ipv6:%5B::1%5D:5000") == "::1"
    assert advertised_host("::", "ipv6:%5B::ffff:127.0.0.1%5D:5000") == "127.0.0.1"
    # No IP to route back to: what the real server advertises for a one-node cluster.
    assert advertised_host("0.0.0.0", "unix:/run/kurrent.sock") == LOOPBACK


async def test_tls_on_a_wildcard_and_insecure_loopback_bind_without_a_warning(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "tls")
    certificate = ServerCertificate.load(files.cert, files.key)
    with capture_logs() as logs:
        for options in (
            ServerOptions(tmp_path / "tls-data", host="0.0.0.0", port=0, certificate=certificate),
            ServerOptions(tmp_path / "loopback-data", host="127.0.0.1", port=0),
        ):
            server = await EventStoreServer.start(options)
            await server.stop(grace=0.1)
    assert INSECURE_ON_NETWORK not in [entry["event"] for entry in logs]

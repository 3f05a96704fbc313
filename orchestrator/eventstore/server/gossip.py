"""Gossip.Read, which the client calls to discover the cluster (``+discover`` URIs, and URIs with several
hosts): one node, always the leader, at an address the asking client can connect to.

The real server (KurrentDB ``ClusterVNode.GetGossipAdvertiseInfo``; ``Gossip.Read.cs`` sends each member's
``HttpEndPointIp``/``Port``, which is ``--advertise-host-to-client-as`` if set, else the node's advertised
host) advertises the address the node is bound to, and, for a node bound to ``0.0.0.0`` without an
advertise option, ``127.0.0.1`` in a one-node cluster (a non-loopback address of the machine in a larger
one). Bound to a wildcard, this server advertises instead the address of the interface the asking client
reached, which is ``127.0.0.1`` for a client on this machine too, and also reachable from elsewhere.

Which member a client then picks is the client's business: with ``nodePreference=follower`` or
``readonlyreplica``, a one-node cluster has none, as on the real server (kurrentdbclient raises
``FollowerNotFoundError`` / ``ReadOnlyReplicaNotFoundError``; ``random`` picks the leader).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from kurrentdbclient.protos.v1 import gossip_pb2, shared_pb2

from orchestrator.eventstore.server.network import (
    LOOPBACK,
    is_wildcard,
    local_address_towards,
    peer_ip,
)


def advertised_host(bound: str, peer: str) -> str:
    """The host to advertise to the client whose gRPC peer string is ``peer``."""
    if not is_wildcard(bound):
        return bound.strip("[]")  # the one address the server listens on (an IPv6 one bare, as .NET sends it)
    ip = peer_ip(peer)
    reached = local_address_towards(ip) if ip is not None else None
    return reached or LOOPBACK


class GossipServicer:
    """One servicer for the Gossip service: this node, the leader."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._instance_id = str(uuid.uuid4())

    async def Read(self, request: shared_pb2.Empty, context: Any) -> gossip_pb2.ClusterInfo:
        member = gossip_pb2.MemberInfo(
            instance_id=shared_pb2.UUID(string=self._instance_id),
            time_stamp=time.time_ns() // 100,  # .NET ticks since the Unix epoch, as the server sends them
            state=gossip_pb2.MemberInfo.VNodeState.Leader,
            is_alive=True,
            http_end_point=gossip_pb2.EndPoint(
                address=advertised_host(self._host, str(context.peer())), port=self._port
            ),
        )
        return gossip_pb2.ClusterInfo(members=[member])

"""Addresses: which hosts are loopback or wildcards, the form gRPC binds, and the address of this machine
that a given client reached it on (what gossip advertises when the server is bound to a wildcard)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import unquote

#: hosts that bind every interface ("" and "*" as gRPC and most servers read them)
WILDCARDS = frozenset({"", "*", "0.0.0.0", "::", "[::]"})  # noqa: S104 - recognised here, not bound
#: what the real server advertises for a wildcard bind of a one-node cluster (see gossip)
LOOPBACK = "127.0.0.1"


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def is_wildcard(host: str) -> bool:
    return host in WILDCARDS


def is_loopback(host: str) -> bool:
    """Only this machine can connect: a loopback address, or ``localhost`` (which resolves to one)."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def bind_address(host: str, port: int) -> str:
    """``host:port`` as gRPC parses it: an IPv6 literal goes in brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def peer_ip(peer: str) -> str | None:
    """The client's IP from gRPC's peer string (``ipv4:1.2.3.4:5``, ``ipv6:%5B::1%5D:5``); ``None`` for
    other transports. An IPv4 client of a dual-stack socket comes back as its IPv4 address."""
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    ip = _ip(unquote(rest).rsplit(":", 1)[0])
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def local_address_towards(ip: str) -> str | None:
    """This machine's address on the route to ``ip``: the interface a client at ``ip`` reached (for a client
    on this machine, the address it dialled). ``None`` when there is no route."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            # Connecting a UDP socket sends nothing: the kernel only picks the route and a source address.
            probe.connect((ip, 9))
            address: str = probe.getsockname()[0]
    except OSError:
        return None
    return address.split("%", 1)[0]

"""Which deployments cluster mode can run in."""

from __future__ import annotations

from collections.abc import Collection

ALL_ROLES = frozenset({"api", "engine", "projector"})


class ClusterConfigError(ValueError):
    """Cluster mode asked for where it cannot work; the message names the settings."""


def check_store(enabled: bool, store_url: str, roles: Collection[str]) -> None:
    """Cluster mode keeps membership and the lease in the event store, so every node must share one store.
    The embedded store is single-process by contract (an exclusive lock on its directory), so with it a
    cluster is one process: accepted when that process runs every role (a one-node cluster, the same code
    path, e.g. to try ``/health/cluster``), refused for a single role, whose peers could never join."""
    if not enabled or store_url != "embedded" or set(roles) >= ALL_ROLES:
        return
    raise ClusterConfigError(
        "cluster.enabled: cluster mode needs an event store every node shares (KurrentDB / EventStoreDB, or "
        "the local server: saga-orchestrator eventstore serve); the embedded store is single-process, so "
        "with it cluster mode runs only as one process with every role (serve --role all)"
    )

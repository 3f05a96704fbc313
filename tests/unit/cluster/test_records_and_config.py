"""Cluster events read back tolerantly, deterministic lease ids, the cluster settings' bounds, and where
cluster mode may run."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from orchestrator.cluster import ClusterConfigError, check_store
from orchestrator.cluster.records import (
    LEASE_RENEWED,
    SHARDS_ASSIGNED,
    LeaseEvent,
    decode_lease,
    decode_member,
    encode_lease,
)
from orchestrator.eventstore.types import Position, RecordedEvent
from orchestrator.settings import ConfigError, load_settings


def recorded(event_type: str, data: bytes) -> RecordedEvent:
    return RecordedEvent(
        uuid.uuid4(), event_type, data, b"", "cluster-x-lease", 0, Position(1), datetime.now(UTC)
    )


def test_lease_events_round_trip_with_deterministic_ids() -> None:
    event = LeaseEvent(SHARDS_ASSIGNED, "n1", 4, 1500, 4, {"n1": (0, 1), "n2": (2, 3)})
    first = encode_lease("s", [event], 7)
    assert encode_lease("s", [event], 7) == first  # a resend is the same bytes, the same id
    assert encode_lease("s", [event], 8)[0].id != first[0].id  # another slot, another id
    assert decode_lease(recorded(first[0].type, first[0].data)) == event


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("LeaseFromTheFuture", b'{"holder": "n", "epoch": 1, "lease_ms": 1}'),
        (LEASE_RENEWED, b"not json"),
        (LEASE_RENEWED, b'{"holder": 1, "epoch": 1, "lease_ms": 1}'),
        (SHARDS_ASSIGNED, b'{"holder": "n", "epoch": 1, "lease_ms": 1, "shards": 2, "assignment": []}'),
        ("NodeHeartbeat", b'{"node": {"node_id": "n"}, "beat": 1}'),
    ],
)
def test_an_event_this_node_cannot_read_is_skipped(event_type: str, data: bytes) -> None:
    assert decode_lease(recorded(event_type, data)) is None
    assert decode_member(recorded(event_type, data)) is None


def test_embedded_cluster_mode_only_as_one_process_with_every_role() -> None:
    check_store(True, "embedded", ("api", "engine", "projector"))
    check_store(True, "kurrentdb://localhost:2113?tls=false", ("engine",))
    check_store(False, "embedded", ("engine",))
    with pytest.raises(ClusterConfigError, match=r"^cluster\.enabled: cluster mode needs an event store"):
        check_store(True, "embedded", ("engine",))


def test_cluster_settings_from_the_environment_and_their_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGA_CONFIG", raising=False)
    monkeypatch.setenv("SAGA_CLUSTER__ENABLED", "true")
    monkeypatch.setenv("SAGA_CLUSTER__LEASE_MS", "1500")
    monkeypatch.setenv("SAGA_CLUSTER__HEARTBEAT_MS", "250")
    monkeypatch.setenv("SAGA_CLUSTER__RENEW_MARGIN_MS", "300")
    cluster = load_settings().cluster
    assert (cluster.enabled, cluster.lease_ms, cluster.heartbeat_ms, cluster.renew_margin_ms) == (
        True,
        1500,
        250,
        300,
    )
    monkeypatch.setenv("SAGA_CLUSTER__HEARTBEAT_MS", "700")
    with pytest.raises(ConfigError, match=r"2 \* heartbeat_ms <= lease_ms - renew_margin_ms"):
        load_settings()

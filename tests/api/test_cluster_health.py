"""``/health/cluster`` with and without cluster mode: this node only (``cluster: false``), or every live node
of this node's membership view with roles and liveness, the leader and its epoch, and the shard
assignment, this node's own entry carrying its own checks."""

from __future__ import annotations

from orchestrator.api.models import ClusterReport
from orchestrator.cluster import ClusterNode, ClusterStatus, NodeRecord
from orchestrator.cluster.shards import SHARDS
from orchestrator.settings import ClusterSettings
from tests.api.conftest import Api, ApiFactory

SETTINGS = ClusterSettings(enabled=True, lease_ms=3_000, heartbeat_ms=500, renew_margin_ms=500)


class LateView:
    """The API is built before the test's cluster nodes (they share its store)."""

    node: ClusterNode | None = None

    def status(self) -> ClusterStatus:
        assert self.node is not None
        return self.node.status()

    def owned_shards(self, node_id: str) -> frozenset[int]:
        assert self.node is not None
        return self.node.owned_shards(node_id)


def record(node_id: str, *roles: str) -> NodeRecord:
    return NodeRecord(node_id, "0.1.0", roles, f"http://{node_id}:8080", "2024-01-01T00:00:00+00:00")


async def test_without_cluster_mode_it_describes_this_node_only(api: Api) -> None:
    body = await (await api.client.get("/health/cluster")).json()
    assert body["cluster"] is False
    assert body["nodes"] == [body["node"]]
    assert body["leader"] is None
    assert body["assignment"] is None


async def test_in_cluster_mode_every_live_node_the_leader_and_the_shards(make_api: ApiFactory) -> None:
    view = LateView()
    api = await make_api(cluster=view)
    # This node ("node-test", api + engine) and another engine node on the same store.
    here = ClusterNode(api.store, SETTINGS, record("node-test", "api", "engine"), name="t")
    other = ClusterNode(api.store, SETTINGS, record("node-b", "engine"), name="t")
    view.node = here
    for _ in range(2):
        await here.run_once()
        await other.run_once()
    await here.run_once()

    response = await api.client.get("/health/cluster")
    assert response.status == 200
    body = await response.json()
    ClusterReport.model_validate(body)  # the documented shape
    assert body["cluster"] is True
    assert body["leader"]["node_id"] == "node-test"  # the first candidate found no lease
    assert body["leader"]["epoch"] == 0
    assert body["leader"]["lease_ms"] == 3_000
    nodes = {n["node_id"]: n for n in body["nodes"]}
    assert sorted(nodes) == ["node-b", "node-test"]
    me = nodes["node-test"]
    assert me == body["node"]
    assert me["store"]["status"] == "ok"
    assert me["subscription"]["group"] == "orchestrator"
    assert (me["liveness"], me["leader"], me["roles"]) == ("alive", True, ["api", "engine"])
    peer = nodes["node-b"]
    assert (peer["store"], peer["subscription"], peer["timers"]) == (None, None, None)
    assert (peer["liveness"], peer["leader"], peer["address"]) == ("alive", False, "http://node-b:8080")
    assert sorted(me["shards"] + peer["shards"]) == list(range(SHARDS))
    assert len(me["shards"]) == len(peer["shards"]) == SHARDS // 2
    assert body["assignment"]["epoch"] == 0
    assert body["assignment"]["leader"] == "node-test"
    assert body["assignment"]["by_node"] == {"node-b": peer["shards"], "node-test": me["shards"]}
    # Readiness is this node's own: it does not look at the cluster.
    assert (await api.client.get("/health/ready")).status == 200

"""The Grafana dashboard (deploy/grafana/dashboards/) and its provisioning in docker-compose.yml: well
formed, every query valid PromQL (promtool parses it), every metric it names exported by the code, the
brief's metrics all shown, and Grafana, Prometheus and Jaeger wired to one another."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.deploy.exported import metric_names

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "saga-orchestrator.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "datasources.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"

#: Grafana's interval variables, as a Prometheus rule would spell them
_GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _queries() -> list[str]:
    return [target["expr"] for panel in _panels() for target in panel["targets"]]


def _compose_service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][name]
    return service


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Host path (relative to the repository) -> container path, of the service's bind mounts."""
    found = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[source[2:]] = target
    return found


def test_the_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "saga-orchestrator"
    assert dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        taken = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not taken & cells, f"{panel['title']} overlaps another panel"
        cells |= taken
    for panel in _panels():
        assert panel["title"], panel["id"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_every_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's interval variables filled in)."""
    rules = []
    for i, query in enumerate(_queries()):
        for variable, value in _GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, query  # no other variable the check cannot fill
        rules.append({"record": f"dashboard:query_{i}", "expr": query})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_every_metric_the_dashboard_names_is_exported(exported: frozenset[str]) -> None:
    named = {name for query in _queries() for name in metric_names(query)}
    assert named, "no metric found in the dashboard's queries"
    assert named <= exported, sorted(named - exported)


def test_the_briefs_metrics_are_on_the_dashboard() -> None:
    queries = _queries()

    def shown(pattern: str) -> bool:
        return any(re.search(pattern, q) for q in queries)

    assert shown(r"rate\(saga_instances_total\b"), "throughput"
    assert shown(r"\bsaga_instances_active\b"), "active sagas"
    assert shown(r"by \(service, le\) \(rate\(saga_step_duration_seconds_bucket"), "step latency by service"
    assert shown(r"\bsaga_compensation_total\b"), "compensations"
    assert shown(r"by \(reason\) \(rate\(saga_failures_total"), "failures by reason"
    assert shown(r'saga_instances_status\{status=~"dead_lettered\|suspended"\}'), "the DLQ"
    assert shown(r"\bprojection_lag_seconds\b"), "read-model lag"
    # The step-latency panel asks Grafana for the exemplars (the trace of an attempt).
    assert any(t.get("exemplar") for p in _panels() for t in p["targets"] if "step_duration" in t["expr"])


def test_compose_provisions_grafana_with_the_dashboard_and_the_datasources() -> None:
    grafana = _compose_service("grafana")
    mounts = _mounts(grafana)
    assert mounts["deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_at = mounts["deploy/grafana/dashboards"]
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dashboards_at
    home = PurePosixPath(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert str(home.parent) == dashboards_at
    assert (GRAFANA / "dashboards" / home.name).is_file()
    assert set(grafana["depends_on"]) == {"prometheus", "jaeger"}


def test_the_datasources_reach_the_compose_services() -> None:
    sources = {s["uid"]: s for s in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    prometheus, jaeger = sources["prometheus"], sources["jaeger"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    assert "9090:9090" in _compose_service("prometheus")["ports"]
    assert jaeger["type"] == "jaeger"
    assert jaeger["url"] == "http://jaeger:16686"
    assert "16686:16686" in _compose_service("jaeger")["ports"]
    # Every panel queries the provisioned Prometheus; an exemplar's trace_id opens Jaeger.
    for panel in _panels():
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert {t["datasource"]["uid"] for t in panel["targets"]} == {"prometheus"}, panel["title"]
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert destinations == [{"name": "trace_id", "datasourceUid": "jaeger"}]


def test_prometheus_keeps_exemplars() -> None:
    assert "--enable-feature=exemplar-storage" in _compose_service("prometheus")["command"]

"""docker-compose.yml, k8s/ and the Prometheus scrape config: schema-valid offline, and saying what the
design needs (the three roles, the brief's resources, probes on the health endpoints, settings that load).

The validators are dev dependencies (``make install``); nothing is installed or downloaded at test time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.settings import load_settings, load_settings_with_notes

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "k8s"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
ROLES = ("api", "engine", "projector")
#: the brief's resources for the orchestrator's pods
RESOURCES = {"requests": {"memory": "512Mi", "cpu": "250m"}, "limits": {"memory": "1Gi", "cpu": "500m"}}
SERVICES = ("order-service", "inventory-service", "payment-service")


def _tool(name: str) -> str:
    # The venv's own scripts first: `make test` runs the venv's python without activating the venv.
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it is in the dev extra: `make install`)")
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


def _manifests() -> dict[str, list[dict[str, Any]]]:
    """Every Kubernetes manifest in k8s/ (not the kustomization), by file name."""
    return {
        p.name: [d for d in yaml.safe_load_all(p.read_text()) if d]
        for p in sorted(K8S.glob("*.yaml"))
        if p.name != "kustomization.yaml"
    }


def _resources(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for docs in _manifests().values() for d in docs if d["kind"] == kind}


def _role_deployments() -> dict[str, dict[str, Any]]:
    deployments = _resources("Deployment")
    return {role: deployments[f"saga-orchestrator-{role}"] for role in ROLES}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


# --- schema validation, offline -----------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    result = _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_manifest_validates_strictly() -> None:
    files = [str(K8S / name) for name in _manifests()]
    result = _run([_tool("kubernetes-validate"), "--strict", "--kubernetes-version", "1.37.0", *files])
    assert result.returncode == 0, result.stdout + result.stderr
    # kubernetes-validate only warns when it has no schema for a kind: make that a failure here.
    assert "WARN" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == sum(len(d) for d in _manifests().values())


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The validator is not a rubber stamp: a misspelt field fails."""
    deployment = _role_deployments()["api"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    result = _run([_tool("kubernetes-validate"), "--strict", str(bad)])
    assert result.returncode != 0
    assert "paht" in result.stdout + result.stderr


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(_manifests())


# --- Kubernetes: what the design and the brief need ---------------------------------------------------


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


@pytest.mark.parametrize("role", ROLES)
def test_each_role_deployment_runs_its_role_with_probes_and_the_briefs_resources(role: str) -> None:
    deployment = _role_deployments()[role]
    container = _container(deployment)
    assert [*container["command"], *container["args"]] == ["saga-orchestrator", "serve", "--role", role]
    assert container["resources"] == RESOURCES
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert labels["app.kubernetes.io/component"] == role


@pytest.mark.parametrize("role", ROLES)
def test_connection_strings_come_from_the_secret_and_the_config_from_the_configmap(role: str) -> None:
    deployment = _role_deployments()[role]
    container = _container(deployment)
    env = {e["name"]: e for e in container["env"]}
    for name in ("DATABASE_URL", "SAGA_REDIS__URL"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "saga-secrets", name
    # The brief's names (DATABASE_URL from its secret key, CLUSTER_ENABLED), with no native twin to win.
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "database-url"
    assert env["CLUSTER_ENABLED"]["value"] == "true"
    assert "SAGA_EVENT_STORE__URL" not in env
    assert env["SAGA_CONFIG"]["value"] == "/etc/saga/config.yaml"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/etc/saga"]]["configMap"]["name"] == "saga-orchestrator-config"
    assert "emptyDir" in volumes[mounts["/data"]]  # the engine's timer index is derived and rebuildable
    assert not _resources("Secret"), "no Secret is committed; only referenced"


def test_the_configmap_loads_as_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(_resources("ConfigMap")["saga-orchestrator-config"]["data"]["config.yaml"])
    monkeypatch.setenv("SAGA_CONFIG", str(config))
    env = {e["name"]: e for e in _container(_role_deployments()["engine"])["env"]}
    monkeypatch.setenv("CLUSTER_ENABLED", env["CLUSTER_ENABLED"]["value"])
    monkeypatch.setenv("DATABASE_URL", "esdb://admin:changeit@kurrentdb:2113?tls=true")
    monkeypatch.setenv("SAGA_REDIS__URL", "redis://redis:6379/0")
    settings, notes = load_settings_with_notes()
    assert notes == ()  # nothing in the ConfigMap shadows DATABASE_URL
    assert settings.server.port == 8080
    assert settings.server.host == "0.0.0.0"
    assert str(settings.event_store.data_dir) == "/data"
    assert settings.event_store.url.startswith("esdb://")
    assert sorted(settings.services) == sorted(SERVICES)
    assert settings.cluster.enabled
    assert settings.cluster.lease_ms == 5000
    # The grace the engine gives in-flight calls ends before Kubernetes kills the pod.
    for deployment in _role_deployments().values():
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert settings.engine.shutdown_grace_s < grace


def test_the_registry_points_at_the_demo_service() -> None:
    config = yaml.safe_load(_resources("ConfigMap")["saga-orchestrator-config"]["data"]["config.yaml"])
    demo = _resources("Service")["saga-demo"]
    port = demo["spec"]["ports"][0]["port"]
    for service in SERVICES:
        assert config["services"][service]["base_url"] == f"http://saga-demo:{port}/{service}"


def test_the_api_service_selects_the_api_pods() -> None:
    service = _resources("Service")["saga-orchestrator-api"]
    labels = _role_deployments()["api"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for role in ("engine", "projector"):
        other = _role_deployments()[role]["spec"]["template"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= other.items()


def test_api_and_engine_autoscale_and_every_role_has_a_disruption_budget() -> None:
    hpas = _resources("HorizontalPodAutoscaler")
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()}
    assert targets == {"saga-orchestrator-api", "saga-orchestrator-engine"}
    for hpa in hpas.values():
        assert hpa["spec"]["minReplicas"] >= 2
    budgets = _resources("PodDisruptionBudget").values()
    for role, deployment in _role_deployments().items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, role


# --- docker-compose -----------------------------------------------------------------------------------


def test_compose_runs_the_three_roles_from_one_image() -> None:
    services = _compose()["services"]
    for role in ROLES:
        assert services[role]["command"] == ["serve", "--role", role]
        assert services[role]["image"] == "saga-orchestrator:latest"
        assert services[role]["build"] == "."
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["saga-orchestrator"]' in dockerfile
    assert services["demo"]["entrypoint"] == ["python", "-m", "orchestrator.demo"]


@pytest.mark.parametrize("role", ROLES)
def test_compose_environment_loads_as_settings(role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    environment = _compose()["services"][role]["environment"]
    monkeypatch.delenv("SAGA_CONFIG", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings()
    assert settings.event_store.url == "esdb://kurrentdb:2113?Tls=false"
    assert settings.redis.url == "redis://redis:6379/0"
    assert settings.server.host == "0.0.0.0"
    demo = _compose()["services"]["demo"]
    port = demo["command"][demo["command"].index("--port") + 1]
    assert {n: s.base_url for n, s in settings.services.items()} == {
        s: f"http://demo:{port}/{s}" for s in SERVICES
    }
    assert json.loads(environment["SAGA_SERVICES"])  # one JSON value, as design.md §8 says


def test_compose_healthchecks_use_the_health_endpoints() -> None:
    services = _compose()["services"]
    for role in ROLES:
        check = " ".join(services[role]["healthcheck"]["test"])
        assert "/health/live" in check, role
        assert "/health/ready" in check, role
    for dependency in ("kurrentdb", "redis"):
        assert services["api"]["depends_on"][dependency] == {"condition": "service_healthy"}
    assert services["engine"]["depends_on"]["demo"] == {"condition": "service_healthy"}


def test_compose_redis_keeps_its_data_and_never_evicts() -> None:
    command = _compose()["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert _compose()["services"]["redis"]["image"].startswith("redis:7")


def test_compose_has_the_event_store_jaeger_and_prometheus() -> None:
    services = _compose()["services"]
    assert services["kurrentdb"]["image"].startswith(("kurrentplatform/kurrentdb:", "eventstore/eventstore:"))
    assert services["kurrentdb"]["environment"]["KURRENTDB_INSECURE"] == "true"
    assert "COLLECTOR_OTLP_ENABLED" in services["jaeger"]["environment"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    endpoint = services["api"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint.startswith("http://jaeger:")


def test_prometheus_scrapes_every_role() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "saga-orchestrator")
    assert job["metrics_path"] == "/metrics"
    (discovery,) = job["dns_sd_configs"]
    assert sorted(discovery["names"]) == sorted(ROLES)
    assert discovery["port"] == 8080
    compose = _compose()["services"]
    for role in ROLES:
        assert compose[role]["environment"]["SAGA_SERVER__PORT"] == str(discovery["port"])

"""The brief's configuration, as written: its ``config.yaml`` (a byte-for-byte copy in fixtures/) and its
Kubernetes variables read as an alias layer over the native settings; every key mapped, noted or refused
by name; the native settings win with a warning; no error quotes a value."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from orchestrator.__main__ import log_notes
from orchestrator.brief_config import ALIASES, BY_KEY, claims, refusal, resolve
from orchestrator.settings import ConfigError, load_settings, load_settings_with_notes, substitute

HERE = Path(__file__).resolve().parent
BRIEF_CONFIG = HERE / "fixtures" / "brief-config.yaml"
SEED = HERE.parents[2] / "shared" / "brief" / "seed.md"
SECRET = "jwt-SECRET-value-4711"
NOT_BUILT = {a.key for a in ALIASES if a.status == "not built yet" and a.key.startswith("orchestrator.")}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "SAGA_CONFIG",
        "DATABASE_URL",
        "CLUSTER_ENABLED",
        "SAGA_EVENT_STORE__URL",
        "SAGA_REDIS__URL",
        "SAGA_OBSERVABILITY__TRACING__ENABLED",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JWT_SECRET", SECRET)


def _use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    monkeypatch.setenv("SAGA_CONFIG", str(path))


def _refusals(error: ConfigError) -> list[str]:
    head, *lines = str(error).split("\n  ")
    assert head == "the configuration cannot be used as written:"
    return lines


def test_the_fixture_is_the_briefs_file_byte_for_byte() -> None:
    if not SEED.exists():
        missing = f"the brief is not beside the checkout ({SEED})"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)  # CI runs with ../shared beside the clone
        pytest.skip(missing)
    block = re.search(r"```yaml\n(# config\.yaml\n.*?)```", SEED.read_text(), re.S)
    assert block is not None
    assert BRIEF_CONFIG.read_bytes() == block.group(1).encode()


def test_the_briefs_file_verbatim_refuses_each_unbuilt_feature_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAGA_CONFIG", str(BRIEF_CONFIG))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    lines = _refusals(caught.value)
    # Cluster mode is built: only the PostgreSQL event store is refused.
    assert not NOT_BUILT
    assert {line.split(":", 1)[0] for line in lines} == {"orchestrator.persistence.event_store"}
    for line in lines:
        assert line == refusal(BY_KEY[line.split(":", 1)[0]])
    assert SECRET not in str(caught.value)
    assert "localhost:5432" not in str(caught.value)


def test_the_briefs_file_verbatim_maps_every_key() -> None:
    """What each key of the brief's file says, before the refusals stop the start."""
    section = yaml.safe_load(substitute(BRIEF_CONFIG.read_text()))["orchestrator"]
    found, problems = claims(section, {})
    assert problems == []
    said = {c.alias.key: c.value for c in found}
    assert said == {
        "orchestrator.cluster.enabled": True,
        "orchestrator.cluster.nodes": 3,
        "orchestrator.cluster.election_timeout": 5000,
        "orchestrator.persistence.event_store": "postgresql://localhost:5432/events",
        "orchestrator.persistence.state_store": "postgresql://localhost:5432/sagas",
        "orchestrator.persistence.cache": "redis://localhost:6379",
        "orchestrator.monitoring.metrics_enabled": True,
        "orchestrator.monitoring.tracing_enabled": True,
        # Jaeger's Thrift collector, taken as the same host's OTLP/HTTP receiver
        "orchestrator.monitoring.jaeger_endpoint": "http://jaeger:4318",
        "orchestrator.security.jwt_secret": SECRET,
        "orchestrator.security.rbac_enabled": True,
    }
    resolved = resolve(found, {})
    assert resolved.values == {
        "cluster": {"enabled": True, "nodes": 3, "lease_ms": 5000},
        "redis": {"url": "redis://localhost:6379"},
        "observability": {
            "metrics_enabled": True,
            "tracing": {"enabled": True, "endpoint": "http://jaeger:4318"},
        },
        "auth": {"jwt": {"secret": SECRET}, "rbac_enabled": True},
    }
    assert len(resolved.refusals) == len(NOT_BUILT) + 1  # and the PostgreSQL event store
    # state_store, and the Jaeger endpoint taken as OTLP
    assert [n.event for n in resolved.notes] == ["config_alias_not_used", "config_alias_rewritten"]


def test_the_briefs_file_with_a_kurrentdb_event_store_loads_in_cluster_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = BRIEF_CONFIG.read_text()
    for asked, off in (
        ("postgresql://localhost:5432/events", "esdb://localhost:2113?Tls=false"),
        ("tracing_enabled: true", "tracing_enabled: false"),
        ("rbac_enabled: true", "rbac_enabled: false"),
        ("metrics_enabled: true", "metrics_enabled: false"),
    ):
        assert asked in text
        text = text.replace(asked, off)
    _use(tmp_path, monkeypatch, text)
    monkeypatch.setenv("JWT_SECRET", "")
    settings, notes = load_settings_with_notes()
    assert settings.event_store.url == "esdb://localhost:2113?Tls=false"
    assert settings.redis.url == "redis://localhost:6379"
    assert settings.observability.metrics_enabled is False
    assert settings.observability.tracing.enabled is False
    assert settings.observability.tracing.endpoint == "http://jaeger:4318"
    # cluster: {enabled: true, nodes: 3, election_timeout: 5000}
    assert (settings.cluster.enabled, settings.cluster.nodes, settings.cluster.lease_ms) == (True, 3, 5000)
    assert {(n.level, n.message.split(":", 1)[0]) for n in notes} == {
        ("warning", "orchestrator.persistence.state_store"),
        ("info", "orchestrator.monitoring.jaeger_endpoint"),
    }
    state_store = next(n for n in notes if n.level == "warning")
    assert "derived from the event store" in state_store.message
    assert "Redis read models" in state_store.message


# --- one test per refusal message ---------------------------------------------------------------------

REFUSED = [
    (
        "persistence:\n    event_store: postgresql://user:pw-SECRET@db:5432/events",
        "orchestrator.persistence.event_store: asks for the PostgreSQL event store, which is not built yet "
        "(it comes with a PostgreSQL adapter of the event store port); use 'embedded' or a KurrentDB / "
        "EventStoreDB URL (esdb://, kurrentdb://)",
    ),
    (
        "persistence:\n    events: esdb://x:2113",
        "orchestrator.persistence.events: unknown key (orchestrator.persistence has event_store, cache, "
        "state_store)",
    ),
    (
        "tenancy:\n    enabled: true",
        "orchestrator.tenancy: unknown section (the brief has cluster, persistence, monitoring, security)",
    ),
    ("cluster: [1, 2]", "orchestrator.cluster: must be a mapping"),
    (
        "persistence:\n    event_store: mysql://root:pw-SECRET@db/events",
        "orchestrator.persistence.event_store: must be 'embedded' or a KurrentDB / EventStoreDB URL "
        "(esdb://, esdb+discover://, kurrentdb://, kurrentdb+discover://, kdb://, kdb+discover://)",
    ),
    (
        "persistence:\n    cache: http://user:pw-SECRET@cache:6379",
        "orchestrator.persistence.cache: must be a Redis URL (redis://, rediss://, unix://)",
    ),
    ("cluster:\n    enabled: maybe", "orchestrator.cluster.enabled: must be true or false"),
    ("cluster:\n    nodes: 0", "orchestrator.cluster.nodes: must be a whole number of at least 1"),
    (
        "cluster:\n    election_timeout: '5s'",
        "orchestrator.cluster.election_timeout: must be a whole number of at least 1",
    ),
    (
        "monitoring:\n    jaeger_endpoint: jaeger:14268",
        "orchestrator.monitoring.jaeger_endpoint: must be an http:// or https:// URL",
    ),
    ("security:\n    jwt_secret: [pw-SECRET]", "orchestrator.security.jwt_secret: must be a string"),
]


@pytest.mark.parametrize(
    ("section", "message"), REFUSED, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(REFUSED)]
)
def test_each_refusal_names_its_key(
    section: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(tmp_path, monkeypatch, f"orchestrator:\n  {section}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    lines = _refusals(caught.value)
    # A tuning key comes after the switch it tunes, which is refused too.
    assert lines[-1] == message
    assert len(lines) == (2 if "tunes" in message else 1)
    assert "SECRET" not in str(caught.value)


def test_the_top_level_must_be_a_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(tmp_path, monkeypatch, "orchestrator: [cluster]\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert _refusals(caught.value) == [
        "orchestrator: must be a mapping of cluster, persistence, monitoring, security"
    ]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CLUSTER_ENABLED", "sometimes", "CLUSTER_ENABLED: must be true or false"),
        ("DATABASE_URL", "postgresql://u:pw-SECRET@db/events", refusal(BY_KEY["DATABASE_URL"])),
    ],
)
def test_the_briefs_environment_is_refused_by_name(
    variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert _refusals(caught.value) == [message]
    assert message.startswith(f"{variable}: ")
    assert "SECRET" not in str(caught.value)


# --- what is accepted ---------------------------------------------------------------------------------


def test_switches_that_ask_for_nothing_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(
        tmp_path,
        monkeypatch,
        "orchestrator:\n  cluster: {enabled: false}\n  monitoring: {tracing_enabled: false}\n"
        "  security: {rbac_enabled: false, jwt_secret: ''}\n  persistence:\n",
    )
    monkeypatch.setenv("CLUSTER_ENABLED", "false")
    settings, notes = load_settings_with_notes()
    assert settings.event_store.url == "embedded"
    assert settings.observability.metrics_enabled is True
    # CLUSTER_ENABLED and the file's cluster.enabled both say "off": the variable wins, the log says so.
    assert [n.message for n in notes] == [
        "orchestrator.cluster.enabled is not used: CLUSTER_ENABLED also sets cluster.enabled, and it wins"
    ]


def test_cluster_enabled_from_the_briefs_environment_switches_cluster_mode_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLUSTER_ENABLED", "true")
    settings, notes = load_settings_with_notes()
    assert settings.cluster.enabled is True
    assert notes == ()


def test_native_lease_ms_wins_over_the_briefs_election_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(tmp_path, monkeypatch, "orchestrator:\n  cluster: {enabled: true, election_timeout: 5000}\n")
    monkeypatch.setenv("SAGA_CLUSTER__LEASE_MS", "1500")
    monkeypatch.setenv("SAGA_CLUSTER__HEARTBEAT_MS", "250")
    monkeypatch.setenv("SAGA_CLUSTER__RENEW_MARGIN_MS", "300")
    settings, notes = load_settings_with_notes()
    assert (settings.cluster.enabled, settings.cluster.lease_ms) == (True, 1500)
    assert [(n.level, n.message) for n in notes] == [
        (
            "warning",
            "orchestrator.cluster.election_timeout is not used: SAGA_CLUSTER__LEASE_MS also sets "
            "cluster.lease_ms, and the native setting wins",
        )
    ]


def test_the_briefs_kubernetes_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "kurrentdb+discover://admin:changeit@kurrentdb:2113")
    monkeypatch.setenv("CLUSTER_ENABLED", "false")
    settings, notes = load_settings_with_notes()
    assert settings.event_store.url == "kurrentdb+discover://admin:changeit@kurrentdb:2113"
    assert notes == ()


# --- tracing: the brief's monitoring keys ---------------------------------------------------------------


def test_the_briefs_tracing_keys_switch_tracing_on_and_jaeger_becomes_otlp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(
        tmp_path,
        monkeypatch,
        "orchestrator:\n  monitoring:\n    tracing_enabled: true\n"
        "    jaeger_endpoint: http://jaeger:14268/api/traces\n",
    )
    settings, notes = load_settings_with_notes()
    tracing = settings.observability.tracing
    assert (tracing.enabled, tracing.endpoint, tracing.protocol) == (
        True,
        "http://jaeger:4318",
        "http/protobuf",
    )
    assert [(n.level, n.event, n.message) for n in notes] == [
        (
            "info",
            "config_alias_rewritten",
            "orchestrator.monitoring.jaeger_endpoint: Jaeger's 14268 endpoint takes Thrift, which no "
            "maintained Python exporter speaks: spans go over OTLP/HTTP to port 4318 of the same host "
            "instead",
        )
    ]


def test_an_otlp_endpoint_under_the_jaeger_key_is_taken_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(
        tmp_path,
        monkeypatch,
        "orchestrator:\n  monitoring: {tracing_enabled: true, jaeger_endpoint: 'https://collector:4318/'}\n"
        "observability:\n  tracing: {sample_ratio: 0.25}\n",
    )
    settings, notes = load_settings_with_notes()
    # The native section sets another key of the same nested section: both hold.
    assert settings.observability.tracing.endpoint == "https://collector:4318"
    assert settings.observability.tracing.enabled is True
    assert settings.observability.tracing.sample_ratio == 0.25
    assert notes == ()


def test_native_tracing_settings_win_over_the_briefs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(
        tmp_path,
        monkeypatch,
        "orchestrator:\n  monitoring: {tracing_enabled: true, jaeger_endpoint: 'http://jaeger:14268'}\n"
        "observability:\n  tracing: {endpoint: 'http://tempo:4318'}\n",
    )
    monkeypatch.setenv("SAGA_OBSERVABILITY__TRACING__ENABLED", "false")
    settings, notes = load_settings_with_notes()
    assert settings.observability.tracing.enabled is False
    assert settings.observability.tracing.endpoint == "http://tempo:4318"
    path = tmp_path / "config.yaml"
    assert sorted(n.message for n in notes) == [
        "orchestrator.monitoring.jaeger_endpoint is not used: observability.tracing.endpoint (in "
        f"{path}) also sets observability.tracing.endpoint, and the native setting wins",
        "orchestrator.monitoring.tracing_enabled is not used: SAGA_OBSERVABILITY__TRACING__ENABLED also sets "
        "observability.tracing.enabled, and the native setting wins",
    ]


# --- native wins, with a warning naming both ------------------------------------------------------------


def test_a_native_variable_wins_over_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # Overridden, so even a URL this build refuses does not stop the start.
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@db/events")
    monkeypatch.setenv("SAGA_EVENT_STORE__URL", "esdb://kurrentdb:2113?Tls=false")
    settings, notes = load_settings_with_notes()
    assert settings.event_store.url == "esdb://kurrentdb:2113?Tls=false"
    assert [(n.level, n.message) for n in notes] == [
        (
            "warning",
            "DATABASE_URL is not used: SAGA_EVENT_STORE__URL also sets event_store.url, and the native "
            "setting wins",
        )
    ]


def test_native_settings_win_over_the_brief_in_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(
        tmp_path,
        monkeypatch,
        "orchestrator:\n  persistence:\n    cache: redis://brief:6379\n    event_store: esdb://brief:2113\n"
        "redis:\n  url: redis://native:6379\n  prefix: mine\n",
    )
    monkeypatch.setenv("SAGA_EVENT_STORE__URL", "esdb://env:2113")
    settings, notes = load_settings_with_notes()
    assert settings.redis.url == "redis://native:6379"
    assert settings.redis.prefix == "mine"
    assert settings.event_store.url == "esdb://env:2113"
    path = tmp_path / "config.yaml"
    assert sorted(n.message for n in notes) == [
        "orchestrator.persistence.cache is not used: redis.url (in "
        f"{path}) also sets redis.url, and the native setting wins",
        "orchestrator.persistence.event_store is not used: SAGA_EVENT_STORE__URL also sets event_store.url, "
        "and the native setting wins",
    ]


def test_an_alias_fills_what_the_native_section_leaves_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(
        tmp_path,
        monkeypatch,
        "orchestrator:\n  persistence: {cache: 'redis://brief:6379'}\nredis:\n  prefix: mine\n",
    )
    settings, notes = load_settings_with_notes()
    assert (settings.redis.url, settings.redis.prefix) == ("redis://brief:6379", "mine")
    assert notes == ()


def test_an_argument_wins_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(tmp_path, monkeypatch, "orchestrator:\n  monitoring: {metrics_enabled: false}\n")
    settings, notes = load_settings_with_notes(observability={"metrics_enabled": True})
    assert settings.observability.metrics_enabled is True
    assert [n.message for n in notes] == [
        "orchestrator.monitoring.metrics_enabled is not used: observability.metrics_enabled (an argument) "
        "also sets observability.metrics_enabled, and the native setting wins"
    ]


# --- no error quotes a value ----------------------------------------------------------------------------


def test_a_validation_error_names_the_field_not_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(
        tmp_path,
        monkeypatch,
        "services:\n  payment-service:\n    base_url: http://payments:8080\n"
        "    auth: {value: ['Bearer tok-SECRET']}\n"
        "event_store:\n  url: ['esdb://admin:pw-SECRET@kurrentdb:2113']\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings()
    text = str(caught.value)
    assert "SECRET" not in text
    assert text.splitlines() == [
        "invalid settings:",
        "  event_store.url: Input should be a valid string",
        "  services.payment-service.auth.value: Input should be a valid string",
    ]
    # Nor does a traceback: pydantic's own text (which quotes the inputs) is not chained.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_a_yaml_error_names_the_place_not_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(tmp_path, monkeypatch, 'orchestrator:\n  security:\n    jwt_secret: "${JWT_SECRET}" oops: [\n')
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert SECRET not in str(caught.value)
    assert "line 3, column" in str(caught.value)


def test_the_start_up_log_carries_the_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(tmp_path, monkeypatch, "orchestrator:\n  persistence: {state_store: 'postgresql://db/sagas'}\n")
    _, notes = load_settings_with_notes()
    with capture_logs() as logs:
        log_notes(notes)
    assert [(entry["log_level"], entry["event"]) for entry in logs] == [("warning", "config_alias_not_used")]
    assert logs[0]["detail"].startswith("orchestrator.persistence.state_store: saga state is derived")

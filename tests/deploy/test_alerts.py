"""deploy/alerts.yml: valid for promtool, every alert unit-tested (tests/deploy/alerts.test.yml), the
operator's list covered, and every metric a rule names really exported by the code."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.exported import PROMETHEUS_OWN, metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "deploy" / "alerts.test.yml"

#: what an operator must hear about (issue 13), each by the metric that tells it
MUST_ALERT_ON = {
    "dead letters growing": 'saga_failures_total{reason="dead_lettered"}',
    "sagas suspended": 'saga_instances_status{status="suspended"}',
    "a saga not advancing past its deadline": "saga_timer_fire_lag_seconds_bucket",
    "projection lag": "projection_lag_seconds",
    "subscription parked messages": "saga_subscription_parked",
    "the event store unreachable": 'saga_dependency_up{dependency="event_store"}',
    "Redis unreachable": 'saga_dependency_up{dependency="redis"}',
    "step error rate per service": "saga_step_duration_seconds_count",
    "a surge of authentication failures": "saga_auth_denials_total",
}


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def _rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = _run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = _run([promtool, "test", "rules", str(RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_the_unit_tests_fail_on_a_rule_that_never_fires(promtool: str, tmp_path: Path) -> None:
    """The unit tests are not a rubber stamp: a rule that stops firing fails them."""
    loaded = yaml.safe_load(RULES.read_text())
    loaded["groups"][0]["rules"][0]["expr"] = "vector(1) == 0"
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "alerts.yml").write_text(yaml.safe_dump(loaded))
    (tmp_path / "tests" / "deploy").mkdir(parents=True)
    (tmp_path / "tests" / "deploy" / "alerts.test.yml").write_text(RULE_TESTS.read_text())
    result = _run([promtool, "test", "rules", str(tmp_path / "tests" / "deploy" / "alerts.test.yml")])
    assert result.returncode != 0
    assert loaded["groups"][0]["rules"][0]["alert"] in result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_sees_it_fire_and_stay_quiet() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in tests:
        for case in test["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    alerts = {rule["alert"] for rule in _rules()}
    assert firing == alerts
    # An alert with a `for` is also seen pending (not yet firing); the one without it seen resolving.
    assert quiet == alerts


def test_every_rule_is_labelled_and_explained() -> None:
    for rule in _rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize("what", sorted(MUST_ALERT_ON))
def test_the_operators_list_is_covered(what: str) -> None:
    selector = MUST_ALERT_ON[what]
    name, _, matcher = selector.partition("{")
    matching = [
        rule["alert"]
        for rule in _rules()
        if name in metric_names(rule["expr"]) and matcher.rstrip("}") in rule["expr"]
    ]
    assert matching, f"no rule alerts on {what} ({selector})"


def test_the_name_extractor() -> None:
    expr = (
        'sum by (service, le) (rate(a_seconds_bucket{phase="x", b="c d"}[5m] offset 1h))'
        " / ignoring (le) b_total > 0.5 and on () (c or vector(0)) == 0"
        " unless histogram_quantile(0.9, d[$__rate_interval])"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d"}


def test_every_metric_a_rule_names_is_exported(exported: frozenset[str]) -> None:
    named = {name for rule in _rules() for name in metric_names(rule["expr"])}
    assert "saga_step_duration_seconds_count" in named
    assert named - PROMETHEUS_OWN <= exported, sorted(named - PROMETHEUS_OWN - exported)
    # The check is not a rubber stamp: a made-up name is not among the exported.
    assert "saga_made_up_total" not in exported


def test_prometheus_loads_the_rules_as_compose_mounts_them(promtool: str) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["prometheus"]
    mounts = dict(v.split(":")[:2] for v in compose["volumes"] if v.startswith("./"))
    # The rule file sits beside the configuration in the container, as in deploy/.
    assert mounts["./deploy/alerts.yml"] == "/etc/prometheus/alerts.yml"
    assert mounts["./deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    result = _run([promtool, "check", "config", str(ROOT / "deploy" / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr

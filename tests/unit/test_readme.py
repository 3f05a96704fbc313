"""The README's examples and tables are what the code does."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from orchestrator.domain import INTERVENTION_TABLE, classify_http_status, parse_definition
from orchestrator.domain.vocabulary import ManualCommand, OutcomeKind, Phase, SagaStatus
from orchestrator.settings import load_settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _block(lang: str, containing: str) -> str:
    for match in re.finditer(rf"```{lang}\n(.*?)```", README, re.S):
        if containing in match.group(1):
            return match.group(1)
    raise AssertionError(f"no {lang} block with {containing!r}")


def _table(header: str) -> list[list[str]]:
    rows: list[str] = []
    for line in README[README.index(header) :].splitlines():
        if not line.startswith("|"):
            break
        rows.append(line)
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


def test_the_configuration_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_block("yaml", "event_store:"))
    monkeypatch.setenv("SAGA_CONFIG", str(path))
    monkeypatch.setenv("ORDER_SERVICE_URL", "http://orders.internal:8080")
    settings = load_settings()
    assert settings.services["order-service"].base_url == "http://orders.internal:8080"
    assert settings.services["payment-service"].auth is not None
    assert settings.services["payment-service"].auth.value.get_secret_value() == "Bearer dev"
    assert settings.services["payment-service"].outcomes == {"409": "rejected"}
    assert settings.engine.max_in_flight == 1000


def test_the_definition_example_is_the_seed_and_parses() -> None:
    definition = parse_definition(json.loads(_block("json", "order-processing")))
    assert [s.name for s in definition.steps] == ["validate-order", "reserve-inventory", "process-payment"]


def test_the_intervention_table_matches_the_domain() -> None:
    header, *_ = (r for r in README.splitlines() if r.startswith("| status"))
    commands = [ManualCommand(c.strip()) for c in header.strip("|").split("|")[1:]]
    rows = _table("| status ")
    assert {r[0] for r in rows} == {s.value for s in SagaStatus}
    for row in rows:
        status = SagaStatus(row[0])
        for command, cell in zip(commands, row[1:], strict=True):
            expected = INTERVENTION_TABLE[(status, command)]
            assert (cell == "409") == (expected == ()), (status, command)
            if expected:
                assert cell == expected[0], (status, command)


_KINDS = {
    "succeeded (body = output)": OutcomeKind.SUCCEEDED,
    "done": OutcomeKind.SUCCEEDED,
    "done (no effect)": OutcomeKind.SUCCEEDED,
    "misconfigured": OutcomeKind.MISCONFIGURED,
    "rejected": OutcomeKind.REJECTED,
    "cannot compensate": OutcomeKind.REJECTED,
    "transient": OutcomeKind.TRANSIENT,
}


def test_the_outcome_table_matches_the_domain() -> None:
    for answer, action, compensation in _table("| answer "):
        statuses = [int(s) for s in re.findall(r"\b\d{3}\b", answer)]
        if "5xx" in answer:
            statuses += [500, 503]
        if "3xx" in answer:
            statuses += [302, 307]
        if "2xx" in answer:
            statuses += [200, 201, 204]
        if "any other 4xx" in answer:
            statuses += [418, 451]
        assert statuses, answer
        for status in statuses:
            assert classify_http_status(status, Phase.ACTION) is _KINDS[action], (status, "action")
            assert classify_http_status(status, Phase.COMPENSATION) is _KINDS[compensation], status


def test_the_production_environment_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    block = _block("bash", "SAGA_EVENT_STORE__URL")
    for line in block.splitlines():
        if line.startswith("export "):
            name, _, value = shlex.split(line.removeprefix("export "), comments=True)[0].partition("=")
            monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.event_store.url.startswith("esdb://")
    assert settings.redis.url == "redis://redis:6379/0"
    assert settings.demo.enabled == "off"
    assert sorted(settings.services) == ["inventory-service", "order-service", "payment-service"]


def test_the_brief_key_table_is_the_alias_table() -> None:
    from orchestrator.brief_config import ALIASES

    rows = _table("| brief key ")
    assert [
        (key.strip("`"), setting.strip("`"), status, effect) for key, setting, status, effect in rows
    ] == [(a.key, a.setting if a.setting != "-" else "—", a.status, a.effect) for a in ALIASES]


def test_the_briefs_file_stops_as_the_readme_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.settings import ConfigError

    fixture = Path(__file__).resolve().parent / "fixtures" / "brief-config.yaml"
    monkeypatch.setenv("SAGA_CONFIG", str(fixture))
    monkeypatch.setenv("JWT_SECRET", "not-shown")
    for name in ("DATABASE_URL", "CLUSTER_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert _block("text", "configuration error:") == f"configuration error: {caught.value}\n"


def _leaves(
    parser: argparse.ArgumentParser, help_text: str = ""
) -> list[tuple[argparse.ArgumentParser, str]]:
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        return [(parser, help_text)]
    helps = {action.dest: action.help or "" for action in subparsers[0]._choices_actions}
    return [leaf for name, sub in subparsers[0].choices.items() for leaf in _leaves(sub, helps[name])]


def test_the_cli_table_is_what_help_says() -> None:
    """Each command's synopsis, summary and "works on" are its `--help`'s usage, help and description."""
    from orchestrator.__main__ import parser

    expected = []
    for leaf, help_text in _leaves(parser()):
        leaf.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=1000)
        usage = leaf.format_usage().strip().removeprefix("usage: ").replace(" [-h]", "")
        assert leaf.description is not None
        expected.append((usage, help_text, leaf.description.removeprefix("works on: ")))
    assert len(expected) == 17
    assert [(c.strip("`"), h, w) for c, h, w in _table("| command ")] == expected

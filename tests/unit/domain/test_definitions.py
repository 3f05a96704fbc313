"""Definitions: the seed verbatim, defaults, canonical form and hash, and every validation message."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.domain import (
    DefinitionError,
    RetryPolicy,
    canonical_dict,
    canonical_json,
    definition_hash,
    latest_version,
    parse_definition,
    same_content,
    semver_key,
)
from tests.unit.domain.support import SEED_JSON, P, R, V, definition, seed, step


def problems(raw: Any) -> tuple[str, ...]:
    with pytest.raises(DefinitionError) as info:
        parse_definition(raw)
    return info.value.problems


def test_seed_definition_is_accepted_verbatim() -> None:
    d = seed()
    assert (d.name, d.version, d.timeout_ms) == ("order-processing", "1.0.0", None)
    assert [(s.name, s.service, s.action, s.compensation, s.timeout_ms, s.retries) for s in d.steps] == [
        (V, "order-service", "validate", "cancel-validation", 30000, 3),
        (R, "inventory-service", "reserve", "release-reservation", 15000, 2),
        (P, "payment-service", "charge", "refund", 45000, 1),
    ]
    # No depends_on anywhere: sequential; every step compensatable with the default policy.
    assert [s.depends_on for s in d.steps] == [(), (V,), (R,)]
    assert {s.kind for s in d.steps} == {"compensatable"}
    assert d.steps[0].retry == RetryPolicy()
    assert d.ancestors(P) == {V, R}
    assert d.descendants(V) == {R, P}


def test_seed_parses_from_text_bytes_and_object_alike() -> None:
    assert parse_definition(SEED_JSON.encode()) == seed() == parse_definition(json.loads(SEED_JSON))


def test_canonical_form_is_sorted_resolved_and_a_fixed_point() -> None:
    d = seed()
    text = canonical_json(d)
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")).encode()
    assert parse_definition(text) == d
    assert canonical_json(parse_definition(text)) == text
    assert canonical_dict(d)["steps"][1]["depends_on"] == [V]


def test_hash_pins_content_and_ignores_spelling_of_defaults() -> None:
    explicit = json.loads(SEED_JSON)
    explicit["steps"][0]["kind"] = "compensatable"
    explicit["steps"][1]["depends_on"] = [V]
    explicit["steps"][2]["depends_on"] = [R]
    explicit["steps"][0]["depends_on"] = []
    assert definition_hash(parse_definition(explicit)) == definition_hash(seed())
    changed = json.loads(SEED_JSON)
    changed["steps"][2]["retries"] = 2
    assert definition_hash(parse_definition(changed)) != definition_hash(seed())
    assert len(definition_hash(seed())) == 64


def test_same_content_decides_no_op_versus_conflict() -> None:
    stored = canonical_json(seed())
    assert same_content(stored, parse_definition(SEED_JSON))
    changed = json.loads(SEED_JSON)
    changed["steps"][0]["timeout"] = 1
    assert not same_content(stored, parse_definition(changed))


def test_depends_on_builds_a_parallel_dag() -> None:
    d = definition(
        step("a"), step("b", depends_on=["a"]), step("c", depends_on=["a"]), step("d", depends_on=["b", "c"])
    )
    assert d.step("a").depends_on == ()
    assert d.descendants("a") == {"b", "c", "d"}
    assert d.ancestors("d") == {"a", "b", "c"}
    assert d.descendants("b") == {"d"}


def test_explicit_depends_on_on_one_step_makes_the_others_roots() -> None:
    d = definition(step("a"), step("b"), step("c", depends_on=["a"]))
    assert [s.depends_on for s in d.steps] == [(), (), ("a",)]


def test_retry_policy_and_saga_timeout() -> None:
    d = definition(
        step("a", retry={"initial_interval": 10, "multiplier": 3, "max_interval": 100, "jitter": 0}),
        step("b"),
        timeout=60000,
        retry={"initial_interval": 50},
    )
    assert d.timeout_ms == 60000
    assert d.step("a").retry == RetryPolicy(10, 3.0, 100, 0.0)
    assert d.step("b").retry == RetryPolicy(50, 2.0, 60000, 0.2)


def test_pivot_saga_is_accepted() -> None:
    d = definition(
        step("a"),
        step("b", depends_on=["a"]),
        step("p", kind="pivot", compensation=None, depends_on=["b"]),
        step("x", kind="retriable", compensation=None, depends_on=["p"]),
        step("y", kind="retriable", compensation=None, depends_on=["p"]),
    )
    assert d.pivot is not None
    assert d.pivot.name == "p"
    assert d.services == {"svc"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("{nope", "definition is not valid JSON: "),
        ("[]", "definition must be a JSON object"),
        ({"version": "1.0.0", "steps": [step("a")]}, "definition: field 'name' is required"),
        ({"name": "d", "version": "1.0", "steps": [step("a")]}, "'1.0' is not a semantic version"),
        (
            {"name": "d", "version": "1.0.0", "steps": []},
            "definition: field 'steps': List should have at least 1",
        ),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a")], "owner": "x"},
            "definition: unknown field 'owner'",
        ),
        ({"name": "d", "version": "1.0.0", "steps": [step("a", foo=1)]}, "step 'a': unknown field 'foo'"),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a", timeout=0)]},
            "step 'a': field 'timeout': Input should be greater than 0",
        ),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a", timeout="30")]},
            "step 'a': field 'timeout': Input should be a valid integer",
        ),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a", retries=-1)]},
            "step 'a': field 'retries': Input should be greater than or equal to 0",
        ),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a", kind="saga")]},
            "step 'a': field 'kind': Input should be 'compensatable', 'pivot' or 'retriable'",
        ),
        (
            {"name": "d", "version": "1.0.0", "steps": [{"service": "s", "action": "a"}]},
            "steps[0]: field 'name' is required",
        ),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a/b")]},
            "step 'a/b': field 'name': String should match pattern",
        ),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a", retry={"jitter": 2})]},
            "step 'a': field 'retry.jitter': Input should be less than or equal to 1",
        ),
        (
            {
                "name": "d",
                "version": "1.0.0",
                "steps": [step("a", retry={"initial_interval": 10, "max_interval": 5})],
            },
            "step 'a': retry.max_interval must be >= retry.initial_interval",
        ),
        ({"name": "d", "version": "1.0.0", "steps": [step("a"), step("a")]}, "duplicate step name 'a'"),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a", depends_on=["zz"])]},
            "step 'a': depends_on names unknown step 'zz'",
        ),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a", depends_on=["a"])]},
            "step 'a': depends_on names the step itself",
        ),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a"), step("b", depends_on=["a", "a"])]},
            "step 'b': depends_on lists 'a' more than once",
        ),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a", compensation=None)]},
            "step 'a': a compensatable step needs 'compensation'",
        ),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a", kind="pivot")]},
            "step 'a': a pivot has no compensation",
        ),
        (
            {
                "name": "d",
                "version": "1.0.0",
                "steps": [step("p", kind="pivot", compensation=None), step("a", kind="retriable")],
            },
            "step 'a': a retriable step is never compensated; remove 'compensation'",
        ),
        (
            {"name": "d", "version": "1.0.0", "steps": [step("a", kind="retriable", compensation=None)]},
            "step 'a': a retriable step must come after a pivot (this saga has none)",
        ),
    ],
)
def test_each_problem_has_a_precise_message(raw: Any, expected: str) -> None:
    found = problems(raw)
    assert any(p.startswith(expected) or expected in p for p in found), found


@pytest.mark.parametrize(
    ("field", "feature"),
    [
        ("input", "input mapping"),
        ("output", "output mapping"),
        ("when", "conditions"),
        ("callback", "callbacks"),
        ("breaker", "circuit breakers"),
        ("saga", "sub-sagas"),
        ("child", "sub-sagas"),
    ],
)
def test_features_not_built_yet_are_rejected_by_name(field: str, feature: str) -> None:
    raw = {"name": "d", "version": "1.0.0", "steps": [step("x", **{field: {"a": 1}})]}
    assert problems(raw) == (f"step 'x': field '{field}' ({feature}) is not supported yet",)


def test_every_problem_is_reported_at_once() -> None:
    raw = {"name": "d", "version": "x", "steps": [step("a", when="y", timeout=-1)]}
    found = problems(raw)
    assert len(found) == 3, found


def test_cycle_is_named_in_dependency_order() -> None:
    raw = {
        "name": "d",
        "version": "1.0.0",
        "steps": [step("a", depends_on=["c"]), step("b", depends_on=["a"]), step("c", depends_on=["b"])],
    }
    assert problems(raw) == ("dependency cycle: a -> c -> b -> a (each step depends on the next)",)


def test_at_most_one_pivot() -> None:
    raw = {
        "name": "d",
        "version": "1.0.0",
        "steps": [step("p", kind="pivot", compensation=None), step("q", kind="pivot", compensation=None)],
    }
    assert "at most one pivot per saga; found 'p', 'q'" in problems(raw)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            [step("p", kind="pivot", compensation=None), step("a", depends_on=["p"])],
            "step 'a' runs after the pivot 'p' and must be retriable",
        ),
        (
            [
                step("a", kind="retriable", compensation=None),
                step("p", kind="pivot", compensation=None, depends_on=["a"]),
            ],
            "step 'a' runs before the pivot 'p' and must be compensatable",
        ),
        (
            [step("p", kind="pivot", compensation=None), step("a", depends_on=[])],
            "step 'a' is neither an ancestor nor a descendant of the pivot 'p'",
        ),
    ],
)
def test_pivot_rules(steps: list[dict[str, Any]], expected: str) -> None:
    assert expected in problems({"name": "d", "version": "1.0.0", "steps": steps})


def test_semantic_version_ordering_and_latest() -> None:
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.2.0",
        "1.10.0",
        "2.0.0",
    ]
    assert sorted(reversed(ordered), key=semver_key) == ordered
    assert latest_version(["1.10.0", "1.9.0", "2.0.0-rc.1"]) == "1.10.0"
    assert latest_version(["2.0.0-rc.1", "2.0.0-rc.2"]) == "2.0.0-rc.2"
    assert latest_version([]) is None
    with pytest.raises(ValueError, match="not a semantic version"):
        semver_key("1.0")

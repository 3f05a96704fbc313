"""Saga definitions: parse and validate the registration JSON, resolve defaults, canonical form and hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from orchestrator.domain.errors import DefinitionError, Issue
from orchestrator.domain.timing import RetryPolicy
from orchestrator.domain.versions import is_semver

StepKind = Literal["compensatable", "pivot", "retriable"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MAX_TIMEOUT_MS = 7 * 24 * 3_600_000
MAX_INTERVAL_MS = 24 * 3_600_000

# Later issues add these; naming them turns a silent "unknown field" into "not supported yet".
UNSUPPORTED_STEP_FIELDS: Mapping[str, str] = {
    "input": "input mapping",
    "output": "output mapping",
    "when": "conditions",
    "callback": "callbacks",
    "breaker": "circuit breakers",
    "saga": "sub-sagas",
    "child": "sub-sagas",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RetryPolicyInput(_Strict):
    initial_interval: int = Field(1_000, gt=0, le=MAX_INTERVAL_MS)
    multiplier: float = Field(2.0, ge=1.0, le=10.0)
    max_interval: int = Field(60_000, gt=0, le=MAX_INTERVAL_MS)
    jitter: float = Field(0.2, ge=0.0, le=1.0)


class StepInput(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    service: str = Field(pattern=NAME_PATTERN)
    action: str = Field(pattern=NAME_PATTERN)
    compensation: str | None = Field(None, pattern=NAME_PATTERN)
    timeout: int = Field(30_000, gt=0, le=MAX_TIMEOUT_MS)
    retries: int = Field(0, ge=0, le=100)
    kind: StepKind = "compensatable"
    depends_on: list[str] | None = Field(None, max_length=100)
    retry: RetryPolicyInput | None = None
    compensation_retries: int = Field(10, ge=0, le=1_000)


class SagaInput(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    version: str
    steps: list[StepInput] = Field(min_length=1, max_length=100)
    timeout: int | None = Field(None, gt=0, le=MAX_TIMEOUT_MS)
    retry: RetryPolicyInput | None = None

    @field_validator("version")
    @classmethod
    def _semantic_version(cls, value: str) -> str:
        if not is_semver(value):
            raise PydanticCustomError(
                "semver", "'{version}' is not a semantic version (MAJOR.MINOR.PATCH)", {"version": value}
            )
        return value


@dataclass(frozen=True, slots=True)
class StepSpec:
    name: str
    service: str
    action: str
    compensation: str | None
    timeout_ms: int
    retries: int
    kind: StepKind
    depends_on: tuple[str, ...]
    retry: RetryPolicy
    compensation_retries: int


@dataclass(frozen=True)
class SagaDefinition:
    """A validated definition with every default resolved; build it with ``parse_definition``."""

    name: str
    version: str
    steps: tuple[StepSpec, ...]
    timeout_ms: int | None
    retry: RetryPolicy
    _by_name: dict[str, StepSpec] = field(init=False, repr=False, compare=False)
    _descendants: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    _ancestors: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {s.name: s for s in self.steps}
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(
            self, "_ancestors", {s.name: _closure(s.name, _parents(self.steps)) for s in self.steps}
        )
        object.__setattr__(
            self, "_descendants", {s.name: _closure(s.name, _children(self.steps)) for s in self.steps}
        )

    def step(self, name: str) -> StepSpec:
        return self._by_name[name]

    def has_step(self, name: str) -> bool:
        return name in self._by_name

    def ancestors(self, name: str) -> frozenset[str]:
        """Every step ``name`` depends on, transitively."""
        return self._ancestors[name]

    def descendants(self, name: str) -> frozenset[str]:
        """Every step that depends on ``name``, transitively."""
        return self._descendants[name]

    @property
    def pivot(self) -> StepSpec | None:
        return next((s for s in self.steps if s.kind == "pivot"), None)

    @property
    def services(self) -> frozenset[str]:
        """For the registry check (an unknown service is rejected by whoever knows the registry)."""
        return frozenset(s.service for s in self.steps)


def _parents(steps: tuple[StepSpec, ...]) -> dict[str, tuple[str, ...]]:
    return {s.name: s.depends_on for s in steps}


def _children(steps: tuple[StepSpec, ...]) -> dict[str, tuple[str, ...]]:
    children: dict[str, list[str]] = {s.name: [] for s in steps}
    for s in steps:
        for parent in s.depends_on:
            children[parent].append(s.name)
    return {k: tuple(v) for k, v in children.items()}


def _closure(start: str, edges: Mapping[str, tuple[str, ...]]) -> frozenset[str]:
    seen: set[str] = set()
    todo = list(edges.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return frozenset(seen)


# --- parsing -------------------------------------------------------------------------------------------


def parse_definition(raw: str | bytes | Mapping[str, Any]) -> SagaDefinition:
    """Validate a definition (JSON text or a decoded object); ``DefinitionError`` lists every problem."""
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise DefinitionError([Issue("", f"definition is not valid JSON: {e}")]) from e
    if not isinstance(raw, Mapping):
        raise DefinitionError([Issue("", "definition must be a JSON object")])
    data = dict(raw)
    problems = _unsupported_features(data)
    try:
        parsed = SagaInput.model_validate(data)
    except ValidationError as e:
        problems.extend(_describe(error, data) for error in e.errors(include_url=False))
        raise DefinitionError(problems) from e
    if problems:
        raise DefinitionError(problems)
    return _resolve(parsed)


#: hash -> (the canonical definition as stored, its parsed form). Parsing is a pure function of the
#: definition, so remembering results changes no decision; it saves a validation per saga start and fold.
_PINNED: dict[str, tuple[Mapping[str, Any], SagaDefinition]] = {}
_PINNED_LIMIT = 256


def parse_pinned(definition: Mapping[str, Any], expected_hash: str) -> SagaDefinition:
    """Parse a definition stored with its hash (``SagaStarted``, the definition stream); raise
    ``DefinitionError`` when it is invalid or does not hash to ``expected_hash``."""
    hit = _PINNED.get(expected_hash)
    if hit is not None and hit[0] == definition:
        return hit[1]
    parsed = parse_definition(definition)
    if definition_hash(parsed) != expected_hash:
        raise DefinitionError([Issue("", "the definition does not match its pinned hash")])
    if len(_PINNED) >= _PINNED_LIMIT:
        _PINNED.pop(next(iter(_PINNED)))
    _PINNED[expected_hash] = (definition, parsed)
    return parsed


def _unsupported_features(data: dict[str, Any]) -> list[Issue]:
    """Report (and strip, so the remaining checks still run) fields of features not built yet."""
    problems: list[Issue] = []
    steps = data.get("steps")
    if not isinstance(steps, list):
        return problems
    cleaned: list[Any] = []
    for index, step in enumerate(steps):
        if isinstance(step, Mapping):
            label = _step_label(step, index)
            for key, feature in UNSUPPORTED_STEP_FIELDS.items():
                if key in step:
                    problems.append(
                        Issue(
                            f"steps[{index}].{key}",
                            f"{label}: field '{key}' ({feature}) is not supported yet",
                        )
                    )
            step = {k: v for k, v in step.items() if k not in UNSUPPORTED_STEP_FIELDS}
        cleaned.append(step)
    data["steps"] = cleaned
    return problems


def _step_label(step: Mapping[str, Any], index: int) -> str:
    name = step.get("name")
    return f"step {name!r}" if isinstance(name, str) else f"steps[{index}]"


def _describe(error: ErrorDetails, data: Mapping[str, Any]) -> Issue:
    loc = list(error["loc"])
    prefix, base = "definition", ""
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        steps = data.get("steps")
        step = steps[loc[1]] if isinstance(steps, list) and loc[1] < len(steps) else None
        prefix = _step_label(step, loc[1]) if isinstance(step, Mapping) else f"steps[{loc[1]}]"
        base = f"steps[{loc[1]}]"
        loc = loc[2:]
    path = ".".join(str(part) for part in loc)
    where = ".".join(p for p in (base, path) if p)
    if not path:
        return Issue(where, f"{prefix}: {error['msg']}")
    if error["type"] == "extra_forbidden":
        return Issue(where, f"{prefix}: unknown field '{path}'")
    if error["type"] == "missing":
        return Issue(where, f"{prefix}: field '{path}' is required")
    return Issue(where, f"{prefix}: field '{path}': {error['msg']}")


def _policy(value: RetryPolicyInput | None, default: RetryPolicy) -> RetryPolicy:
    if value is None:
        return default
    return RetryPolicy(value.initial_interval, value.multiplier, value.max_interval, value.jitter)


def _resolve(parsed: SagaInput) -> SagaDefinition:
    problems: list[Issue] = []
    saga_retry = _policy(parsed.retry, RetryPolicy())
    for path, label, policy in [
        ("retry", "definition", parsed.retry),
        *((f"steps[{i}].retry", f"step {s.name!r}", s.retry) for i, s in enumerate(parsed.steps)),
    ]:
        if policy is not None and policy.max_interval < policy.initial_interval:
            problems.append(
                Issue(
                    f"{path}.max_interval", f"{label}: retry.max_interval must be >= retry.initial_interval"
                )
            )

    names = [s.name for s in parsed.steps]
    for name in sorted({n for n in names if names.count(n) > 1}):
        second = [i for i, n in enumerate(names) if n == name][1]
        problems.append(Issue(f"steps[{second}].name", f"duplicate step name {name!r}"))
    known = set(names)
    sequential = all(s.depends_on is None for s in parsed.steps)
    steps: list[StepSpec] = []
    for index, s in enumerate(parsed.steps):
        if sequential:
            deps: tuple[str, ...] = (names[index - 1],) if index else ()
        else:
            deps = tuple(s.depends_on or ())
        where = f"steps[{index}].depends_on"
        for dep in sorted({d for d in deps if deps.count(d) > 1}):
            problems.append(Issue(where, f"step {s.name!r}: depends_on lists {dep!r} more than once"))
        for dep in deps:
            if dep == s.name:
                problems.append(Issue(where, f"step {s.name!r}: depends_on names the step itself"))
            elif dep not in known:
                problems.append(Issue(where, f"step {s.name!r}: depends_on names unknown step {dep!r}"))
        steps.append(
            StepSpec(
                name=s.name,
                service=s.service,
                action=s.action,
                compensation=s.compensation,
                timeout_ms=s.timeout,
                retries=s.retries,
                kind=s.kind,
                depends_on=tuple(dict.fromkeys(deps)),
                retry=_policy(s.retry, saga_retry),
                compensation_retries=s.compensation_retries,
            )
        )
    problems.extend(_kind_problems(steps))
    if problems:
        raise DefinitionError(problems)
    cycle = _find_cycle(steps)
    if cycle:
        message = f"dependency cycle: {' -> '.join(cycle)} (each step depends on the next)"
        raise DefinitionError([Issue("steps", message)])
    definition = SagaDefinition(parsed.name, parsed.version, tuple(steps), parsed.timeout, saga_retry)
    problems.extend(_pivot_problems(definition))
    if problems:
        raise DefinitionError(problems)
    return definition


def _kind_problems(steps: list[StepSpec]) -> list[Issue]:
    problems: list[Issue] = []
    for i, s in enumerate(steps):
        where = f"steps[{i}].compensation"
        if s.kind == "compensatable" and s.compensation is None:
            problems.append(
                Issue(
                    where,
                    f"step {s.name!r}: a compensatable step needs 'compensation' "
                    "(a step that cannot be undone is the pivot or comes after it as 'retriable')",
                )
            )
        elif s.kind == "pivot" and s.compensation is not None:
            problems.append(Issue(where, f"step {s.name!r}: a pivot has no compensation"))
        elif s.kind == "retriable" and s.compensation is not None:
            problems.append(
                Issue(where, f"step {s.name!r}: a retriable step is never compensated; remove 'compensation'")
            )
    pivots = [s.name for s in steps if s.kind == "pivot"]
    if len(pivots) > 1:
        problems.append(
            Issue("steps", f"at most one pivot per saga; found {', '.join(repr(p) for p in pivots)}")
        )
    return problems


def _find_cycle(steps: list[StepSpec]) -> list[str] | None:
    parents = {s.name: [d for d in s.depends_on if d != s.name] for s in steps}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for parent in parents.get(node, []):
            if state.get(parent) == 1:
                return [*path[path.index(parent) :], parent]
            if parent in parents and parent not in state:
                found = visit(parent)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for s in steps:
        if s.name not in state:
            found = visit(s.name)
            if found:
                return found
    return None


def _pivot_problems(definition: SagaDefinition) -> list[Issue]:
    pivot = definition.pivot
    if pivot is None:
        return [
            Issue(
                f"steps[{i}].kind",
                f"step {s.name!r}: a retriable step must come after a pivot (this saga has none)",
            )
            for i, s in enumerate(definition.steps)
            if s.kind == "retriable"
        ]
    problems: list[Issue] = []
    before = definition.ancestors(pivot.name)
    after = definition.descendants(pivot.name)
    for i, s in enumerate(definition.steps):
        where = f"steps[{i}].kind"
        if s.name == pivot.name:
            continue
        if s.name in before and s.kind != "compensatable":
            problems.append(
                Issue(
                    where, f"step {s.name!r} runs before the pivot {pivot.name!r} and must be compensatable"
                )
            )
        elif s.name in after and s.kind != "retriable":
            problems.append(
                Issue(where, f"step {s.name!r} runs after the pivot {pivot.name!r} and must be retriable")
            )
        elif s.name not in before and s.name not in after:
            problems.append(
                Issue(
                    where,
                    f"step {s.name!r} is neither an ancestor nor a descendant of the pivot {pivot.name!r}",
                )
            )
    return problems


# --- canonical form ------------------------------------------------------------------------------------


def _policy_json(policy: RetryPolicy) -> dict[str, Any]:
    return {
        "initial_interval": policy.initial_interval_ms,
        "multiplier": policy.multiplier,
        "max_interval": policy.max_interval_ms,
        "jitter": policy.jitter,
    }


def canonical_dict(definition: SagaDefinition) -> dict[str, Any]:
    """The definition with every default spelled out; parsing it gives back an equal definition."""
    return {
        "name": definition.name,
        "version": definition.version,
        "timeout": definition.timeout_ms,
        "retry": _policy_json(definition.retry),
        "steps": [
            {
                "name": s.name,
                "service": s.service,
                "action": s.action,
                "compensation": s.compensation,
                "timeout": s.timeout_ms,
                "retries": s.retries,
                "kind": s.kind,
                "depends_on": list(s.depends_on),
                "retry": _policy_json(s.retry),
                "compensation_retries": s.compensation_retries,
            }
            for s in definition.steps
        ],
    }


def canonical_json(definition: SagaDefinition) -> bytes:
    return json.dumps(
        canonical_dict(definition), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def definition_hash(definition: SagaDefinition) -> str:
    """sha256 of the canonical JSON; pinned in ``SagaStarted`` so a replay can verify what ran."""
    return hashlib.sha256(canonical_json(definition)).hexdigest()


def same_content(stored_canonical: bytes, candidate: SagaDefinition) -> bool:
    """Registration under an existing (tenant, name, version): True means no-op, False means 409."""
    return stored_canonical == canonical_json(candidate)

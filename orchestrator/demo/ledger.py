"""What the participant contract asks a service to remember per idempotency key (design.md §0.9): the
first request body, the answer given, whether a call is in flight, and tombstones for actions that were
compensated before they arrived. Pure bookkeeping: no IO, no clock."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

PROBLEM_BASE = "https://saga-orchestrator.invalid/demo/problems/"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    retry_after: int | None = None
    #: definitive answers are kept and replayed for the key; "try later" and "misconfigured" are not,
    #: because the same key must be able to succeed once the cause is gone
    record: bool = True

    def json(self) -> Any:
        return json.loads(self.body)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def ok(payload: dict[str, Any], status: int = 200) -> Answer:
    return Answer(status, _dumps(payload))


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    record: bool = True,
    retry_after: int | None = None,
    **extra: Any,
) -> Answer:
    """An RFC 9457 ``application/problem+json`` answer."""
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail, **extra}
    return Answer(status, _dumps(body), "application/problem+json", retry_after, record)


def _differences(old: Any, new: Any, path: str, out: list[str], limit: int = 20) -> None:
    if len(out) >= limit:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            _differences(old.get(key, _MISSING), new.get(key, _MISSING), f"{path}.{key}", out, limit)
    elif old != new or type(old) is not type(new):
        out.append(path.lstrip(".") or "(body)")


_MISSING = object()


def body_mismatch(first: bytes, again: bytes) -> list[str]:
    """The JSON paths where ``again`` differs from ``first``; "(body)" when they differ only in bytes."""
    try:
        old, new = json.loads(first), json.loads(again)
    except ValueError:
        return ["(body)"]
    out: list[str] = []
    _differences(old, new, "", out)
    return out or ["(body)"]


@dataclass
class Ledger:
    """One service's idempotency records. Oldest keys are forgotten past ``max_keys`` (it is a demo kept
    in memory; a real participant keeps its records at least as long as a saga can retry)."""

    max_keys: int
    bodies: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    answers: dict[str, Answer] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    #: action key -> the key of the compensation that arrived first
    tombstones: OrderedDict[str, str] = field(default_factory=OrderedDict)
    #: "try later" answers given per key (the flaky switch counts them)
    transient: Counter[str] = field(default_factory=Counter)

    def check_body(self, key: str, body: bytes) -> Answer | None:
        """None when ``body`` is the first body seen under ``key`` or identical to it; else a 422."""
        first = self.bodies.get(key)
        if first is None:
            self.bodies[key] = body
            self._forget_oldest()
            return None
        if first == body:
            return None
        fields = body_mismatch(first, body)
        return problem(
            422,
            "idempotency-key-reused",
            "Idempotency key reused with a different request body",
            f"the body sent under Idempotency-Key {key} differs from the first one at: {', '.join(fields)}",
            record=False,
            idempotency_key=key,
            mismatched_fields=fields,
            first_body_sha256=hashlib.sha256(first).hexdigest(),
            body_sha256=hashlib.sha256(body).hexdigest(),
        )

    def record(self, key: str, answer: Answer) -> None:
        self.answers[key] = answer

    def tombstone(self, action_key: str, compensation_key: str) -> None:
        self.tombstones.setdefault(action_key, compensation_key)
        while len(self.tombstones) > self.max_keys:
            self.tombstones.popitem(last=False)

    def _forget_oldest(self) -> None:
        while len(self.bodies) > self.max_keys:
            key, _ = self.bodies.popitem(last=False)
            self.answers.pop(key, None)
            self.transient.pop(key, None)

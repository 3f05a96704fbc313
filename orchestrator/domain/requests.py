"""What a participant receives: idempotency keys and byte-identical request bodies with their hashes."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

from orchestrator.domain.vocabulary import Phase

_KEY_NAMESPACE = uuid.UUID("1b0e6f5e-5d0c-5f4b-8b8e-6c2f3f5a9d10")


def canonical_bytes(value: Any) -> bytes:
    """Sorted keys, no whitespace: the same value always gives the same bytes (and the same hash)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def idempotency_key(tenant: str, saga_id: str, step: str, phase: Phase, generation: int) -> str:
    """Stable across attempts; only a manual ``retry`` (a new generation) gives the participant a new key."""
    return str(
        uuid.uuid5(_KEY_NAMESPACE, f"{tenant}\x1f{saga_id}\x1f{step}\x1f{phase.value}\x1f{generation}")
    )


def action_body(saga_id: str, step: str, step_input: Any) -> bytes:
    return canonical_bytes({"saga_id": saga_id, "step": step, "input": step_input})


def compensation_body(saga_id: str, step: str, step_input: Any, action_keys: Sequence[str]) -> bytes:
    """The action keys let the participant find what to undo, or leave a tombstone for a key that never
    arrived. ``action_idempotency_keys`` names every generation that may have taken effect (oldest first);
    ``action_idempotency_key`` is the newest of them, for participants that know only one key."""
    return canonical_bytes(
        {
            "saga_id": saga_id,
            "step": step,
            "input": step_input,
            "action_idempotency_key": action_keys[-1],
            "action_idempotency_keys": list(action_keys),
        }
    )


def legacy_compensation_body(saga_id: str, step: str, step_input: Any, action_key: str) -> bytes:
    """The body of a compensation whose intent a release before named generations wrote (one key): its
    later attempts must send these same bytes."""
    return canonical_bytes(
        {"saga_id": saga_id, "step": step, "input": step_input, "action_idempotency_key": action_key}
    )

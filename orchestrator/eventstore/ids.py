"""Deterministic event ids (design.md §0, invariant 5: same event id ⇒ same bytes).

An id is uuid5 over (stream, expected state, index in the append, type, sha256 of data and metadata):
resending the same append reproduces the same ids, so the store treats it as idempotent; a different
decision written into the same slot gets a different id, so it is a conflict, never a silent success.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

from orchestrator.eventstore.types import Expected, NewEvent, StreamState

_NAMESPACE = uuid.UUID("6f0d9c3e-58a4-5b7e-9a53-3b0c6f1e2d47")


def _expected_token(expected: Expected) -> str:
    return expected.value if isinstance(expected, StreamState) else str(expected)


def event_id(
    stream: str, expected: Expected, index: int, event_type: str, data: bytes, metadata: bytes
) -> uuid.UUID:
    digest = hashlib.sha256()
    digest.update(len(data).to_bytes(8, "big"))
    digest.update(data)
    digest.update(metadata)
    name = f"{stream}\x1f{_expected_token(expected)}\x1f{index}\x1f{event_type}\x1f{digest.hexdigest()}"
    return uuid.uuid5(_NAMESPACE, name)


def new_events(stream: str, expected: Expected, items: Sequence[tuple[str, bytes, bytes]]) -> list[NewEvent]:
    """Build the ``NewEvent`` list of one append from (type, data, metadata) triples."""
    return [NewEvent(event_id(stream, expected, i, t, d, m), t, d, m) for i, (t, d, m) in enumerate(items)]

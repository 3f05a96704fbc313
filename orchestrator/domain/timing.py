"""Retry policy values, deterministic backoff with jitter, and the engine-tunable durations."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff, durations in milliseconds; ``jitter`` is the fraction that may be shaved off."""

    initial_interval_ms: int = 1_000
    multiplier: float = 2.0
    max_interval_ms: int = 60_000
    jitter: float = 0.2


@dataclass(frozen=True, slots=True)
class Tuning:
    """Durations the engine may set from its settings; the defaults are what the tests assume."""

    # "Re-evaluate soon" after an append that carries no intent of its own (design.md §0.4).
    kick_ms: int = 5_000
    # Added to a step's timeout for the attempt's durable deadline: covers pool acquisition and clock slack.
    attempt_slack_ms: int = 5_000
    # A participant's Retry-After never parks a saga longer than this.
    retry_after_cap_ms: int = 300_000


def jitter_fraction(saga_id: str, step: str, phase: str, attempt: int) -> float:
    """A value in [0, 1) derived from the inputs only, so a replay computes the same delay."""
    digest = hashlib.sha256(f"{saga_id}\x1f{step}\x1f{phase}\x1f{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def backoff_ms(policy: RetryPolicy, saga_id: str, step: str, phase: str, failed_attempt: int) -> int:
    """Delay before the attempt after ``failed_attempt`` (1-based); never above ``max_interval_ms``."""
    # The exponent is capped so that unlimited retries after a pivot cannot overflow a float.
    exponent = min(max(failed_attempt - 1, 0), 64)
    base = min(float(policy.max_interval_ms), policy.initial_interval_ms * policy.multiplier**exponent)
    shaved = base * policy.jitter * jitter_fraction(saga_id, step, phase, failed_attempt)
    return max(1, round(base - shaved))


def retry_delay_ms(
    policy: RetryPolicy,
    saga_id: str,
    step: str,
    phase: str,
    failed_attempt: int,
    retry_after_ms: int | None,
    tuning: Tuning,
) -> int:
    """The backoff, stretched to honour a participant's (capped) Retry-After."""
    delay = backoff_ms(policy, saga_id, step, phase, failed_attempt)
    if retry_after_ms is not None:
        delay = max(delay, min(max(retry_after_ms, 0), tuning.retry_after_cap_ms))
    return delay

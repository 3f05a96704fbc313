"""The demo's failure switches, read from the saga's start context (``input.demo`` of every call).

The start context is the step input, so a user can make a participant misbehave from the start request
alone, e.g. ``"context": {..., "demo": {"payment": "decline"}}``; nothing has to be configured first.

``demo`` maps a service (``order``, ``inventory``, ``payment``) to a mode or a list of modes, plus two
optional tuning numbers (``slow_ms``, ``flaky_failures``). An invalid ``demo`` object is itself a business
rejection of the first action that sees it, with the problem named, so a typo is visible in the saga.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: the services of the brief's order-processing saga, by URL prefix, and their short names in ``demo``
SERVICES: Mapping[str, str] = {
    "order-service": "order",
    "inventory-service": "inventory",
    "payment-service": "payment",
}

#: longer than every timeout of the brief's definition (30 s, 15 s and 45 s), so "slow" times out as-is
DEFAULT_SLOW_MS = 50_000
MAX_SLOW_MS = 600_000
DEFAULT_FLAKY_FAILURES = 2
MAX_FLAKY_FAILURES = 100


class Mode(StrEnum):
    #: the action answers 422, a business "no" -> the saga compensates what already succeeded
    REJECT = "reject"
    #: the action answers 503 with ``Retry-After: 1`` ``flaky_failures`` times per key, then works -> retries
    FLAKY = "flaky"
    #: the action takes ``slow_ms`` before it answers -> the step times out; the outcome is unknown
    SLOW = "slow"
    #: the action answers 401 until ``POST /demo/fix`` -> the saga is suspended until a person resumes it
    MISCONFIGURED = "misconfigured"
    #: the compensation answers 422 ("cannot compensate") -> the saga is dead-lettered
    COMPENSATION_FAILS = "compensation-fails"


#: words the brief's domain uses for a rejection
_ALIASES = {"decline": Mode.REJECT, "out-of-stock": Mode.REJECT, "invalid": Mode.REJECT}


class SwitchError(ValueError):
    """The ``demo`` object of the context cannot be understood; the message names the offending part."""


@dataclass(frozen=True, slots=True)
class Switches:
    modes: Mapping[str, frozenset[Mode]] = field(default_factory=dict)
    slow_ms: int = DEFAULT_SLOW_MS
    flaky_failures: int = DEFAULT_FLAKY_FAILURES

    def on(self, service: str, mode: Mode) -> bool:
        """Whether ``mode`` is switched on for ``service`` (its URL prefix, e.g. ``payment-service``)."""
        return mode in self.modes.get(SERVICES.get(service, service), frozenset())


NO_SWITCHES = Switches()


def _mode(service: str, value: Any) -> Mode:
    if isinstance(value, str):
        if value in _ALIASES:
            return _ALIASES[value]
        try:
            return Mode(value)
        except ValueError:
            pass
    known = ", ".join(sorted([m.value for m in Mode] + list(_ALIASES)))
    raise SwitchError(f"demo.{service}: unknown mode {value!r} (known: {known})")


def _bounded_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SwitchError(f"demo.{name} must be an integer from {low} to {high}, not {value!r}")
    return value


def parse_switches(step_input: Any) -> Switches:
    """The switches in a step input; ``NO_SWITCHES`` when it has no ``demo`` key. Raises ``SwitchError``."""
    if not isinstance(step_input, dict) or "demo" not in step_input:
        return NO_SWITCHES
    demo = step_input["demo"]
    if not isinstance(demo, dict):
        raise SwitchError(f"demo must be an object, not {type(demo).__name__}")
    modes: dict[str, frozenset[Mode]] = {}
    slow_ms, flaky_failures = DEFAULT_SLOW_MS, DEFAULT_FLAKY_FAILURES
    for name, value in demo.items():
        if name == "slow_ms":
            slow_ms = _bounded_int(name, value, 0, MAX_SLOW_MS)
        elif name == "flaky_failures":
            flaky_failures = _bounded_int(name, value, 0, MAX_FLAKY_FAILURES)
        elif name in SERVICES.values():
            values = value if isinstance(value, list) else [value]
            modes[name] = frozenset(_mode(name, v) for v in values)
        else:
            known = ", ".join([*SERVICES.values(), "slow_ms", "flaky_failures"])
            raise SwitchError(f"demo.{name}: unknown key (known: {known})")
    return Switches(modes, slow_ms, flaky_failures)

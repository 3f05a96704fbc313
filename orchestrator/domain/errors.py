"""The domain's exception family: one root, one class per way a caller must react."""

from __future__ import annotations

from dataclasses import dataclass


class DomainError(Exception):
    """Root of every exception raised by ``orchestrator.domain``."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem with one part of an input: ``path`` points into it the way a client wrote it
    (``steps[2].timeout``, ``retry.max_interval``; empty for the whole input), ``message`` says what is
    wrong in words that stand alone."""

    path: str
    message: str


class DefinitionError(DomainError):
    """A saga definition is invalid; ``issues`` holds one precise problem per part (HTTP 422)."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues: tuple[Issue, ...] = tuple(issues)
        super().__init__("invalid saga definition: " + "; ".join(self.problems))

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(i.message for i in self.issues)


class DomainConflict(DomainError):
    """The command is not allowed in the saga's current state (HTTP 409)."""


class InvalidMessage(DomainError):
    """The caller passed a message that cannot refer to this saga (an engine bug, not a user error)."""


class UnreadableHistory(DomainError):
    """The stream holds something this code cannot fold (an ``UnknownEvent``, a corrupt start).

    The engine acks the delivery, counts it and drops the saga from its cache (design.md §3).
    """

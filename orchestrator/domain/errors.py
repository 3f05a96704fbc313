"""The domain's exception family: one root, one class per way a caller must react."""

from __future__ import annotations


class DomainError(Exception):
    """Root of every exception raised by ``orchestrator.domain``."""


class DefinitionError(DomainError):
    """A saga definition is invalid; ``problems`` holds one precise message per problem (HTTP 422)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("invalid saga definition: " + "; ".join(self.problems))


class DomainConflict(DomainError):
    """The command is not allowed in the saga's current state (HTTP 409)."""


class InvalidMessage(DomainError):
    """The caller passed a message that cannot refer to this saga (an engine bug, not a user error)."""


class UnreadableHistory(DomainError):
    """The stream holds something this code cannot fold (an ``UnknownEvent``, a corrupt start).

    The engine acks the delivery, counts it and drops the saga from its cache (design.md §3).
    """

"""The application layer's errors: one root, one class per way a caller must react, each naming the
parts of the request it concerns (:class:`Issue`: a path into the request as the client wrote it, and a
message that stands alone). ``code`` is a stable slug clients can branch on. Interfaces map the classes to
their own vocabulary in one place (HTTP: 404, 409, 412, 422) and never parse the messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from orchestrator.domain.errors import Issue


class AppError(Exception):
    default_code: ClassVar[str] = "error"

    def __init__(self, message: str, issues: Sequence[Issue] = (), *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.issues: tuple[Issue, ...] = tuple(issues)
        #: the class's slug, or a more precise one for this case ("unknown-definition")
        self.code = code or self.default_code


class NotFound(AppError):
    """What the request names does not exist for this caller (another tenant's saga included)."""

    default_code = "not-found"


class Forbidden(AppError):
    """The caller is who they say, but may not do this."""

    default_code = "forbidden"


class Unavailable(AppError):
    """This node cannot serve it now (it runs no projector, a dependency is down); another may."""

    default_code = "unavailable"


class TooManyRequests(AppError):
    """The caller's tenant is over one of its caps; ``retry_after_s`` says when to try again."""

    default_code = "too-many-requests"

    def __init__(self, message: str, retry_after_s: float, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Conflict(AppError):
    """Not possible in the current state (a person's command the saga refuses, a taken id)."""

    default_code = "conflict"


class PreconditionFailed(AppError):
    """The caller's expectation of the state (``If-Match``) no longer holds."""

    default_code = "precondition-failed"


class Invalid(AppError):
    """The request cannot be accepted as sent; every issue names its part."""

    default_code = "invalid"

    def __init__(self, issues: Sequence[Issue], *, code: str | None = None) -> None:
        super().__init__("; ".join(i.message for i in issues), issues, code=code)

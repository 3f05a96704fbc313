"""RFC 9457 problem details: the one shape every error of the API takes (``application/problem+json``).

Handlers raise :class:`Problem`; the middleware turns it (and aiohttp's own HTTP errors, and anything
unexpected) into a response, so no handler builds an error body by hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from orchestrator.app.errors import (
    AppError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PreconditionFailed,
    TooManyRequests,
    Unavailable,
)

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "urn:saga-orchestrator:problem:"

_TITLES: Mapping[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    428: "Precondition Required",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One named problem: ``field`` is a dotted path into the request (``body.steps[0].timeout``,
    ``query.limit``, ``header.If-Match``), ``problem`` says what is wrong with it."""

    field: str
    problem: str

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "problem": self.problem}


class Problem(Exception):
    """An error answer. ``kind`` becomes the problem ``type`` (a URN), so clients can branch on it."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        errors: Iterable[FieldProblem] = (),
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.errors: Sequence[FieldProblem] = tuple(errors)
        self.headers = dict(headers or {})

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": _TYPE_BASE + self.kind,
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = [e.to_json() for e in self.errors]
        if instance is not None:
            body["instance"] = instance
        return body

    def response(self, instance: str | None = None) -> web.Response:
        return web.Response(
            status=self.status,
            body=json.dumps(self.body(instance), ensure_ascii=False).encode(),
            content_type=PROBLEM_JSON,
            headers=self.headers,
        )


def invalid_field(status: int, kind: str, field: str, problem: str) -> Problem:
    """A problem with exactly one named field (the common case for headers and query parameters)."""
    return Problem(status, kind, f"{field}: {problem}", [FieldProblem(field, problem)])


def from_http_exception(e: web.HTTPException) -> Problem:
    """aiohttp's own errors (unknown route, wrong method, its size cap) in our shape."""
    kinds = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}
    headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
    return Problem(e.status, kinds.get(e.status, "http-error"), e.reason, headers=headers)


#: the HTTP status of each application error class (the one place the API decides it)
_APP_STATUS: Mapping[type[AppError], int] = {
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PreconditionFailed: 412,
    Invalid: 422,
    TooManyRequests: 429,
    Unavailable: 503,
}


def from_app_error(e: AppError, where: str = "body", status: int | None = None) -> Problem:
    """A use case's error in our shape: its class decides the status, its code the type, and each issue
    (a path into the use case's input, which came from the request's ``where``: body or query) becomes a
    named field."""
    if status is None:
        status = next((code for cls, code in _APP_STATUS.items() if isinstance(e, cls)), 400)
    errors = [FieldProblem(f"{where}.{i.path}" if i.path else where, i.message) for i in e.issues]
    headers = (
        {"Retry-After": str(max(1, math.ceil(e.retry_after_s)))} if isinstance(e, TooManyRequests) else None
    )
    return Problem(status, e.code, e.message, errors, headers=headers)

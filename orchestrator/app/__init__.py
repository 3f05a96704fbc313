"""The application layer: the use cases every interface shares (HTTP now; GraphQL, the dashboard and the
CLI through the API later). Each takes a :class:`Principal` and raises an :class:`AppError` that names
the part of the request it concerns; interfaces translate, they do not decide."""

from orchestrator.app.commands import Intervened, Registered, SagaCommands, Started, start_request_hash
from orchestrator.app.errors import AppError, Conflict, Invalid, NotFound, PreconditionFailed
from orchestrator.app.principal import Principal
from orchestrator.domain.errors import Issue

__all__ = [
    "AppError",
    "Conflict",
    "Intervened",
    "Invalid",
    "Issue",
    "NotFound",
    "PreconditionFailed",
    "Principal",
    "Registered",
    "SagaCommands",
    "Started",
    "start_request_hash",
]

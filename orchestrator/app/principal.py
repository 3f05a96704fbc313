"""Who is asking, as every use case sees it: resolved once per request by the interface (design.md §9)."""

from __future__ import annotations

from dataclasses import dataclass

ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    actor: str
    roles: frozenset[str]
    #: how the interface established who this is: "none" (development), "trusted-header", "jwt", "api-key"
    authenticated_by: str = "none"
    #: which credential: the API key's id (never its secret); "" when the method has none
    credential_id: str = ""

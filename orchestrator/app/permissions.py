"""Who may do what: the one permission table, checked by every use case (never by a route).

A principal holds roles within its own tenant; each role grants the permissions in :data:`TABLE`. A role
the table does not know grants nothing. Work on another tenant's resources is never a permission: every
use case scopes what it reads and writes to ``who.tenant``, and another tenant's saga is "not found".

The cross-tenant operations of the deployment itself (persistent subscription groups, parked messages,
read-model rebuilds) need ``admin`` in the operations tenant (``auth.operations_tenant``): a tenant's
admin manages that tenant, not the infrastructure every tenant shares.

The README's permission table is :func:`table_rows`; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from orchestrator.app.errors import Forbidden
from orchestrator.app.principal import Principal


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    AUDITOR = "auditor"


class Permission(StrEnum):
    READ_SAGAS = "sagas:read"
    READ_DEFINITIONS = "definitions:read"
    START = "sagas:start"
    INTERVENE = "sagas:intervene"
    BULK_INTERVENE = "sagas:bulk-intervene"
    REGISTER_DEFINITIONS = "definitions:register"
    MANAGE_API_KEYS = "api-keys:manage"
    OPERATE = "deployment:operate"
    READ_AUDIT = "audit:read"


#: what each permission lets a caller do (the README's wording)
MEANING: dict[Permission, str] = {
    Permission.READ_SAGAS: "read sagas, their histories, live streams, the DLQ and counters",
    Permission.READ_DEFINITIONS: "read saga definitions",
    Permission.START: "start sagas",
    Permission.INTERVENE: "abort, retry, skip, resolve or resume one saga",
    Permission.BULK_INTERVENE: "one command for every saga a filter selects",
    Permission.REGISTER_DEFINITIONS: "register saga definitions",
    Permission.MANAGE_API_KEYS: "create, list, rotate and revoke the tenant's API keys",
    Permission.OPERATE: "subscription groups, parked messages, read-model rebuilds (operations tenant only)",
    Permission.READ_AUDIT: "read and export the tenant's audit log",
}

_READ = frozenset({Permission.READ_SAGAS, Permission.READ_DEFINITIONS})
_OPERATE = _READ | {Permission.START, Permission.INTERVENE, Permission.BULK_INTERVENE}
TABLE: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: _READ,
    Role.OPERATOR: _OPERATE,
    Role.ADMIN: _OPERATE | {Permission.REGISTER_DEFINITIONS, Permission.MANAGE_API_KEYS, Permission.OPERATE},
    # Separation of duties: the auditor reads and changes nothing, and the audit log is the auditor's
    # alone: an admin does not read the record of what admins did unless also an auditor.
    Role.AUDITOR: _READ | {Permission.READ_AUDIT},
}
ALL_ROLES = frozenset(Role)


def permissions_of(roles: Iterable[str]) -> frozenset[Permission]:
    granted: set[Permission] = set()
    for role in roles:
        if role in ALL_ROLES:
            granted |= TABLE[Role(role)]
    return frozenset(granted)


def allows(who: Principal, permission: Permission) -> bool:
    return permission in permissions_of(who.roles)


def authorize(who: Principal, permission: Permission) -> None:
    """Raise :class:`Forbidden` unless ``who``'s roles grant ``permission``."""
    if not allows(who, permission):
        roles = sorted(r for r in TABLE if permission in TABLE[r])
        raise Forbidden(f"{permission} needs one of the roles {', '.join(roles)}", code="forbidden")


def table_rows() -> list[tuple[str, str, list[str]]]:
    """(permission, what it allows, the roles that have it), in the table's order."""
    return [(str(p), MEANING[p], [str(r) for r in Role if p in TABLE[r]]) for p in Permission]

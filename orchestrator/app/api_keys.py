"""API keys for external services: created, listed, rotated and revoked per tenant (``api-keys:manage``),
kept in the event store (one ``apikeys-{tenant}`` stream per tenant), never in a side database.

A key is ``sk_<key id>_<secret>``; the secret is shown once, when the key is created or rotated, and only
its SHA-256 is stored (a 256-bit random secret needs no slow hash: there is nothing to guess). The key id
is the lookup prefix. A key's roles are its scopes: it never has a permission its creator lacks. Keys may
expire; a rotation may leave the previous secret valid for a grace period; a revocation ends every secret
of the key.

Every API node keeps an index of all keys, fed by a catch-up subscription to the key streams, so a
revocation written on one node is refused on every other within the subscription's latency (well under
the 5 s the README promises; a test measures it across processes). The last use of a key is recorded
(``ApiKeyUsed``) at most once per ``use_interval_s`` per node, so traffic does not flood the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from orchestrator.app.background import forever
from orchestrator.app.errors import Conflict, Forbidden, Invalid, NotFound
from orchestrator.app.permissions import ALL_ROLES, Permission, authorize, permissions_of
from orchestrator.app.principal import Principal
from orchestrator.domain.errors import Issue
from orchestrator.domain.requests import canonical_bytes
from orchestrator.eventstore.errors import StreamNotFound, WrongExpectedRevision
from orchestrator.eventstore.ids import new_events
from orchestrator.eventstore.port import EventStore
from orchestrator.eventstore.types import (
    ANY,
    NO_STREAM,
    CaughtUp,
    Checkpoint,
    EventFilter,
    Expected,
    RecordedEvent,
)
from orchestrator.records.streams import API_KEY_STREAM_PREFIX, api_key_stream

log = structlog.get_logger("orchestrator.api_keys")

KEY_PREFIX = "sk_"
_KEY = re.compile(r"^sk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")
#: the longest a rotated-out secret may stay valid
MAX_GRACE_S = 7 * 24 * 3600
CREATED, ROTATED, REVOKED, USED = "ApiKeyCreated", "ApiKeyRotated", "ApiKeyRevoked", "ApiKeyUsed"
_APPEND_ATTEMPTS = 5


def _digest(presented: str) -> str:
    return hashlib.sha256(presented.encode()).hexdigest()


#: compared against when the key id is unknown, so a miss costs what a hit costs
_DUMMY = _digest("sk_0000000000000000_" + "A" * 43)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key as its stream tells it (never its secret)."""

    key_id: str
    tenant: str
    name: str
    roles: tuple[str, ...]
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    #: SHA-256 of the current secret
    digest: str = ""
    #: the previous secret's digest and until when it is still accepted (after a rotation with grace)
    previous_digest: str = ""
    previous_until: datetime | None = None
    rotated_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    last_used_at: datetime | None = None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def accepts(self, digest: str, now: datetime) -> bool:
        """Constant time in the digest: both candidates are always compared."""
        current = hmac.compare_digest(self.digest, digest)
        previous = hmac.compare_digest(self.previous_digest or _DUMMY, digest)
        in_grace = self.previous_until is not None and now < self.previous_until
        return self.status(now) == "active" and (current or (previous and in_grace))


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def evolve(keys: dict[str, ApiKey], tenant: str, event_type: str, data: dict[str, Any]) -> None:
    """Apply one key event (unknown types and keys are ignored: newer releases may add some)."""
    key_id = str(data.get("key_id", ""))
    if event_type == CREATED:
        keys[key_id] = ApiKey(
            key_id=key_id,
            tenant=tenant,
            name=str(data["name"]),
            roles=tuple(data["roles"]),
            created_at=_time(data["at"]) or datetime.now(UTC),
            created_by=str(data["by"]),
            expires_at=_time(data.get("expires_at")),
            digest=str(data["digest"]),
        )
        return
    key = keys.get(key_id)
    if key is None:
        return
    at = _time(data.get("at"))
    if event_type == ROTATED:
        keys[key_id] = replace(
            key,
            digest=str(data["digest"]),
            previous_digest=key.digest,
            previous_until=_time(data.get("previous_until")),
            rotated_at=at,
        )
    elif event_type == REVOKED:
        keys[key_id] = replace(key, revoked_at=at, revoked_by=str(data.get("by", "")))
    elif event_type == USED and at is not None and (key.last_used_at is None or at > key.last_used_at):
        keys[key_id] = replace(key, last_used_at=at)


def fold(tenant: str, events: Iterable[RecordedEvent]) -> dict[str, ApiKey]:
    keys: dict[str, ApiKey] = {}
    for e in events:
        evolve(keys, tenant, e.type, json.loads(e.data))
    return keys


@dataclass
class KeyIndex:
    """Every tenant's keys by key id, as this node has read them."""

    keys: dict[str, ApiKey] = field(default_factory=dict)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)

    def apply(self, event: RecordedEvent) -> None:
        tenant = event.stream.removeprefix(API_KEY_STREAM_PREFIX)
        evolve(self.keys, tenant, event.type, json.loads(event.data))


@dataclass(frozen=True, slots=True)
class Issued:
    """A key and its secret, which exists only in this answer."""

    key: ApiKey
    secret: str


class ApiKeys:
    def __init__(
        self,
        store: EventStore,
        *,
        rbac_enabled: bool = True,
        use_interval_s: float = 300.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._rbac = rbac_enabled
        self._use_interval = timedelta(seconds=use_interval_s)
        self._clock = clock
        self.index = KeyIndex()
        #: uses seen on this node and not yet recorded: key id -> (tenant, last use)
        self._uses: dict[str, tuple[str, datetime]] = {}
        self._recorded_use: dict[str, datetime] = {}

    # --- management (api-keys:manage, within the caller's tenant) -------------------------------------
    async def create(
        self, who: Principal, *, name: str, roles: Sequence[str], expires_at: datetime | None = None
    ) -> Issued:
        authorize(who, Permission.MANAGE_API_KEYS)
        issues = []
        if not _NAME.match(name):
            issues.append(Issue("name", "1 to 100 printable characters"))
        unknown = sorted({r for r in roles} - {str(r) for r in ALL_ROLES})
        if unknown or not roles:
            issues.append(Issue("roles", f"one or more of {', '.join(sorted(str(r) for r in ALL_ROLES))}"))
        if expires_at is not None and expires_at <= self._clock():
            issues.append(Issue("expires_at", "must be in the future"))
        if issues:
            raise Invalid(issues, code="invalid-api-key")
        beyond = sorted(permissions_of(roles) - permissions_of(who.roles)) if self._rbac else []
        if beyond:
            raise Forbidden(f"a key cannot do more than its creator: {', '.join(beyond)}")
        key_id = secrets.token_hex(8)
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        now = self._clock()
        data = {
            "key_id": key_id,
            "name": name,
            "roles": sorted(set(roles)),
            "digest": _digest(secret),
            "expires_at": expires_at.isoformat() if expires_at is not None else None,
            "by": who.actor,
            "at": now.isoformat(),
        }
        keys = await self._change(who, CREATED, data, lambda keys: None)
        return Issued(keys[key_id], secret)

    async def list(self, who: Principal) -> list[ApiKey]:
        authorize(who, Permission.MANAGE_API_KEYS)
        keys, _ = await self._read(who.tenant)
        return sorted(keys.values(), key=lambda k: (k.created_at, k.key_id))

    async def rotate(self, who: Principal, key_id: str, *, grace_s: float = 0.0) -> Issued:
        authorize(who, Permission.MANAGE_API_KEYS)
        if not 0 <= grace_s <= MAX_GRACE_S:
            raise Invalid([Issue("grace_s", f"0 to {MAX_GRACE_S} seconds")], code="invalid-api-key")
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        now = self._clock()
        data = {
            "key_id": key_id,
            "digest": _digest(secret),
            "previous_until": (now + timedelta(seconds=grace_s)).isoformat() if grace_s else None,
            "by": who.actor,
            "at": now.isoformat(),
        }
        keys = await self._change(who, ROTATED, data, lambda keys: self._active(keys, key_id))
        return Issued(keys[key_id], secret)

    async def revoke(self, who: Principal, key_id: str, *, reason: str = "") -> ApiKey:
        authorize(who, Permission.MANAGE_API_KEYS)
        data = {"key_id": key_id, "by": who.actor, "reason": reason[:500], "at": self._clock().isoformat()}

        def check(keys: dict[str, ApiKey]) -> None:
            if key_id not in keys:
                raise NotFound(f"no API key {key_id!r}")

        keys = await self._change(who, REVOKED, data, check, skip_if=lambda keys: keys[key_id].revoked_at)
        return keys[key_id]

    def _active(self, keys: dict[str, ApiKey], key_id: str) -> None:
        key = keys.get(key_id)
        if key is None:
            raise NotFound(f"no API key {key_id!r}")
        status = key.status(self._clock())
        if status != "active":
            raise Conflict(f"the key is {status}", code="api-key-inactive")

    async def _read(self, tenant: str) -> tuple[dict[str, ApiKey], Expected]:
        try:
            events = await self._store.read_stream(api_key_stream(tenant))
        except StreamNotFound:
            return {}, NO_STREAM
        return fold(tenant, events), (events[-1].revision if events else NO_STREAM)

    async def _change(
        self,
        who: Principal,
        event_type: str,
        data: dict[str, Any],
        check: Callable[[dict[str, ApiKey]], None],
        skip_if: Callable[[dict[str, ApiKey]], object] | None = None,
    ) -> dict[str, ApiKey]:
        """Fold the tenant's stream, check, append at the expected revision (again on a conflict)."""
        stream = api_key_stream(who.tenant)
        meta = canonical_bytes({"tenant": who.tenant, "actor": who.actor, "by": who.authenticated_by})
        for _ in range(_APPEND_ATTEMPTS):
            keys, expected = await self._read(who.tenant)
            check(keys)
            if skip_if is not None and skip_if(keys):
                return keys  # already so: nothing to write
            events = new_events(stream, expected, [(event_type, canonical_bytes(data), meta)])
            try:
                await self._store.append(stream, events, expected=expected)
            except WrongExpectedRevision:
                continue
            evolve(keys, who.tenant, event_type, data)
            self.index.keys.update(keys)  # this node knows at once; the others through the subscription
            return keys
        raise Conflict("the tenant's API keys kept changing; try again", code="api-keys-busy")

    # --- authentication ---------------------------------------------------------------------------------
    async def authenticate(self, presented: str) -> Principal | None:
        """The principal of a valid, active key; None for anything else (in about the same time)."""
        if not self.index.caught_up.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.index.caught_up.wait(), 2.0)
        m = _KEY.match(presented)
        key = self.index.keys.get(m.group(1)) if m else None
        now = self._clock()
        digest = _digest(presented)
        if key is None:
            hmac.compare_digest(_DUMMY, digest)
            return None
        if not key.accepts(digest, now):
            return None
        self._uses[key.key_id] = (key.tenant, now)
        roles = frozenset(key.roles) if self._rbac else frozenset(str(r) for r in ALL_ROLES)
        return Principal(key.tenant, f"api-key:{key.key_id}", roles, "api-key", credential_id=key.key_id)

    # --- background: the index, and recording uses ---------------------------------------------------
    async def follow(self) -> None:
        """Keep the index current (runs until cancelled; a dropped subscription is opened again)."""
        await forever(self._follow_once, dropped="api_key_index_dropped")

    async def _follow_once(self) -> None:
        subscription = await self._store.subscribe_all(
            filter=EventFilter(stream_prefixes=(API_KEY_STREAM_PREFIX,))
        )
        self.index.keys.clear()
        try:
            async for item in subscription:
                if isinstance(item, CaughtUp):
                    self.index.caught_up.set()
                elif not isinstance(item, Checkpoint):
                    self.index.apply(item)
        finally:
            await subscription.close()

    async def record_uses(self) -> None:
        """Append ``ApiKeyUsed`` for keys used since their last record, at most once per interval."""
        now = self._clock()
        due = {
            k: (tenant, at)
            for k, (tenant, at) in self._uses.items()
            if k not in self._recorded_use or at - self._recorded_use[k] >= self._use_interval
        }
        for key_id, (tenant, at) in due.items():
            stream = api_key_stream(tenant)
            data = {"key_id": key_id, "at": at.isoformat()}
            meta = canonical_bytes({"tenant": tenant, "actor": f"api-key:{key_id}"})
            try:
                # Any revision: a use record never decides anything, and never conflicts with a change.
                events = new_events(stream, ANY, [(USED, canonical_bytes(data), meta)])
                await self._store.append(stream, events, expected=ANY)
            except Exception:
                log.warning("api_key_use_not_recorded", key_id=key_id, exc_info=True)
                continue
            self._recorded_use[key_id] = now
            self._uses.pop(key_id, None)

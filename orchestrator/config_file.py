"""The settings file: ``${VAR}`` substitution, YAML read without quoting values in its errors, and the
source that lays the file's native sections over the brief's alias layer (:mod:`orchestrator.brief_config`).

No error raised here quotes a configured value: URLs carry credentials and some values are secrets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from orchestrator import brief_config
from orchestrator.brief_config import Note


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the problem."""


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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


#: notes the loading in progress collects for the start-up log (see ``load_settings_with_notes``)
NOTES: ContextVar[list[Note] | None] = ContextVar("settings_notes", default=None)


def _read_file(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"SAGA_CONFIG={path}: {e.strerror}") from e
    try:
        data = yaml.safe_load(substitute(text)) or {}
    except yaml.YAMLError as e:
        # PyYAML's message quotes the offending line, after substitution: name the place only.
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise ConfigError(f"SAGA_CONFIG={path}: {problem}{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"SAGA_CONFIG={path}: the top level must be a mapping")
    return data


def _sets(data: Mapping[str, Any] | BaseModel, setting: str) -> bool:
    """Whether a source's data sets ``setting``, a dotted path (a section given as a model sets what it
    was given)."""
    head, _, rest = setting.partition(".")
    if isinstance(data, BaseModel):
        if head not in data.model_fields_set:
            return False
        found = getattr(data, head)
    else:
        found = data.get(head)
    if not rest:
        return found is not None
    return isinstance(found, Mapping | BaseModel) and _sets(found, rest)


def _merge(alias: dict[str, Any], native: dict[str, Any]) -> dict[str, Any]:
    """``native`` laid over ``alias``, section by section (a nested section is merged, not replaced)."""
    merged = dict(alias)
    for key, value in native.items():
        below = merged.get(key)
        merged[key] = _merge(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return merged


def _env_name(setting: str) -> str:
    name = "SAGA_" + setting.upper().replace(".", "__")
    return name if name in {k.upper() for k in os.environ} else "a SAGA_ variable"


class FileSource(PydanticBaseSettingsSource):
    """The YAML file's native sections, over the brief's alias layer."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        init: PydanticBaseSettingsSource,
        env: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self._init, self._env = init, env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("SAGA_CONFIG")
        data = _read_file(path) if path else {}
        claims, problems = brief_config.claims(data.pop("orchestrator", None), os.environ)
        if not claims and not problems:
            return data
        # Which native source, if any, sets what a brief key sets: that one wins, and the log says so.
        native: dict[str, str] = {}
        arguments, environment = self._init(), self._env()
        for setting in {c.alias.setting for c in claims}:
            for name, found in (
                (f"{setting} (an argument)", arguments),
                (_env_name(setting), environment),
                (f"{setting} (in {path})", data),
            ):
                if _sets(found, setting):
                    native[setting] = name
                    break
        resolved = brief_config.resolve(claims, native)
        refusals = [*problems, *resolved.refusals]
        if refusals:
            raise ConfigError("the configuration cannot be used as written:\n  " + "\n  ".join(refusals))
        notes = NOTES.get()
        if notes is not None:
            notes.extend(resolved.notes)
        for section, values in resolved.values.items():
            native_section = data.get(section)
            if native_section is None:
                data[section] = values
            elif isinstance(native_section, dict):  # anything else is the model's to refuse
                data[section] = _merge(values, native_section)
        return data


def describe(error: ValidationError) -> str:
    """pydantic's own text quotes each offending input, which may be a secret: name field and problem."""
    lines = [
        f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
        for e in error.errors(include_url=False, include_input=False, include_context=False)
    ]
    return "invalid settings:\n  " + "\n  ".join(lines)

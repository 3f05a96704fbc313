"""Semantic-version parsing and ordering (SemVer 2.0.0 precedence), used to pick the "latest" definition."""

from __future__ import annotations

import re
from collections.abc import Iterable

SEMVER_PATTERN = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

# (major, minor, patch, is_release, prerelease identifiers, full text); the text only breaks ties between
# versions that differ in build metadata, which SemVer ranks equal, so "latest" stays deterministic.
SemverKey = tuple[int, int, int, int, tuple[tuple[int, int, str], ...], str]


def is_semver(version: str) -> bool:
    return SEMVER_PATTERN.match(version) is not None


def semver_key(version: str) -> SemverKey:
    """Sort key with SemVer precedence; raises ``ValueError`` for a non-semantic version."""
    match = SEMVER_PATTERN.match(version)
    if match is None:
        raise ValueError(f"{version!r} is not a semantic version")
    major, minor, patch, pre, _build = match.groups()
    identifiers: tuple[tuple[int, int, str], ...] = ()
    if pre is not None:
        # Numeric identifiers rank below alphanumeric ones and compare numerically.
        identifiers = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (int(major), int(minor), int(patch), 0 if pre is not None else 1, identifiers, version)


def latest_version(versions: Iterable[str]) -> str | None:
    """The highest release; pre-releases count only when no release exists. ``None`` for no versions."""
    ordered = sorted(versions, key=semver_key)
    if not ordered:
        return None
    releases = [v for v in ordered if semver_key(v)[3] == 1]
    return releases[-1] if releases else ordered[-1]

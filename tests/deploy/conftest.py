"""Fixtures of the deploy checks: promtool (a system package) and what the running service exports."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from tests.deploy.exported import scrape_running_service, series_names


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing = "promtool is not on PATH (.ci/run installs it from Debian's prometheus package)"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)  # CI promises every system package it needs
        pytest.skip(missing)
    return found


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    """Every series name the real service's /metrics declares, scraped once per session."""
    exposition = asyncio.run(scrape_running_service(tmp_path_factory.mktemp("service")))
    return frozenset(series_names(exposition))

"""What the code really exports, for the checks that every metric an alerting rule or a dashboard panel
names exists: the real service (``saga-orchestrator serve``, every role in one process, the embedded store
and Redis, the demo participants) is started, runs one saga of the brief, and its ``/metrics`` is scraped.
Also a small extractor of the metric names a PromQL expression selects."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.seed import SEED_DEFINITION, SEED_START
from tests.system.service import running_service

#: series Prometheus makes itself for every target; no process exports them
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

#: what can stand before ``(`` or between selectors without being a metric name
_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "offset", "bool"})
_NAME = re.compile(r"(?<![0-9A-Za-z_.:$])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, aggregations, label names, durations and
    Grafana's ``$variables`` are not names)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors and subqueries
    found = set()
    for match in _NAME.finditer(text):
        name = match.group(0)
        if name in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        found.add(name)
    return found


def series_names(exposition: str) -> set[str]:
    """Every series name the exposition's families can have, by their type (a labelled metric nothing has
    touched yet still declares its family)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


async def scrape_running_service(data_dir: Path) -> str:
    """The plain-text ``/metrics`` of the real service after one saga of the brief has completed."""
    json_body = {"Content-Type": "application/json"}
    async with running_service(data_dir) as service, aiohttp.ClientSession(headers=json_body) as http:
        async with http.post(f"{service.url}/api/v1/sagas/definitions", data=SEED_DEFINITION) as response:
            assert response.status == 201, await response.text()
        async with http.post(f"{service.url}/api/v1/sagas/instances", data=SEED_START) as response:
            assert response.status == 201, await response.text()
            saga = f"{service.url}/api/v1/sagas/instances/{(await response.json())['saga_id']}"
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            async with http.get(saga) as response:
                if response.status == 200 and (await response.json())["status"] == "completed":
                    break
            assert asyncio.get_running_loop().time() < deadline, service.log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        async with http.get(f"{service.url}/metrics") as response:
            assert response.status == 200, await response.text()
            return await response.text()

"""The real service (subprocess) through its failure paths and its CLI: dead letter and resolve, a
manual retry under a new key, and the command-line tools against the running service."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.seed import SEED_DEFINITION
from tests.system.service import ROOT, Service, curl, running_service
from tests.system.test_quickstart import _until_status

DEFINITION = SEED_DEFINITION


async def _start(service: Service, demo: dict[str, str], order: str) -> str:
    context = {"order_id": order, "customer_id": "customer-456", "amount": 10, "demo": demo}
    body = {"saga_name": "order-processing", "context": context}
    answer = await curl(
        f"curl -X POST {service.url}/api/v1/sagas/instances -H 'Content-Type: application/json' "
        f"-d '{json.dumps(body)}'"
    )
    assert answer.status == 201, answer.text
    return str(answer.body["saga_id"])


async def _command(service: Service, saga_id: str, command: str, key: str) -> int:
    answer = await curl(
        f"curl -X POST {service.url}/api/v1/sagas/instances/{saga_id}/{command} "
        f"-H 'Content-Type: application/json' -H 'Idempotency-Key: {key}' -d '{{\"reason\": \"ops\"}}'"
    )
    return answer.status


def _cli(data_dir: Path, service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SAGA_")},
        "SAGA_EVENT_STORE__DATA_DIR": str(data_dir / "data"),
        "SAGA_LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_failure_paths_and_the_cli_against_the_running_service(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service:
        definition = tmp_path / "order-processing.json"
        definition.write_text(DEFINITION)
        registered = await asyncio.to_thread(
            _cli, tmp_path, service, "definitions", "register", str(definition), "--url", service.url
        )
        assert registered.returncode == 0, registered.stderr
        assert json.loads(registered.stdout)["created"] is True

        # Dead letter: the payment is declined, then undoing the reservation fails: a person must act.
        dead = await _start(service, {"payment": "reject", "inventory": "compensation-fails"}, "o-dead")
        await _until_status(service, dead, {"dead_lettered"})
        dlq = await curl(f"curl {service.url}/api/v1/sagas/dlq")
        assert dead in [item["saga_id"] for item in dlq.body["items"]]
        assert await _command(service, dead, "resolve", "resolve-1") in (200, 202)
        await _until_status(service, dead, {"compensated"})

        # Manual retry: a misconfigured service suspends the saga; once fixed, a retry (a new
        # idempotency key for the step) completes it.
        stuck = await _start(service, {"order": "misconfigured"}, "o-stuck")
        await _until_status(service, stuck, {"suspended"})
        assert (await curl(f"curl -X POST {service.demo_url}/demo/fix")).status == 200
        assert await _command(service, stuck, "retry", "retry-1") in (200, 202)
        assert await _command(service, stuck, "retry", "retry-1") == 200  # the same key: recorded, no-op
        done = await _until_status(service, stuck, {"completed"})
        validate = next(s for s in done.body["steps"] if s["name"] == "validate-order")
        assert validate["action_call"]["status"] == "succeeded"

        replayed = await asyncio.to_thread(
            _cli, tmp_path, service, "replay", stuck, "--verify", "--url", service.url
        )
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert "ManualInterventionApplied" in replayed.stdout
        assert "verify: read model agrees (status completed" in replayed.stdout

        streams = await asyncio.to_thread(_cli, tmp_path, service, "eventstore", "streams")
        assert streams.returncode == 0, streams.stderr
        assert f"saga-{stuck}" in streams.stdout
        groups = await asyncio.to_thread(_cli, tmp_path, service, "eventstore", "subscriptions")
        assert "orchestrator" in groups.stdout

        rebuilt = await asyncio.to_thread(
            _cli, tmp_path, service, "projections", "rebuild", "--url", service.url
        )
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        assert "rebuild done" in rebuilt.stdout
        # The rebuilt generation serves the same answers.
        again = await curl(f"curl {service.url}/api/v1/sagas/instances/{stuck}")
        assert again.body["status"] == "completed"
        assert again.body["revision"] == done.body["revision"]
        # The saga gauges are refreshed from the read model every few seconds.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            metrics = await curl(f"curl {service.url}/metrics")
            failures = [
                line
                for line in metrics.text.splitlines()
                if line.startswith("saga_failures_total{") and 'reason="dead_lettered"' in line
            ]
            if failures:
                break
            assert loop.time() < deadline, metrics.text[-2000:]
            await asyncio.sleep(0.5)  # bounded by the deadline
        assert float(failures[0].rsplit(" ", 1)[1]) >= 1
    assert service.process.returncode == 0

"""The README's "Command line" examples, as written, against the real service: each ``$ …`` line is run
(``saga-orchestrator`` as ``python -m orchestrator``) and what it prints is compared with the lines under
it, where ``…`` stands for any text and a line of ``…`` alone for any number of lines.

The service runs with a configuration file in the brief's shape, so the same run shows the alias layer
end to end: the state-store note in the start-up log, and ``metrics_enabled: false`` switching off
``/metrics``."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.seed import SEED_START
from tests.system.service import ROOT, Service, curl, free_port, outside_settings, running_service
from tests.system.test_quickstart import _until_status

README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## Command line") : README.index("## Saga definitions")]
BRIEF_SHAPED = """\
orchestrator:
  persistence:
    state_store: "postgresql://localhost:5432/sagas"
  monitoring:
    metrics_enabled: false
"""


@dataclass
class Example:
    env: dict[str, str]
    argv: list[str]
    expected: list[str] = field(default_factory=list)


def examples() -> list[Example]:
    found: list[Example] = []
    for block in re.findall(r"```console\n(.*?)```", SECTION, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                words = shlex.split(line[2:])
                env: dict[str, str] = {}
                while re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                    name, value = words.pop(0).split("=", 1)
                    env[name] = value
                assert words[0] == "saga-orchestrator", line
                found.append(Example(env, words[1:]))
            else:
                found[-1].expected.append(line)
    return found


def pattern(expected: list[str]) -> re.Pattern[str]:
    parts = []
    for line in expected:
        if line == "…":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[^\n]*".join(re.escape(p) for p in line.split("…")) + r"\n")
    return re.compile("".join(parts))


def _local(text: str, service: Service, saga_id: str) -> str:
    return text.replace("http://127.0.0.1:8080", service.url).replace("{saga_id}", saga_id)


def _run(example: Example, service: Service, data_dir: Path, cwd: Path, saga_id: str) -> str:
    env = {
        **outside_settings(),
        "SAGA_EVENT_STORE__DATA_DIR": str(data_dir / "data"),
        "SAGA_SERVER__PORT": str(urlsplit(service.url).port),
        **example.env,
    }
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", *(_local(a, service, saga_id) for a in example.argv)],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # as a terminal shows them: the progress bar is on stderr
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (example.argv, result.stdout)
    return result.stdout


def _check(example: Example, output: str, service: Service, saga_id: str) -> None:
    expected = [_local(line, service, saga_id) for line in example.expected]
    assert pattern(expected).fullmatch(output), (example.argv, expected, output)


def test_the_matcher_is_not_a_rubber_stamp() -> None:
    assert pattern(["a …", "…", "z"]).fullmatch("a 1\nb\nc\nz\n")
    assert pattern(["a …", "…", "z"]).fullmatch("a 1\nz\n")
    assert not pattern(["a …", "z"]).fullmatch("a 1\nb\nz\n")
    assert not pattern(["a"]).fullmatch("a\nb\n")
    assert not pattern(["verify: ok"]).fullmatch("verify: read model differs\n")


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_every_cli_example_in_the_readme_prints_what_it_shows(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(BRIEF_SHAPED)
    cases = examples()
    assert [" ".join(c.argv[:2]) for c in cases] == [
        "serve",
        "definitions register",
        "replay {saga_id}",
        "replay {saga_id}",
        "eventstore streams",
        "eventstore stream",
        "eventstore subscriptions",
        "eventstore parked",
        "projections rebuild",
        "api-keys create",
        "api-keys list",
        "api-keys revoke",
        "audit export",
        "eventstore serve",
        "dev --engines",
    ]
    serve, register, *reads, rebuild, create_key, list_keys, revoke_key, export, serve_store, dev = cases
    await _check_eventstore_serve(serve_store, tmp_path)
    await _check_dev(dev, tmp_path / "dev")
    async with running_service(tmp_path, SAGA_CONFIG=str(config)) as service:
        # serve: the harness runs `python -m orchestrator serve` with SAGA_LOG_FORMAT=json, as shown.
        assert serve.argv == ["serve"]
        assert serve.env == {"SAGA_LOG_FORMAT": "json"}
        log = service.log.read_text()
        _check(serve, log if log.endswith("\n") else log + "\n", service, "")
        # The brief-shaped file: its state_store is noted at start, its metrics_enabled: false is obeyed.
        notes = [json.loads(line) for line in log.splitlines() if '"config_alias_not_used"' in line]
        assert [(n["level"], n["detail"].split(":")[0]) for n in notes] == [
            ("warning", "orchestrator.persistence.state_store")
        ]
        metrics = await curl(f"curl {service.url}/metrics")
        assert metrics.status == 404, metrics.text

        definition = re.search(r"```json\n(.*?)```", README, re.S)
        assert definition is not None
        (tmp_path / "order-processing.json").write_text(definition.group(1))
        output = await asyncio.to_thread(_run, register, service, tmp_path, tmp_path, "")
        _check(register, output, service, "")

        started = await curl(
            f"curl -X POST {service.url}/api/v1/sagas/instances -H 'Content-Type: application/json' "
            f"-d '{SEED_START}'"
        )
        assert started.status == 201, started.text
        saga_id = started.body["saga_id"]
        await _until_status(service, saga_id, {"completed"})

        # The read-only commands open the store beside the service; they may run side by side.
        outputs = await asyncio.gather(
            *(asyncio.to_thread(_run, e, service, tmp_path, tmp_path, saga_id) for e in reads)
        )
        for example, output in zip(reads, outputs, strict=True):
            _check(example, output, service, saga_id)

        output = await asyncio.to_thread(_run, rebuild, service, tmp_path, tmp_path, saga_id)
        _check(rebuild, output, service, saga_id)

        # api-keys: the key the first example creates is the one the last revokes.
        output = await asyncio.to_thread(_run, create_key, service, tmp_path, tmp_path, saga_id)
        _check(create_key, output, service, saga_id)
        key_id = output.split()[0]
        for example in (list_keys, revoke_key):
            example.argv = [a.replace("{key_id}", key_id) for a in example.argv]
            output = await asyncio.to_thread(_run, example, service, tmp_path, tmp_path, saga_id)
            _check(example, output, service, saga_id)

        # audit export: the revocation above is the last record (the projector derives it at once).
        await _until_exported(export, service, tmp_path, saga_id)


async def _check_eventstore_serve(example: Example, tmp_path: Path) -> None:
    """The example as written, in a directory of its own: it prints the line shown once it listens, and
    stops cleanly on SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        *example.argv,
        cwd=tmp_path,
        env={**outside_settings(), **example.env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert pattern(example.expected).fullmatch(line.decode()), (line, example.expected)
        assert (tmp_path / "served-store").is_dir()
    finally:
        process.terminate()
        code = await asyncio.wait_for(process.wait(), 30)
    assert code == 0


async def _check_dev(example: Example, tmp_path: Path) -> None:
    """The example as written (on a free port): once it says it is ready, the README's definition is
    registered and the seed's saga runs to completion through the API process, calling the demo
    participants from an engine process; then SIGTERM stops everything cleanly, with the output shown."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        *example.argv,
        cwd=tmp_path.parent,
        env={
            **outside_settings(),
            "SAGA_EVENT_STORE__DATA_DIR": str(tmp_path),
            "SAGA_SERVER__PORT": str(port),
            **example.env,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    url = f"http://127.0.0.1:{port}"
    try:
        assert process.stdout is not None
        while not any(line.startswith("dev ") and "| ready:" in line for line in lines):
            line = await asyncio.wait_for(process.stdout.readline(), 90)
            assert line, "dev exited before it was ready:\n" + "".join(lines[-30:])
            lines.append(line.decode())
        definition = re.search(r"```json\n(.*?)```", README, re.S)
        assert definition is not None
        registered = await curl(
            f"curl -X POST {url}/api/v1/sagas/definitions -H 'Content-Type: application/json' "
            f"-d '{definition.group(1)}'"
        )
        assert registered.status in (200, 201), registered.text
        started = await curl(
            f"curl -X POST {url}/api/v1/sagas/instances -H 'Content-Type: application/json' -d '{SEED_START}'"
        )
        assert started.status == 201, started.text
        await _until_status(url, started.body["saga_id"], {"completed"})
    finally:
        process.terminate()
        rest, _ = await asyncio.wait_for(process.communicate(), 60)
    lines.append(rest.decode())
    assert process.returncode == 0, "".join(lines[-40:])
    expected = [line.replace("http://127.0.0.1:8080", url) for line in example.expected]
    assert pattern(expected).fullmatch("".join(lines)), (expected, "".join(lines)[-3000:])


async def _until_exported(example: Example, service: Service, tmp_path: Path, saga_id: str) -> None:
    """The export as shown, once the projector has derived the revocation (it follows the store)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        output = await asyncio.to_thread(_run, example, service, tmp_path, tmp_path, saga_id)
        lines = output.splitlines()
        if lines and '"api-key.revoke"' in lines[-1]:
            break
        assert loop.time() < deadline, output
        await asyncio.sleep(0.2)  # the deriver follows the store; bounded by the deadline
    _check(example, output, service, saga_id)
    records = [json.loads(line) for line in lines]
    assert {"definition.register", "saga.start", "api-key.create"} <= {r["action"] for r in records}

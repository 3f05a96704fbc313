"""The real service in a subprocess (``saga-orchestrator serve``) on a fresh data directory, and a
minimal curl for the README's commands."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    url: str
    demo_url: str
    process: subprocess.Popen[bytes]
    log: Path


#: the brief's names for settings (orchestrator.brief_config): a developer's shell may well have them
BRIEF_VARIABLES = ("DATABASE_URL", "CLUSTER_ENABLED")


def outside_settings() -> dict[str, str]:
    """This environment without anything the service would read as a setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SAGA_") and k not in BRIEF_VARIABLES}


def _spawn(environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve"], cwd=ROOT, env=environment, stdout=out, stderr=out
        )


@asynccontextmanager
async def running_service(data_dir: Path, **env: str) -> AsyncIterator[Service]:
    port, demo_port = free_port(), free_port()
    log = data_dir / "service.log"
    environment = {
        **outside_settings(),
        "SAGA_EVENT_STORE__DATA_DIR": str(data_dir / "data"),
        "SAGA_SERVER__PORT": str(port),
        "SAGA_DEMO__PORT": str(demo_port),
        "SAGA_LOG_FORMAT": "json",
        **env,
    }
    process = await asyncio.to_thread(_spawn, environment, log)
    service = Service(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{demo_port}", process, log)
    try:
        await _wait_ready(service)
        yield service
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 60)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 10)


async def _wait_ready(service: Service, within: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with aiohttp.ClientSession() as session:
        while True:
            if service.process.poll() is not None:
                raise AssertionError(f"the service exited: {service.log.read_text()[-3000:]}")
            try:
                async with session.get(f"{service.url}/health/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise AssertionError(f"the service never got ready: {service.log.read_text()[-3000:]}")
            await asyncio.sleep(0.2)  # polling a child process, bounded by the deadline


@dataclass
class Answer:
    status: int
    body: Any
    text: str
    headers: dict[str, str]


def parse_curl(command: str) -> tuple[str, str, dict[str, str], str | None, bool]:
    """(method, url, headers, body, streaming) of one curl command line."""
    args = shlex.split(command)
    assert args[0] == "curl", command
    method, headers, body, streaming, url = "GET", {}, None, False, ""
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "-X":
            method, i = args[i + 1], i + 2
        elif arg == "-H":
            name, _, value = args[i + 1].partition(":")
            headers[name.strip()] = value.strip()
            i += 2
        elif arg in ("-d", "--data"):
            body, i = args[i + 1], i + 2
            if method == "GET":
                method = "POST"
        elif arg == "-N":
            streaming, i = True, i + 1
        else:
            url, i = arg, i + 1
    return method, url, headers, body, streaming


async def curl(command: str, *, stream_seconds: float = 3.0) -> Answer:
    method, url, headers, body, streaming = parse_curl(command)
    timeout = aiohttp.ClientTimeout(total=stream_seconds if streaming else 30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, headers=headers, data=body) as response,
    ):
        chunks: list[bytes] = []
        try:
            async for chunk in response.content.iter_any():
                chunks.append(chunk)
        except TimeoutError:
            pass  # an open stream read for `stream_seconds`
        text = b"".join(chunks).decode()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return Answer(response.status, parsed, text, dict(response.headers))


def bash_blocks(readme: str, start: str, end: str) -> list[str]:
    """The curl commands of the bash blocks between two markers: backslash continuations joined, a
    quoted argument may span lines, comment lines skipped."""
    section = readme[readme.index(start) : readme.index(end)]
    commands: list[str] = []
    for block in section.split("```bash\n")[1:]:
        pending = ""
        for line in block.split("```", 1)[0].splitlines():
            if not pending and not line.strip().startswith("curl "):
                continue  # blank lines and comments between commands
            pending = f"{pending}\n{line}" if pending else line
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            try:
                shlex.split(pending)
            except ValueError:
                continue  # inside a quoted argument that goes on
            commands.append(pending.strip())
            pending = ""
    return commands

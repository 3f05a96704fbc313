"""The README's "Running with JWT, and with an API key" block, run as written against the real service in
a subprocess: the key pair and tokens from the CLI, the service in jwt mode with the shown variables, an
admin token registering a definition, an API key created with it, and a start made with the key alone.

What differs from a shell, and only that: the service runs from the repository (so the relative
``jwt.pub`` is given as the absolute path of the file the first command wrote), on a free port instead of
8080, and ``sk_…`` is the secret the ``api-keys create`` command printed."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.service import ROOT, curl, outside_settings, running_service

README = (ROOT / "README.md").read_text()
BLOCK = README[README.index("#### Running with JWT") :]
COMMANDS = [
    line.removeprefix("$ ")
    for line in re.search(r"```console\n(.*?)```", BLOCK, re.S).group(1).splitlines()  # type: ignore[union-attr]
    if line.startswith("$ ")
]


def _cli(cwd: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env={**outside_settings(), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_jwt_and_api_key_walkthrough_runs_as_written(tmp_path: Path) -> None:
    keypair, *exports_and_rest = COMMANDS
    assert keypair == "saga-orchestrator auth keypair --out jwt"
    _cli(tmp_path, {}, *shlex.split(keypair)[1:])
    assert (tmp_path / "jwt.key").stat().st_mode & 0o077 == 0  # the private key is the owner's alone
    env: dict[str, str] = {}
    rest = list(exports_and_rest)
    while rest[0].startswith("export SAGA_"):
        for assignment in shlex.split(rest.pop(0))[1:]:
            name, _, value = assignment.partition("=")
            env[name] = value
    env["SAGA_AUTH__JWT__PUBLIC_KEY_FILES"] = json.dumps([str(tmp_path / "jwt.pub")])
    serve, token_line, register, create_key, start = rest
    assert serve == "saga-orchestrator serve &"
    definition = re.search(r"```json\n(.*?)```", README, re.S)
    assert definition is not None

    async with running_service(tmp_path, **env) as service:
        # export ORCHESTRATOR_TOKEN=$(saga-orchestrator auth token …)
        inner = re.fullmatch(r"export ORCHESTRATOR_TOKEN=\$\((.*)\)", token_line)
        assert inner is not None
        token = _cli(tmp_path, {}, *shlex.split(inner.group(1))[1:]).strip()
        local = {"ORCHESTRATOR_TOKEN": token}

        command = register.replace("http://127.0.0.1:8080", service.url)
        command = command.replace("$ORCHESTRATOR_TOKEN", token)
        command = command.replace("-d @order-processing.json", f"-d {shlex.quote(definition.group(1))}")
        answer = await curl(command)
        assert answer.status == 201, answer.text

        # Without a token, or with a forged one, nothing gets in.
        unauthenticated = await curl(command.replace(f"Bearer {token}", "Bearer nope"))
        assert unauthenticated.status == 401
        assert unauthenticated.headers["WWW-Authenticate"].startswith("Bearer")

        env_url = {**local, "SAGA_SERVER__PORT": service.url.rsplit(":", 1)[1]}
        created = _cli(tmp_path, env_url, *shlex.split(create_key)[1:])
        secret = re.search(r"^secret: (sk_\S+)$", created, re.M)
        assert secret is not None, created

        command = start.replace("http://127.0.0.1:8080", service.url).replace("sk_…", secret.group(1))
        answer = await curl(command)
        assert answer.status == 201, answer.text
        assert answer.body["status"] == "running"

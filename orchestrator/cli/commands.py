"""What each CLI command does. ``serve`` composes the service (see :mod:`orchestrator.composition`); the
tools read the store read-only or talk to the running service's API."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.cli import inspect
from orchestrator.cli.replay import render, replay, verify
from orchestrator.eventstore.errors import EventStoreError, StreamNotFound
from orchestrator.settings import Settings


class CliError(Exception):
    """A command failed in a way the user can act on; the message says how."""


def _base_url(settings: Settings, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    host = settings.server.host if settings.server.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104 - comparing, not binding
    return f"http://{host}:{settings.server.port}"


async def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.composition import open_store, serve

    if args.command == "serve":
        return await serve(settings, args.role)
    if args.command == "replay":
        return await _replay(args, settings)
    if args.command == "definitions":
        return await _register(args, settings)
    if args.command == "projections":
        return await _rebuild(args, settings)
    if args.command == "api-keys":
        return await _api_keys(args, settings)
    if args.command == "audit":
        return await _audit_export(args, settings)
    try:
        async with open_store(settings, read_only=True) as store:
            match args.action:
                case "streams":
                    print(await inspect.streams(store, args.prefix, args.limit))
                case "stream":
                    print(await inspect.stream(store, args.name))
                case "subscriptions":
                    print(await inspect.subscriptions(store))
                case "parked":
                    print(await inspect.parked(store, args.group, args.limit))
    except EventStoreError as e:
        raise CliError(str(e)) from e
    return 0


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.composition import open_store

    try:
        async with open_store(settings, read_only=True) as store:
            events = list(await store.read_stream(f"saga-{args.saga_id}"))
    except StreamNotFound as e:
        raise CliError(f"no saga {args.saga_id}") from e
    except EventStoreError as e:
        raise CliError(str(e)) from e
    result = replay(events)
    if args.tenant and result.final is not None and result.final.tenant != args.tenant:
        raise CliError(f"no saga {args.saga_id}")
    print(render(result, at=args.at))
    if args.verify:
        problems = verify(events, result)
        if result.final is not None:
            problems += await _compare_read_model(args, settings, result)
        print("verify: ok" if not problems else "\n".join(f"verify: {p}" for p in problems))
        return 0 if not problems else 3
    return 0


async def _compare_read_model(args: argparse.Namespace, settings: Settings, result: Any) -> list[str]:
    """The read model's view of the saga (through the service's API) against the fold."""
    final = result.final
    url = f"{_base_url(settings, args.url)}/api/v1/sagas/instances/{args.saga_id}"
    try:
        status, view = await _call("GET", url, headers={"X-Tenant-Id": final.tenant})
    except CliError as e:
        print(f"verify: read model not compared ({e})")
        return []
    if status != 200 or not isinstance(view, dict):
        return [f"read model: GET {url} answered {status}"]
    problems = []
    if view.get("status") != final.status.value:
        problems.append(f"read model status {view.get('status')!r}, fold {final.status.value!r}")
    if view.get("revision") != final.revision:
        problems.append(f"read model at revision {view.get('revision')}, stream at {final.revision}")
    if not problems:
        print(f"verify: read model agrees (status {final.status.value}, revision {final.revision})")
    return problems


#: credentials the through-the-API commands send, from the environment (never a flag: shell history)
TOKEN_VARIABLE, API_KEY_VARIABLE = "ORCHESTRATOR_TOKEN", "ORCHESTRATOR_API_KEY"


def _credentials() -> dict[str, str]:
    if token := os.environ.get(TOKEN_VARIABLE):
        return {"Authorization": f"Bearer {token}"}
    if key := os.environ.get(API_KEY_VARIABLE):
        return {"X-API-Key": key}
    return {}


async def _call(method: str, url: str, **kw: Any) -> tuple[int, Any]:
    kw["headers"] = {**_credentials(), **kw.get("headers", {})}
    try:
        async with aiohttp.ClientSession() as session, session.request(method, url, **kw) as response:
            text = await response.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = text
            return response.status, body
    except aiohttp.ClientError as e:
        raise CliError(
            f"cannot reach the service at {url}: {e} (is `saga-orchestrator serve` running?)"
        ) from e


async def _register(args: argparse.Namespace, settings: Settings) -> int:
    try:
        body = await asyncio.to_thread(Path(args.file).read_bytes)
    except OSError as e:
        raise CliError(f"{args.file}: {e.strerror}") from e
    headers = {"Content-Type": "application/json"}
    if args.tenant:
        headers["X-Tenant-Id"] = args.tenant
    status, answer = await _call(
        "POST", f"{_base_url(settings, args.url)}/api/v1/sagas/definitions", data=body, headers=headers
    )
    print(json.dumps(answer, indent=2) if not isinstance(answer, str) else answer)
    return 0 if status < 400 else 1


def _fraction(progress: dict[str, Any]) -> float:
    """How far the rebuild is, from its elapsed time and the projector's estimate of what is left."""
    if progress.get("phase") == "done":
        return 1.0
    elapsed = progress.get("elapsed_seconds") or 0.0
    eta = progress.get("eta_seconds")
    if not isinstance(eta, int | float) or elapsed + eta <= 0:
        return 0.0
    return min(1.0, elapsed / (elapsed + eta))


async def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    # rich draws the bar on a terminal and prints its last state once elsewhere (a log, a pipe).
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    url = f"{_base_url(settings, args.url)}/api/v1/admin/projections/rebuild"
    status, answer = await _call("POST", url)
    if status >= 400:
        print(json.dumps(answer, indent=2), file=sys.stderr)
        return 1
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[events]:,} events, {task.fields[rate]:,.0f}/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("rebuild", total=1.0, events=0, rate=0.0)
        while True:
            status, body = await _call("GET", url)
            if status >= 400 or not isinstance(body, dict):
                bar.stop()
                print(json.dumps(body, indent=2), file=sys.stderr)
                return 1
            progress = body.get("progress") or {}
            generation, phase = progress.get("generation", "?"), progress.get("phase", "starting")
            bar.update(
                task,
                completed=_fraction(progress),
                description=f"generation {generation} {phase}",
                events=progress.get("events_applied", 0),
                rate=progress.get("events_per_second", 0.0),
            )
            error = body.get("error") or progress.get("error")
            if error:
                bar.stop()
                print(f"rebuild failed: {error}", file=sys.stderr)
                return 1
            if not body.get("running") and progress.get("phase") == "done":
                break
            await asyncio.sleep(0.5)
    print(f"rebuild done: generation {progress.get('generation')} is serving", flush=True)
    return 0


async def _api_keys(args: argparse.Namespace, settings: Settings) -> int:
    base = f"{_base_url(settings, args.url)}/api/v1/api-keys"
    headers = {"X-Tenant-Id": args.tenant} if args.tenant else {}
    match args.action:
        case "create":
            body: dict[str, Any] = {"name": args.name, "roles": [r.strip() for r in args.roles.split(",")]}
            if args.expires_in_days is not None:
                body["expires_in_s"] = round(args.expires_in_days * 86400)
            status, answer = await _call("POST", base, json=body, headers=headers)
        case "list":
            status, answer = await _call("GET", base, headers=headers)
        case "rotate":
            url = f"{base}/{args.key_id}/rotate"
            status, answer = await _call("POST", url, json={"grace_s": args.grace_s}, headers=headers)
        case _:
            url = f"{base}/{args.key_id}/revoke"
            status, answer = await _call("POST", url, json={"reason": args.reason}, headers=headers)
    if status >= 400 or not isinstance(answer, dict):
        print(json.dumps(answer, indent=2) if not isinstance(answer, str) else answer, file=sys.stderr)
        return 1
    if "secret" in answer:
        print(_key_line(answer["key"]))
        print(f"secret: {answer['secret']}")
        print("(shown this once: only its hash is kept)")
    elif "items" in answer:
        for key in answer["items"]:
            print(_key_line(key))
    else:
        print(_key_line(answer))
    return 0


def _key_line(key: dict[str, Any]) -> str:
    used = key.get("last_used_at") or "never used"
    expires = f"expires {key['expires_at']}" if key.get("expires_at") else "no expiry"
    return (
        f"{key['key_id']}  {key['status']:<7}  {','.join(key['roles'])}  {key['name']!r}  {expires}, {used}"
    )


async def _audit_export(args: argparse.Namespace, settings: Settings) -> int:
    """Every record in the range, one JSON object a line, a page at a time (compliance reporting)."""
    url = f"{_base_url(settings, args.url)}/api/v1/audit"
    headers = {"X-Tenant-Id": args.tenant} if args.tenant else {}
    query: dict[str, str] = {"limit": "1000"}
    for name in ("since", "until"):
        value = getattr(args, name)
        if value is not None:
            query[name] = value.replace("Z", "+00:00") if value.endswith("Z") else value
    while True:
        status, body = await _call("GET", url, params=query, headers=headers)
        if status >= 400 or not isinstance(body, dict):
            print(json.dumps(body, indent=2) if not isinstance(body, str) else body, file=sys.stderr)
            return 1
        for record in body["items"]:
            present = {k: v for k, v in record.items() if v is not None}
            print(json.dumps(present, sort_keys=True, ensure_ascii=False))
        if not body["items"] or body.get("next_cursor") is None:
            return 0
        query["cursor"] = body["next_cursor"]

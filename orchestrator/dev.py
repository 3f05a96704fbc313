"""The production shape on one machine, without Docker: the local KurrentDB-compatible server, Redis, the
demo participants and the roles (API, engines, projector) each as its own process, one log stream.

``saga-orchestrator dev --engines N`` runs it until Ctrl-C; the multi-process system tests drive the same
:class:`Deployment` (kill one process, read what happened). The store is a :class:`StoreProcess`: the
local server by default, or any connection URL the roles are given as is (a real KurrentDB, later other
stores), so a test of the deployment can be parametrised by store.

Every child is started with ``subprocess`` (fork and exec at once), never forked from a process that runs
gRPC. A child's lines are passed to one sink with its name; the roles log as they would in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

#: (process name, one line it wrote, without the newline)
Sink = Callable[[str, str], None]

#: how long a child may take to print its first line or answer /health/ready
START_TIMEOUT_S = 60.0
#: after SIGTERM, how long a child may take before it is killed
STOP_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def print_sink(width: int = 12) -> Sink:
    """Each line prefixed by its process's name, on this process's stdout: the one log stream of ``dev``."""

    def sink(name: str, line: str) -> None:
        print(f"{name:<{width}}| {line}", flush=True)

    return sink


class Child:
    """One child process: its lines go to the sink under its name."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, sink: Sink) -> None:
        self.name = name
        self.process = process
        self._sink = sink
        self._first_line: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pump = asyncio.create_task(self._read(), name=f"dev-log-{name}")

    @classmethod
    async def spawn(cls, name: str, argv: Sequence[str], env: Mapping[str, str], sink: Sink) -> Child:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            # Its own process group: Ctrl-C in a terminal reaches the supervisor, which stops the roles
            # in order, instead of every child at once.
            start_new_session=True,
        )
        return cls(name, process, sink)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def first_line(self, within: float) -> str:
        """The first line the child wrote ('' if it exited first)."""
        return await asyncio.wait_for(asyncio.shield(self._first_line), within)

    async def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        try:
            while line := await stream.readline():
                text = line.decode("utf-8", errors="replace").rstrip("\n")
                if not self._first_line.done():
                    self._first_line.set_result(text)
                self._sink(self.name, text)
        finally:
            if not self._first_line.done():
                self._first_line.set_result("")

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind (what a crash or the OOM killer does)."""
        if self.running:
            self.process.send_signal(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the process is frozen where it is (what a long GC pause or a stalled VM looks like)."""
        if self.running:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a paused process carries on, its timers all due at once."""
        if self.running:
            self.process.send_signal(signal.SIGCONT)

    async def stop(self, grace: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL if it is still running after ``grace`` seconds; its exit code."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            self.kill()
            code = await self.process.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        return code


class StoreProcess:
    """Where the roles' events live: :meth:`start` gives the connection URL they are configured with."""

    name = "store"

    async def start(self, directory: Path, sink: Sink) -> str:
        raise NotImplementedError

    async def stop(self) -> None:
        return None


@dataclass
class ExternalStore(StoreProcess):
    """A store that runs elsewhere (a real KurrentDB, say): nothing to start."""

    url: str

    async def start(self, directory: Path, sink: Sink) -> str:
        return self.url


@dataclass
class LocalServer(StoreProcess):
    """``python -m orchestrator.eventstore.server`` on ``directory/eventstore`` (the embedded store's
    layout, so ``serve`` and ``dev`` can take turns on the same data directory)."""

    host: str = "127.0.0.1"
    port: int = 0
    child: Child | None = field(default=None, init=False)

    async def start(self, directory: Path, sink: Sink) -> str:
        from orchestrator.eventstore.server.app import LISTENING  # the constant only: no gRPC here

        argv = [sys.executable, "-m", "orchestrator.eventstore.server", "--data-dir", str(directory)]
        argv += ["--host", self.host, "--port", str(self.port)]
        self.child = await Child.spawn("eventstore", argv, os.environ, sink)
        line = await self.child.first_line(START_TIMEOUT_S)
        if not line.startswith(LISTENING):
            await self.child.stop()
            raise RuntimeError(f"the local event store server did not start (it said {line!r})")
        address = line.removeprefix(LISTENING).strip()
        return f"kurrentdb://{address}?tls=false"

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop()


@dataclass(frozen=True)
class Topology:
    """How many processes of each role; the first API process gets the configured port."""

    apis: int = 1
    engines: int = 2
    projectors: int = 1

    def names(self) -> list[tuple[str, str]]:
        """(process name, role) in start order: projector first (reads catch up), then engines, APIs."""
        out = [(f"projector-{i + 1}" if self.projectors > 1 else "projector", "projector")
               for i in range(self.projectors)]  # fmt: skip
        out += [(f"engine-{i + 1}", "engine") for i in range(self.engines)]
        out += [(f"api-{i + 1}" if self.apis > 1 else "api", "api") for i in range(self.apis)]
        return out


@dataclass(frozen=True)
class Role:
    name: str
    role: str
    url: str


class Deployment:
    """The store, Redis, optionally the demo participants, and the roles as processes.

    Every role gets ``base_environment`` (default: this process's), then ``environment`` (engine tuning,
    log format), then what the deployment sets itself (store URL, Redis, port, its own data directory).
    ``services`` is a service registry the roles get on top of their own settings (``ServiceConfig``
    fields by service name); with ``demo`` the demo participants run as a process of their own and fill
    in the names neither has (``configured``: the names the roles' settings have), as in an embedded
    ``serve``."""

    def __init__(
        self,
        directory: Path,
        *,
        topology: Topology = Topology(),
        store: StoreProcess | None = None,
        redis_url: str = "",
        services: Mapping[str, Mapping[str, Any]] | None = None,
        demo: bool = True,
        configured: Sequence[str] = (),
        environment: Mapping[str, str] | None = None,
        base_environment: Mapping[str, str] | None = None,
        api_port: int = 0,
        sink: Sink | None = None,
    ) -> None:
        self.directory = directory
        self.topology = topology
        self.store = store if store is not None else LocalServer()
        self._redis_url = redis_url
        self._services = {name: dict(config) for name, config in (services or {}).items()}
        self._demo = demo
        #: service names the roles' own settings already have (the demo does not replace them)
        self._configured = frozenset(configured)
        self._environment = dict(environment or {})
        self._base = dict(base_environment if base_environment is not None else os.environ)
        self._api_port = api_port
        self._sink = sink if sink is not None else print_sink()
        self._children: dict[str, Child] = {}
        #: how each role process was started (restart starts it the same way)
        self._spawned: dict[str, tuple[str, int, Mapping[str, Mapping[str, Any]]]] = {}
        self.roles: dict[str, Role] = {}
        self.store_url = ""
        self.redis_url = ""
        self.demo_url = ""
        self._cleanup: list[Callable[[], Awaitable[None]]] = []

    # -- what a caller uses --------------------------------------------------------------------------

    @property
    def api_urls(self) -> list[str]:
        return [r.url for r in self.roles.values() if r.role == "api"]

    def names_of(self, role: str) -> list[str]:
        return [r.name for r in self.roles.values() if r.role == role]

    def child(self, name: str) -> Child:
        return self._children[name]

    def kill(self, name: str) -> None:
        self._children[name].kill()

    async def stop_role(self, name: str) -> int:
        return await self._children[name].stop()

    def exited(self) -> dict[str, int]:
        """Children that are no longer running, with their exit codes."""
        return {
            n: c.process.returncode for n, c in self._children.items() if c.process.returncode is not None
        }

    def say(self, line: str) -> None:
        """A line of the deployment's own in the log stream."""
        self._sink("dev", line)

    def describe(self) -> str:
        roles = ", ".join(f"{r.url} ({r.name})" if r.role == "api" else r.name for r in self.roles.values())
        demo = f"; demo participants {self.demo_url}" if self.demo_url else ""
        return f"ready: {roles}; event store {self.store_url}; redis {self.redis_url}{demo}"

    # -- lifecycle -----------------------------------------------------------------------------------

    async def __aenter__(self) -> Deployment:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.store_url = await self.store.start(self.directory / "eventstore", self._sink)
        self._cleanup.append(self.store.stop)
        self.redis_url = self._redis_url or await self._start_redis()
        demo = await self._start_demo() if self._demo else {}
        # Only what the roles' own configuration lacks: they read the rest (secrets included) themselves.
        services = {n: c for n, c in demo.items() if n not in self._configured} | self._services
        for name, role in self.topology.names():
            port = self._api_port if role == "api" and not self.names_of("api") and self._api_port else 0
            await self._start_role(name, role, port or free_port(), services)
        await asyncio.gather(*(self._ready(r) for r in self.roles.values()))

    async def stop(self) -> None:
        """APIs first (no new work), then engines (calls in flight finish and are recorded), then the
        projector, the demo participants, Redis and the store last."""
        order = {"api": 0, "engine": 1, "projector": 2}
        for rank in sorted(set(order.values())):
            batch = [self._children[r.name] for r in self.roles.values() if order[r.role] == rank]
            await asyncio.gather(*(c.stop() for c in batch))
        if "demo" in self._children:
            await self._children["demo"].stop()
        while self._cleanup:
            with contextlib.suppress(Exception):
                await self._cleanup.pop()()

    async def _start_redis(self) -> str:
        from projections.embedded_redis import EmbeddedRedis

        redis = EmbeddedRedis(self.directory / "redis")
        url = await asyncio.to_thread(redis.start)

        async def stop() -> None:
            await asyncio.to_thread(redis.stop)

        self._cleanup.append(stop)
        return url

    async def _start_demo(self) -> dict[str, dict[str, Any]]:
        from orchestrator.demo.services import OPERATIONS

        port = free_port()
        argv = [sys.executable, "-m", "orchestrator.demo", "--host", "127.0.0.1", "--port", str(port)]
        child = await Child.spawn("demo", argv, self._env({}), self._sink)
        self._children["demo"] = child
        self.demo_url = f"http://127.0.0.1:{port}"
        await self._wait_http(child, f"{self.demo_url}/health")
        return {service: {"base_url": f"{self.demo_url}/{service}"} for service, _ in OPERATIONS}

    def _env(self, own: Mapping[str, str]) -> dict[str, str]:
        inherited = {k: v for k, v in self._base.items() if k not in own}
        return {**inherited, **self._environment, **own}

    async def _start_role(
        self, name: str, role: str, port: int, services: Mapping[str, Mapping[str, Any]]
    ) -> None:
        own = {
            "SAGA_EVENT_STORE__URL": self.store_url,
            # Each role's own files (an engine's timer index) under its own directory.
            "SAGA_EVENT_STORE__DATA_DIR": str(self.directory / name),
            "SAGA_REDIS__URL": self.redis_url,
            "SAGA_SERVER__HOST": "127.0.0.1",
            "SAGA_SERVER__PORT": str(port),
            "SAGA_DEMO__ENABLED": "off",
        }
        if services:
            own["SAGA_SERVICES"] = json.dumps(services)
        argv = [sys.executable, "-m", "orchestrator", "serve", "--role", role]
        self._children[name] = await Child.spawn(name, argv, self._env(own), self._sink)
        self.roles[name] = Role(name, role, f"http://127.0.0.1:{port}")
        self._spawned[name] = (role, port, services)

    async def restart(self, name: str) -> int:
        """Stop one role process (SIGTERM, as a rolling restart does), start it again with the same
        settings, port and data directory, and wait until it is ready; the old process's exit code."""
        code = await self._children[name].stop()
        role, port, services = self._spawned[name]
        await self._start_role(name, role, port, services)
        await self._ready(self.roles[name])
        return code

    async def _ready(self, role: Role) -> None:
        await self._wait_http(self._children[role.name], f"{role.url}/health/ready")

    async def _wait_http(self, child: Child, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if not child.running:
                    raise RuntimeError(
                        f"{child.name} exited with {child.process.returncode} before it was ready"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{child.name} was not ready within {START_TIMEOUT_S:.0f} s ({url})")


async def run(deployment: Deployment) -> int:
    """``saga-orchestrator dev``: start everything, say where, run until SIGINT/SIGTERM or a child dies."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with deployment:
        deployment.say(deployment.describe())
        died: dict[str, int] = {}
        while not stop.is_set() and not died:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            died = deployment.exited()
        if died:
            deployment.say(f"stopping: {', '.join(f'{n} exited with {c}' for n, c in died.items())}")
        else:
            deployment.say("stopping")
    deployment.say("stopped")
    return 1 if died else 0

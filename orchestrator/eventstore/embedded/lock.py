"""The embedded store is single-process by contract: an exclusive lock on its data directory."""

from __future__ import annotations

import fcntl
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.eventstore.errors import StoreLocked

LOCK_FILE = "LOCK"


class DirectoryLock:
    """``flock`` on ``<dir>/LOCK``; the holder writes its pid so a second opener can be told who it is.

    The kernel drops the lock when the process dies, however it dies, so there is no stale lock to clean.
    """

    def __init__(self, directory: Path) -> None:
        self._path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_holder(fd)
            os.close(fd)
            raise StoreLocked(str(self._path.parent), holder) from None
        self._fd = fd
        try:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()} since={stamp}\n".encode(), 0)
        except BaseException:
            self.release()  # an open descriptor would hold the lock until this process exits
            raise

    @staticmethod
    def _read_holder(fd: int) -> str:
        text = os.pread(fd, 512, 0).decode(errors="replace").strip()
        return f"process {text}" if text else "another process"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

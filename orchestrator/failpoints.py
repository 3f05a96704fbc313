"""Named failpoints: the places where a test injects a crash or an error, so that "kill between park and
checkpoint" hits that window every time instead of by luck.

Inert unless armed. Production code calls ``hit("writer.after_commit")`` at the point; a test arms it in
process with :func:`armed` (any callable: raise, sleep, record) or, for a child process, through the
environment::

    SAGA_FAILPOINTS="writer.after_commit=kill@3,actor.after_call=raise"

``kill`` SIGKILLs the process (no cleanup, like a power cut), ``raise`` raises :class:`FailpointError`;
``@N`` fires on the N-th hit only (counting from 1), otherwise on every hit. Every name used in the code is
listed in :data:`NAMES`, so arming a misspelt point fails loudly instead of silently never firing.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

#: every failpoint in the code, and the window it marks
NAMES: dict[str, str] = {
    "writer.after_commit": "the group's COMMIT returned; nothing acknowledged yet (writer thread)",
    "persistent.after_park": "a parked message is durable; the checkpoint past it is not written yet",
    "actor.after_intent": "an intent is durable; its call has not been sent",
    "actor.after_call": "a call returned; its outcome is not appended yet",
    "actor.after_outcome": "an outcome (with the next intents) is durable; nothing after it has run",
}

Action = Callable[[], None]
_armed: dict[str, Action] = {}


class FailpointError(Exception):
    """Raised by a failpoint armed with ``raise``."""


def hit(name: str) -> None:
    """Run the action armed at ``name``, if any (a dictionary lookup when nothing is armed)."""
    if _armed:
        action = _armed.get(name)
        if action is not None:
            action()


def arm(name: str, action: Action) -> None:
    if name not in NAMES:
        raise KeyError(f"no failpoint named {name!r}; known: {', '.join(sorted(NAMES))}")
    _armed[name] = action


def disarm(name: str) -> None:
    _armed.pop(name, None)


@contextlib.contextmanager
def armed(name: str, action: Action) -> Iterator[None]:
    arm(name, action)
    try:
        yield
    finally:
        disarm(name)


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _raise(name: str) -> Action:
    def action() -> None:
        raise FailpointError(f"failpoint {name} fired")

    return action


def _nth(n: int, action: Action) -> Action:
    count = 0

    def on_nth() -> None:
        nonlocal count
        count += 1
        if count == n:
            action()

    return on_nth


def arm_from_spec(spec: str) -> None:
    """Arm from ``name=kill|raise[@N],…`` (the ``SAGA_FAILPOINTS`` form)."""
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, what = item.partition("=")
        kind, _, nth = what.partition("@")
        if kind == "kill":
            action: Action = _kill
        elif kind == "raise":
            action = _raise(name)
        else:
            raise ValueError(f"failpoint {name!r}: unknown action {what!r} (kill or raise, optionally @N)")
        arm(name, _nth(int(nth), action) if nth else action)


if os.environ.get("SAGA_FAILPOINTS"):
    arm_from_spec(os.environ["SAGA_FAILPOINTS"])

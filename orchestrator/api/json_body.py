"""Reading a JSON request body defensively, before any model sees it.

The standard library's ``json`` accepts things that must not reach the store or a participant: NaN and
Infinity, duplicate keys (last one silently wins), lone surrogates (not encodable as UTF-8), integers too
large for other JSON parsers (and, beyond 4300 digits, a ``ValueError`` from CPython's int guard), and
nesting deep enough to hit the recursion limit. Each is refused here with a problem naming it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from aiohttp import web

from orchestrator.api.problems import FieldProblem, Problem

MAX_DEPTH = 64
#: integers other JSON parsers (JavaScript, many JSON libraries) read exactly: |n| <= 2^53 - 1
MAX_SAFE_INTEGER = 2**53 - 1
#: a number literal longer than this is refused before it is converted at all
MAX_NUMBER_CHARS = 100
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class _Refused(Exception):
    def __init__(self, kind: str, problem: str) -> None:
        super().__init__(problem)
        self.kind = kind
        self.problem = problem


def _refuse(status: int, kind: str, problem: str) -> Problem:
    return Problem(status, kind, f"request body: {problem}", [FieldProblem("body", problem)])


def check_content_type(request: web.Request) -> None:
    ctype = request.content_type  # aiohttp lower-cases it and strips parameters
    if ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
        got = request.headers.get("Content-Type", "nothing")
        raise Problem(
            415,
            "unsupported-media-type",
            f"the body must be application/json, not {got}",
            [FieldProblem("header.Content-Type", f"must be application/json, not {got}")],
        )
    charset = request.charset
    if charset is not None and charset.lower().replace("_", "-") not in {"utf-8", "utf8"}:
        raise Problem(
            415,
            "unsupported-media-type",
            f"the body must be UTF-8, not {charset}",
            [FieldProblem("header.Content-Type", f"charset must be utf-8, not {charset}")],
        )


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The raw body, refusing (413) as soon as it exceeds ``max_bytes`` — also when chunked."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise _refuse(413, "body-too-large", f"{declared} bytes exceed the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise _refuse(413, "body-too-large", f"more than {max_bytes} bytes (the limit)")
        chunks.append(chunk)
    return b"".join(chunks)


def _depth(text: str) -> int:
    # Strings may hold brackets; drop them first, then count the structural ones that remain.
    deepest = depth = 0
    for m in _BRACKETS.finditer(_STRINGS.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused("duplicate-key", f"duplicate key {key!r} in an object")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise _Refused("non-finite-number", f"{name} is not a JSON number (NaN and Infinity are refused)")


def _int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _Refused("number-too-large", f"an integer of {len(literal)} digits is too large")
    value = int(literal)
    if abs(value) > MAX_SAFE_INTEGER:
        raise _Refused("number-too-large", f"integer {literal} is outside ±(2^53 - 1)")
    return value


def _float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _Refused("number-too-large", f"a number literal of {len(literal)} characters is too long")
    value = float(literal)
    if not math.isfinite(value):
        raise _Refused("number-too-large", f"number {literal} does not fit a 64-bit float")
    return value


def _check_strings(value: Any, path: str) -> None:
    """Lone surrogates (``"\\ud800"``) decode to text that cannot be written as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise _Refused(
                "lone-surrogate", f"{path or 'a string'} holds a lone surrogate (\\u escape)"
            ) from e
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, f"{path}.<key>")
            _check_strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_strings(item, f"{path}[{i}]")


def parse_json(raw: bytes) -> Any:
    """Decode a body; raise a 400 :class:`Problem` naming what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _refuse(400, "invalid-utf8", f"not valid UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise _refuse(400, "invalid-json", "empty; a JSON object is required")
    if _depth(text) > MAX_DEPTH:
        raise _refuse(400, "too-deep", f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(
            text, object_pairs_hook=_pairs, parse_constant=_constant, parse_int=_int, parse_float=_float
        )
        _check_strings(value, "")
    except _Refused as e:
        raise _refuse(400, e.kind, e.problem) from None
    except json.JSONDecodeError as e:
        raise _refuse(
            400, "invalid-json", f"not valid JSON: {e.msg} (line {e.lineno} column {e.colno})"
        ) from None
    except (ValueError, RecursionError) as e:
        raise _refuse(400, "invalid-json", f"not valid JSON: {e}") from None
    return value


async def read_json(request: web.Request, max_bytes: int) -> Any:
    check_content_type(request)
    return parse_json(await read_body(request, max_bytes))

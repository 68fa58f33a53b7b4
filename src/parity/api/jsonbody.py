"""The one JSON body parser of the API: every request body read as JSON goes through
:func:`loads`, whether FastAPI parses it for a model (:class:`JsonRoute`) or a route parses
it itself.

JSON's ``\\uXXXX`` escapes can spell a UTF-16 surrogate on its own (``"\\ud800"``): valid
JSON syntax, but not Unicode text. Python's parser accepts it and yields a string that cannot
be encoded as UTF-8, so it would fail later — in a database driver, a log line or the error
message that echoes it — as a 500. :func:`loads` refuses it up front as a
:class:`json.JSONDecodeError` at the escape's position, which the API answers as 422
``invalid_json`` (line, column, position). A correct pair (``"\\ud83d\\ude00"``) is one
character and passes.

The escape ``\\u0000`` (NUL) is refused the same way: valid JSON, but no text column of this
API can hold it (PostgreSQL's ``text`` refuses it), so it is refused on both databases alike
before anything is written, instead of failing at the database with no field named.

orjson parses first (it refuses lone surrogates itself, and is faster); what it refuses —
NaN and Infinity, integers past 64 bits, lone surrogates — is parsed again by the standard
parser, so the checks that name a field still see NaN and large numbers. A body nested too
deeply for the standard parser is refused as not JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

__all__ = ["JsonRequest", "JsonRoute", "loads"]

# One escape at a time, in order: `\\` is consumed whole, so `\\ud800` (a backslash, then
# the text "ud800") is never read as an escape.
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


def _is_high(unit: int) -> bool:
    return 0xD800 <= unit <= 0xDBFF


def _is_low(unit: int) -> bool:
    return 0xDC00 <= unit <= 0xDFFF


def lone_surrogate(doc: str) -> int | None:
    """The position of the first ``\\uXXXX`` escape in ``doc`` that spells a surrogate
    without its partner, or None."""
    pending: int | None = None  # position of a high surrogate awaiting its low half
    last_end = -1
    for m in _ESCAPE.finditer(doc):
        hex4 = m.group(1)
        unit = int(hex4, 16) if hex4 is not None else None
        if pending is not None:
            if unit is not None and _is_low(unit) and m.start() == last_end:
                pending = None
                last_end = m.end()
                continue
            return pending
        if unit is not None and _is_high(unit):
            pending = m.start()
        elif unit is not None and _is_low(unit):
            return m.start()
        last_end = m.end()
    return pending


MAX_DEPTH = 1024  # orjson's limit: the same on both parsers
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPENERS = frozenset("[{")


def _depth(doc: str) -> int:
    """How deeply ``doc``'s arrays and objects nest (brackets inside strings not counted)."""
    deepest = depth = 0
    for ch in _STRING.sub("", doc):
        if ch in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif ch == "]" or ch == "}":
            depth -= 1
    return deepest


def nul_escape(doc: str) -> int | None:
    """The position of the first ``\u0000`` escape in ``doc`` (not ``\\u0000``), or None."""
    for m in _ESCAPE.finditer(doc):
        if m.group(1) == "0000":
            return m.start()
    return None


def _refuse_nul(body: bytes | str) -> None:
    # U+0000 is valid JSON text but no database column of this API can hold it (PostgreSQL's
    # text refuses it): refused here, on both databases alike, at its position.
    if isinstance(body, bytes):
        if b"\\u0000" not in body:
            return
        doc = body.decode("utf-8-sig")
    elif "\\u0000" not in body:
        return
    else:
        doc = body
    pos = nul_escape(doc)
    if pos is not None:
        raise json.JSONDecodeError("\\u0000 (NUL) is not allowed in text", doc, pos)


def loads(body: bytes | str) -> Any:
    """``body`` as JSON; :class:`json.JSONDecodeError` (or :class:`UnicodeDecodeError` for
    bytes that are not UTF-8) when it is not JSON, holds a lone surrogate or a NUL."""
    try:
        value = orjson.loads(body)
        _refuse_nul(body)
        return value
    except orjson.JSONDecodeError as exc:  # a json.JSONDecodeError
        if str(exc).startswith("depth limit exceeded"):
            # Nested past MAX_DEPTH: no request of this API is, and the standard parser (or
            # a later check walking the value) could run out of stack on it.
            raise
    doc = body if isinstance(body, str) else body.decode("utf-8-sig")  # a BOM is ignored
    # Measured before the standard parser runs: it recurses per level in C, and a body nested
    # deeply enough could exhaust the stack where the recursion limit has been raised.
    if _depth(doc) > MAX_DEPTH:
        raise json.JSONDecodeError(f"nested too deeply (more than {MAX_DEPTH} levels)", doc, 0)
    value = json.loads(doc)
    _refuse_nul(doc)
    if "\\u" in doc and (pos := lone_surrogate(doc)) is not None:
        escape = doc[pos : pos + 6]
        raise json.JSONDecodeError(
            f"{escape} is half of a UTF-16 surrogate pair, not a character", doc, pos
        )
    return value


class JsonRequest(Request):
    """A request whose JSON body is read by :func:`loads`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """Every API route: FastAPI parses model bodies through :class:`JsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            # The request Starlette made for this call, its JSON read by `loads` from here on
            # (JsonRequest adds no state; a new object would lose nothing but cost one).
            request.__class__ = JsonRequest
            return await handler(request)

        return handle

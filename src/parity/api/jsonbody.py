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
NaN and Infinity, lone surrogates — is parsed again by the standard parser, so the checks that
name a field still see NaN. orjson reads an integer past 64 bits as a float (2**70 would arrive
as 1.1805916207174113e+21, no longer the number sent): a body holding an integer literal of 19
digits or more is parsed by the standard parser too, so a check sees the exact integer and can
say it is too large. An integer longer than the standard parser takes (4,300 digits) is refused
as not JSON at its position, and so is a body nested too deeply for it.

A key repeated in one object (``{"title": "x", "title": "y"}``) is refused at the second
occurrence, naming the key: parsers keep one of the two values (the last, here), so one of
them would be dropped without a word. The check compares two counts instead of parsing again:
each key of the text is followed by one ``:`` outside strings, so when the parsed value holds
as many colons (keys, plus colons in its strings) as the text, no pair was dropped; only a
body where the counts differ (or a ``\\u003a`` escape spells a colon) gets the exact check. The
value's colons come from one walk of it when it holds few values (a prompt: little work), else
from the value written back out by orjson, which a large body of many values costs least.

Every refusal is a :class:`json.JSONDecodeError` (bytes that are not UTF-8 text included, as
:class:`NotUtf8`), which both FastAPI and the routes that parse their own body answer as 422
``invalid_json`` with the position.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from parity.errors import InvalidInput

__all__ = ["JsonRequest", "JsonRoute", "NotUtf8", "loads"]

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


class NotUtf8(json.JSONDecodeError):
    """A body whose bytes are not UTF-8 text: a JSONDecodeError at the offending byte (its
    line, column and position counted in bytes), ``cause`` the decoder's own error."""

    def __init__(self, cause: UnicodeDecodeError) -> None:
        data = bytes(cause.object)
        # Latin-1 maps each byte to one character: lines and columns count bytes.
        super().__init__(
            f"byte 0x{data[cause.start]:02x} is not UTF-8 text", data.decode("latin-1"), cause.start
        )
        self.cause = cause


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")  # a BOM is ignored
    except UnicodeDecodeError as exc:
        raise NotUtf8(exc) from None


# Digits mapped to b"0", every other byte to b" ": runs of digits become runs of b"0".
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
WIDE_DIGITS = 19  # an integer of 18 digits or fewer always fits 64 bits
_WIDE = b"0" * WIDE_DIGITS
_NOT_INTEGER = frozenset(b".eE+")  # a run of digits after/before these is part of a float


def wide_integer(data: bytes) -> bool:
    """Whether ``data`` may hold an integer literal of 19 or more digits. Digits in a string
    or a fraction may match too: the standard parser then reads the body, to the same value."""
    runs = data.translate(_DIGITS)
    start = runs.find(_WIDE)
    while start != -1:
        end = runs.find(b" ", start)
        end = len(runs) if end == -1 else end
        before = data[start - 1] if start else None
        after = data[end] if end < len(data) else None
        if before not in _NOT_INTEGER and after not in _NOT_INTEGER:
            return True
        start = runs.find(_WIDE, end)
    return False


# orjson reads an integer as an int from -2**63 to 2**64 - 1, as a float past them.
_WIDE_FLOAT = float(2**63)
WALK_BUDGET = 1024  # values the walk looks at before byte scans of the text take over


def _walk(value: Any) -> tuple[int, bool] | None:
    """One look at the parsed value: its colons (one per key, plus those in keys and strings)
    and whether it holds a float of 2**63 or more in size (maybe an integer orjson could not
    hold); None once it has looked at WALK_BUDGET values. Costs little on a body of few, long
    strings (a prompt), where scans of the text would cost more than parsing it."""
    colons = 0
    budget = WALK_BUDGET
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            colons += item.count(":")
        elif kind is dict:
            budget -= len(item)
            colons += len(item) + "".join(item).count(":")
            stack.extend(item.values())
        elif kind is list:
            budget -= len(item)
            stack.extend(item)
        elif kind is float and abs(item) >= _WIDE_FLOAT:
            return colons, True
        if budget < 0:
            return None
    return colons, False


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:]', re.DOTALL)


def duplicate_key(doc: str) -> tuple[str, int] | None:
    """The first key of ``doc`` (valid JSON) repeated within its object, with the position
    of its second occurrence; None when every object's keys are distinct."""
    objects: list[set[str] | None] = []  # per open bracket: the keys seen ({) or None ([)
    string: re.Match[str] | None = None  # the string token just before, if any
    for m in _TOKENS.finditer(doc):
        token = m.group()
        if token == ":":
            keys = objects[-1] if objects else None
            if string is not None and keys is not None:
                key = json.loads(string.group())
                if key in keys:
                    return key, string.start()
                keys.add(key)
        elif token == "{":
            objects.append(set())
        elif token == "[":
            objects.append(None)
        elif token in ("}", "]") and objects:
            objects.pop()
        string = m if token[0] == '"' else None
    return None


def _refuse_duplicate(doc: str) -> None:
    found = duplicate_key(doc)
    if found is not None:
        key, pos = found
        raise json.JSONDecodeError(f"key {json.dumps(key)} is repeated in one object", doc, pos)


def _colon_escape(data: bytes) -> bool:
    return b"\\u003a" in data or b"\\u003A" in data


MAX_INT_DIGITS = 4300  # Python's limit on converting an integer's text (sys.int_info)
_STRING_OR_LONG_INT = re.compile(
    rf'"(?:[^"\\]|\\.)*"|(?<![\d.eE+])(-?\d{{{MAX_INT_DIGITS + 1},}})(?![\d.eE])',
    re.DOTALL,
)


def _refuse_long_integer(doc: str, exc: ValueError) -> json.JSONDecodeError:
    """The standard parser's refusal of an integer past 4,300 digits, at its position."""
    for m in _STRING_OR_LONG_INT.finditer(doc):
        if m.group(1) is not None:
            digits = len(m.group(1).lstrip("-"))
            return json.JSONDecodeError(
                f"integer of {digits} digits is too long (at most {MAX_INT_DIGITS})",
                doc,
                m.start(1),
            )
    return json.JSONDecodeError(str(exc).split(";")[0], doc, 0)


def _fast(body: bytes | str) -> Any:
    """``body`` parsed by orjson, or ``_SLOW`` when the standard parser must read it (orjson
    refused it, or it may hold an integer orjson turned into a float)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # a json.JSONDecodeError
        if str(exc).startswith("depth limit exceeded"):
            # Nested past MAX_DEPTH: no request of this API is, and the standard parser (or
            # a later check walking the value) could run out of stack on it.
            raise
        return _SLOW
    data = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    walked = _walk(value)
    if walked is None:  # many values: scans of the text cost less than the walk
        if wide_integer(data):
            return _SLOW
        in_value = orjson.dumps(value).count(b":")
    elif walked[1]:
        return _SLOW
    else:
        in_value = walked[0]
    # \u0000 (a NUL) and \u003a (a colon, which the value holds and the text does not) both
    # start so.
    escapes = b"\\u00" in data
    if escapes:
        _refuse_nul(body)
    # One colon per key in the text, as many in the value unless a pair was dropped (a key
    # repeated in its object), or a \u003a escape became a colon: then the exact check.
    if in_value != data.count(b":") or (escapes and _colon_escape(data)):
        _refuse_duplicate(body if isinstance(body, str) else _text(body))
    return value


_SLOW = object()


def loads(body: bytes | str) -> Any:
    """``body`` as JSON; :class:`json.JSONDecodeError` when it is not JSON (:class:`NotUtf8`
    for bytes that are not UTF-8 text), holds a lone surrogate, a NUL or a repeated key."""
    value = _fast(body)
    if value is not _SLOW:
        return value
    doc = body if isinstance(body, str) else _text(body)
    # Measured before the standard parser runs: it recurses per level in C, and a body nested
    # deeply enough could exhaust the stack where the recursion limit has been raised.
    if _depth(doc) > MAX_DEPTH:
        raise json.JSONDecodeError(f"nested too deeply (more than {MAX_DEPTH} levels)", doc, 0)
    try:
        value = json.loads(doc, object_pairs_hook=_object)
    except _Repeated:
        _refuse_duplicate(doc)  # says which key, and where
        raise json.JSONDecodeError("a key is repeated in one object", doc, 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # an integer past the standard parser's 4,300 digits
        raise _refuse_long_integer(doc, exc) from None
    _refuse_nul(doc)
    if "\\u" in doc and (pos := lone_surrogate(doc)) is not None:
        escape = doc[pos : pos + 6]
        raise json.JSONDecodeError(
            f"{escape} is half of a UTF-16 surrogate pair, not a character", doc, pos
        )
    return value


class _Repeated(Exception):
    """An object of the body repeats a key (:func:`duplicate_key` then says where)."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Repeated
    return out


class JsonRequest(Request):
    """A request whose JSON body is read by :func:`loads`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


def declared_query(dependant: Dependant) -> frozenset[str]:
    """The query parameters a route reads (its own and its dependencies')."""
    names: set[str] = set()
    stack = [dependant]
    while stack:
        current = stack.pop()
        names.update(field.alias for field in current.query_params)
        stack.extend(current.dependencies)
    return frozenset(names)


def refuse_nul_parameters(query: bytes, declared: frozenset[str]) -> None:
    """InvalidInput naming the first of the ``declared`` query parameters whose value holds a
    NUL (``%00``): no text column holds it (PostgreSQL refuses it, SQLite would keep it), so
    it is refused on both databases alike, as in a JSON body, before the route runs."""
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key in declared and "\x00" in value:
            raise InvalidInput(key, "must not contain NUL (%00)")


class JsonRoute(APIRoute):
    """Every API route: FastAPI parses model bodies through :class:`JsonRequest`, and a NUL in
    a query parameter the route reads is refused by name (:func:`refuse_nul_parameters`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        route = self

        async def handle(request: Request) -> Response:
            # The request Starlette made for this call, its JSON read by `loads` from here on
            # (JsonRequest adds no state; a new object would lose nothing but cost one).
            request.__class__ = JsonRequest
            query: bytes = request.scope.get("query_string", b"")
            if b"%00" in query:
                refuse_nul_parameters(query, declared_query(route.dependant))
            return await handler(request)

        return handle

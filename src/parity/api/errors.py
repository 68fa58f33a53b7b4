"""The one error → HTTP table and the one envelope:
``{"error": {"code", "message", "details"}}``. Never a stack trace in a body."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from parity.api import jsonbody
from parity.errors import Category, InvalidInput, ParityError
from parity.logging import get_logger

log = get_logger("parity.api")

STATUS: dict[Category, int] = {
    Category.INVALID: 422,
    Category.UNAUTHENTICATED: 401,
    Category.FORBIDDEN: 403,
    Category.NOT_FOUND: 404,
    Category.CONFLICT: 409,
    Category.GONE: 410,
    Category.TOO_LARGE: 413,
    Category.UPGRADE_REQUIRED: 426,
    Category.RATE_LIMITED: 429,
    Category.NOT_IMPLEMENTED: 501,
    Category.UNAVAILABLE: 503,
}

HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


class _AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: renders any Python string."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def envelope(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    try:
        return JSONResponse(body, status_code=status, headers=headers)
    except UnicodeEncodeError:
        # Text that is not Unicode (a lone surrogate) reached a message: sent escaped, as ASCII.
        return _AsciiJSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or (str(loc[0]) if loc else "body")


async def _parity_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ParityError)
    status = STATUS[exc.category]
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return envelope(status, exc.code, exc.message, exc.details, headers)


def invalid_json(field: str, exc: ValueError) -> InvalidInput:
    """422 ``invalid_json`` for a body (or form field) that does not parse: says that it is not
    JSON and where the parser stopped, instead of a type complaint about a value it never saw.
    (Bytes that are not UTF-8 come as :class:`parity.api.jsonbody.NotUtf8`, a JSONDecodeError
    counting bytes.)"""
    if isinstance(exc, json.JSONDecodeError):
        # lineno/colno are 1-based, as editors count; pos is the 0-based character offset.
        where = {"line": exc.lineno, "column": exc.colno, "position": exc.pos}
        reason = f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    elif isinstance(exc, UnicodeDecodeError):
        where = {"position": exc.start}
        reason = f"byte 0x{exc.object[exc.start]:02x} is not UTF-8 text"
    else:
        where = {}
        reason = str(exc) or "it does not parse"
    if "position" in where:
        reason += f" (position {where['position']})"
    error = InvalidInput(field, f"not valid JSON: {reason}", code="invalid_json")
    error.details.update(where)
    return error


def _json_decode_error(err: dict[str, Any], body: Any) -> JSONResponse:
    """FastAPI's own body parsing failed (``json_invalid``): the same answer as
    :func:`invalid_json`, rebuilt from the position and message FastAPI keeps."""
    loc = tuple(err.get("loc", ()))
    doc = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    doc = doc if isinstance(doc, str) else ""
    pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
    msg = str((err.get("ctx") or {}).get("error") or "JSON decode error")
    decoded = json.JSONDecodeError(msg, doc, min(max(pos, 0), len(doc)))
    error = invalid_json("body", decoded)
    return envelope(422, error.code, error.message, error.details)


def _is_nan(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and math.isnan(value)


# Bounds pydantic checks by comparing: NaN fails every comparison, so "should be less than or
# equal to 30" would be said of it, which is not its problem.
_COMPARISONS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"}
)


def _message(err: dict[str, Any]) -> str:
    """pydantic's message for ``err``, said of the value the client sent."""
    kind = err.get("type")
    if kind in _COMPARISONS and _is_nan(err.get("input")):
        return "Input should be a number, not NaN"
    if kind == "int_parsing_size":
        # pydantic speaks of "parsing an input string" even for a number in a JSON body.
        return "Input is too large a number for this field"
    msg = str(err["msg"])
    # A validator's ValueError: its own words say what is wrong.
    return msg.removeprefix("Value error, ")


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            cause = exc.__cause__
            if isinstance(cause, json.JSONDecodeError):  # raised by jsonbody.loads
                error = invalid_json("body", cause)
                return envelope(422, error.code, error.message, error.details)
            return _json_decode_error(err, exc.body)
    errors = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        errors.append(
            {"field": _field(loc), "in": str(loc[0]) if loc else "body", "message": _message(err)}
        )
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return envelope(422, "validation_error", summary or "invalid request", {"errors": errors})


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves at the request's path. Each method of a
    path is a route of its own, and the router's 405 names only the first route whose path
    matched; this asks every route, as ``Allow`` must list them all."""
    routes = request.app.router.routes
    allowed = []
    for method in METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in routes):
            allowed.append(method)
    return allowed


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = "no such route"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allowed = allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
    return envelope(exc.status_code, code, message, headers=headers)


async def _integrity_error(_: Request, exc: Exception) -> JSONResponse:
    log.warning("integrity_conflict", error=type(exc).__name__)
    return envelope(409, "conflict", "the request conflicts with the current state; retry")


async def _db_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.error("database_unavailable", error=type(exc).__name__, detail=str(exc)[:200])
    return envelope(
        503,
        "database_unavailable",
        "the database is unavailable; retry later",
        headers={"Retry-After": "2"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    rid = getattr(request.state, "request_id", None)
    log.exception("unhandled_error", error=type(exc).__name__)
    return envelope(500, "internal_error", "internal error", {"request_id": rid})


DB_DOWN: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    ConnectionError,
    OSError,
)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ParityError, _parity_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    for exc_type in DB_DOWN:
        app.add_exception_handler(exc_type, _db_unavailable)
    app.add_exception_handler(DBAPIError, _db_dbapi)
    app.add_exception_handler(Exception, _unexpected)


async def _db_dbapi(request: Request, exc: Exception) -> JSONResponse:
    # asyncpg wraps a lost connection in a generic DBAPIError flagged as invalidated.
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return await _db_unavailable(request, exc)
    sqlstate = _sqlstate(exc)
    if sqlstate in RETRYABLE_SQLSTATES:
        log.warning("database_conflict", sqlstate=sqlstate)
        return envelope(
            503,
            "database_conflict",
            "the request met a concurrent change (deadlock or serialization); retry",
            headers={"Retry-After": "1"},
        )
    if _looks_like_connection_loss(exc):
        return await _db_unavailable(request, exc)
    if sqlstate is not None and sqlstate.startswith(DATA_EXCEPTION_CLASS):
        # A value PostgreSQL refused for its column (too long, out of range): the request's
        # data, which the API's own checks should have named; logged so they can.
        log.warning(
            "database_data_error", sqlstate=sqlstate, detail=str(getattr(exc, "orig", exc))[:200]
        )
        return envelope(
            422,
            "invalid_input",
            "a value does not fit where it is stored (too long or out of range)",
            {"sqlstate": sqlstate},
        )
    return await _unexpected(request, exc)


# Deadlock detected, serialization failure, lock not available: nothing was written (the
# transaction rolled back) and the same request can simply be sent again.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
# SQLSTATE class 22, "data exception": string too long (22001), numeric out of range (22003), ...
DATA_EXCEPTION_CLASS = "22"


def _sqlstate(exc: Exception) -> str | None:
    """The SQLSTATE PostgreSQL sent, as the asyncpg error (or SQLAlchemy's wrapper) carries it."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def _looks_like_connection_loss(exc: Exception) -> bool:
    orig = getattr(exc, "orig", None)
    name = type(orig).__name__ if orig is not None else ""
    return any(k in name for k in ("Connection", "CannotConnect", "InterfaceError", "Shutdown"))


def read_json(data: bytes | str, field: str) -> Any:
    """``data`` read by the API's one JSON parser (:func:`parity.api.jsonbody.loads`); 422
    ``invalid_json`` naming ``field`` and where the parser stopped when it does not parse."""
    try:
        return jsonbody.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise invalid_json(field, exc) from None


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, for routes that validate it themselves: 422
    ``invalid_json`` (where the parser stopped) when it does not parse, 422 naming ``body``
    when it is not an object."""
    raw = read_json(await request.body(), "body")
    if not isinstance(raw, dict):
        raise InvalidInput("body", "must be a JSON object")
    return raw

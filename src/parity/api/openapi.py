"""The error answers in the OpenAPI document (/openapi.json, /docs).

FastAPI documents the success of each operation and a 422 in its own ``detail[]`` shape,
which the API never sends. Here every operation also lists the errors it can answer, in the
shape they come in: the envelope ``{"error": {"code", "message", "details"}}`` on the API,
OpenAI's ``{"error": {message, type, param, code}}`` under ``/v1`` and Ollama's
``{"error": message}`` under ``/ollama/api``. Which codes an operation lists follows from what
it is (README's table: 401 identity, 403 permission, 404, 409 state conflict, 413 body too
large, 422 a field, 429 limits, 503 retryable); ``default`` covers any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts

from parity.api.deps import get_principal

ERROR = "Error"
OPENAI_ERROR = "OpenAIError"
OLLAMA_ERROR = "OllamaError"

_SCHEMAS: dict[str, dict[str, Any]] = {
    ERROR: {
        "title": ERROR,
        "description": "Every error of the API: `code` is stable, `message` names the field "
        "and the problem, `details` holds `field` (or `errors[]`) and the facts of the error.",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string", "examples": ["validation_error"]},
                    "message": {"type": "string"},
                    "details": {"type": "object", "additionalProperties": True},
                },
            }
        },
    },
    OPENAI_ERROR: {
        "title": OPENAI_ERROR,
        "description": "An error of the OpenAI-compatible gateway, in OpenAI's shape.",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string", "examples": ["invalid_request_error"]},
                    "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
            }
        },
    },
    OLLAMA_ERROR: {
        "title": OLLAMA_ERROR,
        "description": "An error of the Ollama-compatible gateway, in Ollama's shape.",
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
}

_DESCRIPTIONS = {
    400: "Invalid request: the parameter and the problem",
    401: "No valid bearer token (missing, unknown, expired or revoked)",
    403: "The token may not do this (another account's, a runner token, not an operator)",
    404: "No such resource (or not yours)",
    409: "The resource's state does not allow it (the code says which conflict)",
    413: "The request body is larger than the server takes",
    422: "A field, parameter or the body is invalid (named in `details`), or the body is not "
    "JSON (`invalid_json`, with where the parser stopped)",
    429: "A limit was reached; retry after `Retry-After` seconds",
    503: "Unavailable for now (database down, a concurrent change); retry after `Retry-After`",
    504: "The network did not answer in time",
    "default": "Any other error, in the same shape",
}
_RETRY = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}
_WRITES = frozenset({"post", "put", "patch", "delete"})
_BODIES = frozenset({"post", "put", "patch"})


def _requires_token(dependant: Dependant | None) -> bool:
    stack = [dependant] if dependant is not None else []
    while stack:
        current = stack.pop()
        if current.call is get_principal:
            return True
        stack.extend(current.dependencies)
    return False


def _authenticated(app: FastAPI) -> set[tuple[str, str]]:
    """(path, method) of every documented operation whose route needs a bearer token."""
    out: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        path = getattr(context, "path_format", None)
        methods = getattr(context, "methods", None) or ()
        if path and _requires_token(getattr(context, "dependant", None)):
            out.update((path, m.lower()) for m in methods)
    return out


def _codes(path: str, method: str, authenticated: bool) -> list[int]:
    """The error statuses an operation of the API can answer."""
    codes = [422, 503]
    if authenticated:
        codes += [401, 403]
    if "{" in path:
        codes.append(404)
    if method in _WRITES:
        codes.append(409)
    if method in _BODIES:
        codes.append(413)
    if method == "post":
        codes.append(429)
    return codes


def _gateway_codes(method: str) -> list[int]:
    codes = [400, 401, 403, 404, 429, 503, 504]
    return [*codes, 413] if method in _BODIES else codes


def _response(code: int | str, schema: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": _DESCRIPTIONS[code],
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }
    if code in (429, 503):
        out["headers"] = _RETRY
    return out


def add_error_responses(app: FastAPI, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` (the generated document) with each operation's error answers and their
    schemas; FastAPI's own 422 (``HTTPValidationError``) is replaced by the envelope."""
    authenticated = _authenticated(app)
    for path, operations in spec.get("paths", {}).items():
        for method, op in operations.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses = op["responses"]
            if path.startswith("/v1/") or path == "/v1":
                schema, codes = OPENAI_ERROR, _gateway_codes(method)
                responses.pop("422", None)  # gateways answer an invalid request with 400
            elif path.startswith("/ollama/"):
                schema, codes = OLLAMA_ERROR, _gateway_codes(method)
                responses.pop("422", None)
            else:
                schema = ERROR
                codes = _codes(path, method, (path, method) in authenticated)
                responses.pop("422", None)  # FastAPI's detail[] shape: never sent
            for code in codes:
                responses.setdefault(str(code), _response(code, schema))
            responses.setdefault("default", _response("default", schema))
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    components.update(_SCHEMAS)
    text = str(spec.get("paths"))
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"/{unused}'" not in text:
            components.pop(unused, None)
    return spec


def install_error_responses(app: FastAPI) -> None:
    """Make ``app``'s OpenAPI document list the error answers (built once, then cached)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_error_responses(app, generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

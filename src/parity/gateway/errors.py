"""Errors in the shapes the compatible clients read: OpenAI's ``{"error": {message, type, param,
code}}`` and Ollama's ``{"error": message}``, with the status the server's own API would give
(an invalid request is 400, as OpenAI answers it)."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from parity.api.errors import STATUS, read_json
from parity.errors import Category, InvalidInput, ParityError

M = TypeVar("M", bound=BaseModel)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
}
_CODES = {401: "invalid_api_key"}


def status_of(exc: ParityError) -> int:
    if exc.code == "timeout":
        return 504
    if exc.category == Category.INVALID:
        return 400
    return STATUS.get(exc.category, 400)


def param_of(exc: ParityError) -> str | None:
    field = exc.details.get("field")
    return field if isinstance(field, str) else None


def openai_body(status: int, message: str, param: str | None, code: str | None) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# Every prompt answer of the gateways names its prompt (GET /api/v1/llm/prompts/{id}: its cost,
# attempts and timings).
PROMPT_ID_HEADER = "X-Parity-Prompt-Id"


def openai_error_body(exc: ParityError) -> dict[str, Any]:
    """``exc`` in OpenAI's error shape: the body of an error answer, or of a stream's last
    event when the error comes after the stream began."""
    status = status_of(exc)
    return openai_body(status, exc.message, param_of(exc), _CODES.get(status, exc.code))


def openai_error(exc: ParityError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return JSONResponse(openai_error_body(exc), status_code=status_of(exc), headers=headers)


def ollama_error(exc: ParityError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=status_of(exc))


def invalid(exc: ValidationError) -> InvalidInput:
    """A body that failed validation, as the first offending parameter."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or "body"
    return InvalidInput(param, str(first["msg"]))


async def parse(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``; a body that is not JSON, or does not fit, is InvalidInput
    naming the parameter."""
    raw = read_json(await request.body() or b"null", "body")
    if not isinstance(raw, dict):
        raise InvalidInput("body", "must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise invalid(exc) from None

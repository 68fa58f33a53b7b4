"""Pure ASGI middleware: request ids, access log, request-body size limit (except on paths
whose handlers stream the body and enforce their own limit)."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parity.gateway.errors import openai_body
from parity.logging import get_logger

log = get_logger("parity.access")
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")


class BodyTooLarge(Exception):
    pass


# The compatible gateways answer in their clients' shapes (README: OpenAI's under /v1, Ollama's
# under /ollama/api), the 413 of a body past the limit included.
OPENAI_PREFIX = "/v1/"
OLLAMA_PREFIX = "/ollama/"


def _error_body(path: str, code: str, message: str) -> bytes:
    """The error body in the shape the client of ``path`` reads."""
    body: dict[str, Any]
    if path.startswith(OPENAI_PREFIX):
        body = openai_body(413, message, None, code)
    elif path.startswith(OLLAMA_PREFIX):
        body = {"error": message}
    else:
        body = {"error": {"code": code, "message": message, "details": {}}}
    return json.dumps(body).encode()


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        quiet_paths: frozenset[str],
        unlimited_paths: re.Pattern[str] | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.quiet = quiet_paths
        # Paths (matched whole) whose bodies the route limits itself: streamed uploads.
        self.unlimited = unlimited_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _RID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        structlog.contextvars.bind_contextvars(request_id=rid)
        start = time.perf_counter()
        status = 500
        unlimited = self.unlimited is not None and self.unlimited.fullmatch(scope.get("path", ""))
        limit = float("inf") if unlimited else self.max_body

        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._too_large(send, rid, scope.get("path", ""))
            structlog.contextvars.unbind_contextvars("request_id")
            return

        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return msg

        async def send_with_id(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                msg["headers"] = [*msg.get("headers", []), (b"x-request-id", rid.encode())]
            await send(msg)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except BodyTooLarge:
            await self._too_large(send, rid, scope.get("path", ""))
            status = 413
        finally:
            path = scope.get("path", "")
            if not (status < 400 and path in self.quiet):
                log.info(
                    "request",
                    method=scope.get("method"),
                    path=path,
                    status=status,
                    duration_ms=round((time.perf_counter() - start) * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars("request_id")

    async def _too_large(self, send: Send, rid: str, path: str) -> None:
        body = _error_body(path, "payload_too_large", f"request body exceeds {self.max_body} bytes")
        hdrs: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

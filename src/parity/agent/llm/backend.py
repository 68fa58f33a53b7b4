"""The interface every LLM backend client implements, and the HTTP plumbing they share.

A backend lists its models and runs one prompt as a stream: zero or more :class:`TokenChunk`
followed by exactly one :class:`Completion` (finish reason and the usage the backend
reported). Failures raise :mod:`parity.agent.llm.errors`.

Timeouts (:class:`Timeouts`): connecting, listing models, the first token (a backend may load
the model first), the gap between two tokens, and the whole generation. Every call has them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from parity.agent.llm.errors import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    BadResponse,
    ModelNotFound,
)
from parity.core.llm.request import LlmRequest

__all__ = [
    "Completion",
    "Event",
    "HttpBackend",
    "LlmBackend",
    "ModelInfo",
    "Timeouts",
    "TokenChunk",
]

_MODEL_MISSING = re.compile(r"model.*(not found|does not exist|not exist|unknown)", re.I | re.S)
_ERROR_BODY_LIMIT = 4096
# After a stream's last event: how much more of the body is read to keep the connection.
_DRAIN_LINES = 64
_DRAIN_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model a backend serves. ``loaded`` means it can answer now without a download (an
    Ollama model is loaded on first use; that is still "loaded" here)."""

    name: str
    loaded: bool = True
    context_length: int | None = None
    quantization: str | None = None
    size_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class TokenChunk:
    text: str


@dataclass(frozen=True, slots=True)
class Completion:
    """The end of a generation: token counts as the backend reported them (None if it did
    not), and why it stopped (``stop``, ``length``, ...)."""

    input_tokens: int | None
    output_tokens: int | None
    finish_reason: str | None


Event = TokenChunk | Completion


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    list_models: float = 10.0
    first_token: float = 300.0
    between_tokens: float = 60.0
    total: float = 600.0


class LlmBackend(Protocol):
    kind: str
    base_url: str

    async def list_models(self) -> list[ModelInfo]:
        """The models this backend serves now."""
        ...

    def generate(
        self, request: LlmRequest, *, total_timeout: float | None = None
    ) -> AsyncGenerator[Event, None]:
        """Run one prompt: token chunks, then one :class:`Completion`. Always streams from the
        backend and always asks it for usage. Closing the generator early stops the request."""
        ...

    async def aclose(self) -> None: ...


class HttpBackend:
    """Shared plumbing: one httpx client per backend, status mapping, streamed lines with the
    first-token, between-tokens and total deadlines."""

    kind = "http"

    def __init__(
        self,
        base_url: str,
        *,
        timeouts: Timeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        t = self.timeouts
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            headers=headers,
            # The read timeout is a backstop: generate() enforces the first-token and
            # between-tokens deadlines itself.
            timeout=httpx.Timeout(
                connect=t.connect,
                read=max(t.first_token, t.between_tokens),
                write=30.0,
                pool=t.connect,
            ),
            follow_redirects=False,
        )

    @property
    def label(self) -> str:
        return f"{self.kind} {self.base_url}"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _get_json(self, path: str) -> Any:
        try:
            response = await self._client.get(path, timeout=self.timeouts.list_models)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.text[:_ERROR_BODY_LIMIT])
        try:
            return response.json()
        except ValueError as exc:
            raise BadResponse(f"GET {path}: not JSON", backend=self.label) from exc

    async def _stream_lines(self, path: str, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        """POST ``body`` and yield the response's lines as they arrive (blank lines included:
        they end server-sent events)."""
        try:
            async with self._client.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    text = (await response.aread())[:_ERROR_BODY_LIMIT].decode("utf-8", "replace")
                    raise self._status_error(response.status_code, text)
                async for line in response.aiter_lines():
                    yield line
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    async def _finish(self, rest: AsyncGenerator[Any, None]) -> None:
        """Read what follows a stream's last event (usually only the chunked body's end) so
        the connection goes back to the pool instead of being closed: a closed one costs the
        next request a new TCP connection. Bounded: more than ``_DRAIN_LINES`` lines or
        ``_DRAIN_SECONDS`` seconds and the stream is closed as before."""
        with contextlib.suppress(TimeoutError, BackendError):
            async with asyncio.timeout(_DRAIN_SECONDS):
                n = 0
                async for _ in rest:
                    n += 1
                    if n > _DRAIN_LINES:
                        return

    async def _timed(
        self, events: AsyncGenerator[Event, None], total_timeout: float | None
    ) -> AsyncGenerator[Event, None]:
        """Pass ``events`` through under the deadlines: the first token within
        ``first_token`` s of the request, each next one within ``between_tokens`` s of the
        previous, everything within ``total_timeout`` (default ``Timeouts.total``).

        Only token chunks count as progress: keep-alive comments, blank lines and role-only
        chunks do not, so a server that pings but never generates still times out.
        """
        loop = asyncio.get_running_loop()
        t = self.timeouts
        started = loop.time()
        end = started + (total_timeout or t.total)
        progress_due = started + t.first_token
        what = f"no first token within {t.first_token:g} s"
        try:
            while True:
                overall = end <= progress_due  # which deadline comes first
                try:
                    async with asyncio.timeout_at(end if overall else progress_due):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if overall:
                        what = "the generation exceeded its time limit"
                    raise BackendUnavailable(what, backend=self.label) from None
                if isinstance(event, TokenChunk):
                    progress_due = loop.time() + t.between_tokens
                    what = f"no next token within {t.between_tokens:g} s"
                yield event
        finally:
            await events.aclose()  # closes the HTTP stream: the backend stops generating

    def _transport_error(self, exc: httpx.HTTPError) -> BackendError:
        if isinstance(exc, httpx.TimeoutException):
            return BackendUnavailable(f"timed out ({type(exc).__name__})", backend=self.label)
        if isinstance(exc, httpx.TransportError):
            return BackendUnavailable(f"cannot reach the backend: {exc}", backend=self.label)
        return BadResponse(f"HTTP error: {exc}", backend=self.label)

    def _status_error(self, status: int, text: str) -> BackendError:
        message = _error_message(text) or f"HTTP {status}"
        if status in (404, 400, 422) and _MODEL_MISSING.search(message):
            return ModelNotFound(message, backend=self.label, status=status)
        if status == 404:
            return BadResponse(
                f"endpoint not found; is this a {self.kind} server? ({message})",
                backend=self.label,
                status=status,
            )
        if status == 429 or status >= 500:
            return BackendUnavailable(message, backend=self.label, status=status)
        return BackendRejected(message, backend=self.label, status=status)

    def _json_line(self, line: str) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise BadResponse(f"not JSON: {line[:200]!r}", backend=self.label) from exc
        if not isinstance(value, dict):
            raise BadResponse(f"not a JSON object: {line[:200]!r}", backend=self.label)
        return value


def _error_message(text: str) -> str:
    """The message of an error body: OpenAI's ``{"error": {"message"}}``, Ollama's
    ``{"error": "..."}``, or the text itself."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message") or json.dumps(error)
        if error is not None:
            return str(error)[:500]
    return text.strip()[:500]


def optional_count(value: object) -> int | None:
    """A token count as reported, or None when absent or not a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value

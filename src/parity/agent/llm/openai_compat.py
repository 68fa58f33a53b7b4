"""Client of OpenAI-compatible servers (vLLM, llama.cpp server, LM Studio, Ollama's /v1).

``GET /v1/models``; ``POST /v1/chat/completions`` (messages) and ``POST /v1/completions``
(prompt), always with ``stream: true`` and ``stream_options: {include_usage: true}`` so the
final chunk carries ``usage``; ``temperature``, ``top_p``, ``seed`` and ``stop`` are sent as
the request gives them (a stop sequence ends the generation with ``finish_reason: stop``).
The stream is server-sent events: ``data: <json>`` lines, events separated by blank lines,
ended by ``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import httpx

from parity.agent.llm.backend import (
    Completion,
    Event,
    HttpBackend,
    ModelInfo,
    Timeouts,
    TokenChunk,
    optional_count,
)
from parity.agent.llm.errors import BackendUnavailable, BadResponse
from parity.core.llm.request import ChatMessage, LlmRequest

__all__ = ["OpenAIBackend", "sse_data"]

_DONE = "[DONE]"


class OpenAIBackend(HttpBackend):
    kind = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        super().__init__(base_url, timeouts=timeouts, transport=transport, headers=headers)

    async def list_models(self) -> list[ModelInfo]:
        body = await self._get_json("/v1/models")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise BadResponse("GET /v1/models: no data list", backend=self.label)
        models = []
        for item in data:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise BadResponse("GET /v1/models: an entry has no id", backend=self.label)
            models.append(ModelInfo(name=item["id"], context_length=_context_length(item)))
        return models

    def generate(
        self, request: LlmRequest, *, total_timeout: float | None = None
    ) -> AsyncGenerator[Event, None]:
        return self._timed(self._events(request), total_timeout)

    async def _events(self, request: LlmRequest) -> AsyncGenerator[Event, None]:
        path, body = _request_body(request)
        finish: str | None = None
        usage: dict[str, Any] | None = None
        # aclosing: an early close must close the HTTP stream now, not when collected.
        async with aclosing(sse_data(self._stream_lines(path, body))) as events:
            async for data in events:
                if data == _DONE:
                    await self._finish(events)
                    yield _completion(usage, finish)
                    return
                chunk = self._json_line(data)
                # A failure after the stream started: {"error": {...}} (OpenAI, llama.cpp) or
                # {"object": "error", "message": ...} (older vLLM).
                if "error" in chunk or chunk.get("object") == "error":
                    detail = chunk.get("error") or chunk.get("message")
                    raise BackendUnavailable(f"error in stream: {detail}", backend=self.label)
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                for choice in _choices(chunk, self.label):
                    text = _choice_text(choice)
                    if text:
                        yield TokenChunk(text)
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
        if finish is None:
            raise BadResponse("the stream ended before the generation finished", backend=self.label)
        # Finished but no [DONE]: accept what the server sent.
        yield _completion(usage, finish)


def _request_body(request: LlmRequest) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.seed is not None:
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = list(request.stop)
    if request.messages is None:
        body["prompt"] = request.prompt or ""
        return "/v1/completions", body
    body["messages"] = [_message(m) for m in request.messages]
    return "/v1/chat/completions", body


def _message(m: ChatMessage) -> dict[str, str]:
    # "developer" is OpenAI's newer name for "system"; local servers' templates know "system".
    out = {"role": "system" if m.role == "developer" else m.role, "content": m.content}
    if m.name is not None:
        out["name"] = m.name
    return out


def _choices(chunk: dict[str, Any], label: str) -> list[dict[str, Any]]:
    choices = chunk.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise BadResponse("a stream chunk has malformed choices", backend=label)
    return choices


def _choice_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        content = delta.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")  # /v1/completions
    return text if isinstance(text, str) else ""


def _completion(usage: dict[str, Any] | None, finish: str | None) -> Completion:
    usage = usage or {}
    return Completion(
        input_tokens=optional_count(usage.get("prompt_tokens")),
        output_tokens=optional_count(usage.get("completion_tokens")),
        finish_reason=finish,
    )


def _context_length(item: dict[str, Any]) -> int | None:
    """vLLM reports ``max_model_len``; others ``context_length``; llama.cpp ``meta.n_ctx`` (the
    context it was started with, what it accepts) and, older versions only, ``meta.n_ctx_train``
    (the model's trained context, often larger than the server's)."""
    found = item.get("meta")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    for value in (
        item.get("max_model_len"),
        item.get("context_length"),
        meta.get("n_ctx"),
        meta.get("n_ctx_train"),
    ):
        count = optional_count(value)
        if count:
            return count
    return None


async def sse_data(lines: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    """The ``data`` of each server-sent event (WHATWG rules, the subset OpenAI streams use):
    ``data:`` lines accumulate (joined by newlines, one leading space stripped) until a blank
    line dispatches the event; comments (``:``) and other fields (``event``, ``id``,
    ``retry``) are ignored; an event still open at the end of the stream is dispatched."""
    pending: list[str] = []
    async with aclosing(lines):
        async for line in lines:
            if not line:
                if pending:
                    yield "\n".join(pending)
                    pending = []
                continue
            if line.startswith(":"):
                continue
            field, colon, value = line.partition(":")
            if field == "data":
                pending.append(value[1:] if colon and value.startswith(" ") else value)
    if pending:
        yield "\n".join(pending)

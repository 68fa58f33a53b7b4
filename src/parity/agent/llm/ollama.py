"""Client of Ollama's native API.

``GET /api/tags`` lists the local models (each is servable: Ollama loads a model on its first
request); ``POST /api/chat`` (messages) and ``POST /api/generate`` (prompt) stream
newline-delimited JSON objects, the last one with ``done: true``, ``done_reason`` and the
usage: ``prompt_eval_count`` (input tokens; Ollama omits it when the whole prompt came from its
cache) and ``eval_count`` (output tokens). ``max_tokens`` is sent as ``options.num_predict``;
``temperature``, ``top_p``, ``seed`` and ``stop`` as the ``options`` of the same names.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from parity.agent.llm.backend import (
    Completion,
    Event,
    HttpBackend,
    ModelInfo,
    TokenChunk,
    optional_count,
)
from parity.agent.llm.errors import BackendUnavailable, BadResponse
from parity.core.llm.request import LlmRequest

__all__ = ["OllamaBackend"]


class OllamaBackend(HttpBackend):
    kind = "ollama"

    async def list_models(self) -> list[ModelInfo]:
        body = await self._get_json("/api/tags")
        data = body.get("models") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise BadResponse("GET /api/tags: no models list", backend=self.label)
        models = []
        for item in data:
            name = item.get("name") or item.get("model") if isinstance(item, dict) else None
            if not isinstance(name, str):
                raise BadResponse("GET /api/tags: an entry has no name", backend=self.label)
            details = item.get("details") if isinstance(item.get("details"), dict) else {}
            quantization = details.get("quantization_level")
            models.append(
                ModelInfo(
                    name=name,
                    quantization=quantization if isinstance(quantization, str) else None,
                    size_bytes=optional_count(item.get("size")),
                )
            )
        return models

    def generate(
        self, request: LlmRequest, *, total_timeout: float | None = None
    ) -> AsyncGenerator[Event, None]:
        return self._timed(self._events(request), total_timeout)

    async def _events(self, request: LlmRequest) -> AsyncGenerator[Event, None]:
        path, body = _request_body(request)
        async with aclosing(self._stream_lines(path, body)) as lines:
            async for line in lines:
                if not line.strip():
                    continue
                obj = self._json_line(line)
                if "error" in obj:  # a failure after the stream started (e.g. the runner crashed)
                    raise BackendUnavailable(f"error in stream: {obj['error']}", backend=self.label)
                text = _text(obj)
                if text:
                    yield TokenChunk(text)
                if obj.get("done") is True:
                    await self._finish(lines)
                    reason = obj.get("done_reason")
                    yield Completion(
                        input_tokens=optional_count(obj.get("prompt_eval_count")),
                        output_tokens=optional_count(obj.get("eval_count")),
                        finish_reason=reason if isinstance(reason, str) else "stop",
                    )
                    return
        raise BadResponse("the stream ended before done: true", backend=self.label)


def _request_body(request: LlmRequest) -> tuple[str, dict[str, Any]]:
    options: dict[str, Any] = {"num_predict": request.max_tokens}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.top_p is not None:
        options["top_p"] = request.top_p
    if request.seed is not None:
        options["seed"] = request.seed
    if request.stop:
        options["stop"] = list(request.stop)
    body: dict[str, Any] = {"model": request.model, "stream": True, "options": options}
    if request.messages is None:
        body["prompt"] = request.prompt or ""
        return "/api/generate", body
    body["messages"] = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.content}
        for m in request.messages
    ]
    return "/api/chat", body


def _text(obj: dict[str, Any]) -> str:
    message = obj.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else ""
    response = obj.get("response")  # /api/generate
    return response if isinstance(response, str) else ""

"""Fake LLM backends that speak the real wire formats, served by uvicorn on loopback.

- Ollama: ``GET /api/tags``; ``POST /api/chat`` and ``/api/generate`` streaming NDJSON, the
  last object ``done: true`` with ``done_reason``, ``prompt_eval_count`` and ``eval_count``;
  unknown model → 404 ``{"error": "model \\"x\\" not found, try pulling it first"}``.
- OpenAI-compatible: ``GET /v1/models``; ``POST /v1/chat/completions`` and ``/v1/completions``
  streaming SSE (``data: {chunk}`` + blank line, a usage-only chunk when
  ``stream_options.include_usage`` is set, then ``data: [DONE]``); unknown model → 404 in
  OpenAI's error shape.

The answer is deterministic: :data:`REPLY` pieces, cut at ``max_tokens`` (finish ``length``)
or before the first stop sequence (OpenAI's ``stop``, Ollama's ``options.stop``: the text up to
it, finish ``stop``), as real servers do.
Usage: prompt tokens = whitespace-separated words of the prompt text; completion tokens =
pieces sent. ``FakeLlm.mode`` makes the server misbehave for the failure tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import until

REPLY = ["The", " sea", " is", " wide", " and", " deep", "."]
MODEL = "tiny-chat:latest"

# Misbehaviours: "ok", "status" (answer status_code with error_body), "garbage" (a non-JSON
# stream line), "truncate" (stop after two pieces, no final record), "stream_error" (an error
# record after two pieces), "slow_first" (no byte for `delay` s), "stall" (stop for `delay` s
# after the first piece), "pings" (keep-alives only, for `delay` s: SSE comments or blank NDJSON
# lines), "no_usage" (a final record without counts).
MODES = {
    "ok",
    "status",
    "garbage",
    "truncate",
    "stream_error",
    "slow_first",
    "stall",
    "pings",
    "no_usage",
}


@dataclass
class FakeLlm:
    kind: str  # "ollama" | "openai"
    models: list[str] = field(default_factory=lambda: [MODEL])
    mode: str = "ok"
    status_code: int = 500
    error_body: Any = None
    delay: float = 30.0
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # The client (host, port) of each generation request: one port for two requests means the
    # client kept the connection open between them.
    peers: list[tuple[str, int]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    base_url: str = ""

    def app(self) -> Starlette:
        if self.kind == "ollama":
            routes = [
                Route("/api/tags", self.ollama_tags, methods=["GET"]),
                Route("/api/chat", self.ollama_generate, methods=["POST"]),
                Route("/api/generate", self.ollama_generate, methods=["POST"]),
            ]
        else:
            routes = [
                Route("/v1/models", self.openai_models, methods=["GET"]),
                Route("/v1/chat/completions", self.openai_generate, methods=["POST"]),
                Route("/v1/completions", self.openai_generate, methods=["POST"]),
            ]
        return Starlette(routes=routes)

    # -- shared ------------------------------------------------------------------------------

    async def _accept(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        body = await request.json()
        self.requests.append((request.url.path, body))
        if request.client is not None:
            self.peers.append((request.client.host, request.client.port))
        if self.mode == "status":
            return body, JSONResponse(self.error_body, status_code=self.status_code)
        if body.get("model") not in self.models:
            return body, self._missing(str(body.get("model")))
        return body, None

    def _missing(self, model: str) -> Response:
        if self.kind == "ollama":
            message = f'model "{model}" not found, try pulling it first'
            return JSONResponse({"error": message}, status_code=404)
        error = {
            "message": f"The model `{model}` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
        return JSONResponse({"error": error}, status_code=404)

    @staticmethod
    def reply(max_tokens: int, stop: object) -> tuple[list[str], str]:
        """The pieces of the answer and its finish reason: :data:`REPLY` cut before the first
        stop sequence (``stop``), else at ``max_tokens`` pieces."""
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        text = "".join(REPLY)
        cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=None)
        pieces: list[str] = []
        for piece in REPLY:
            if cut is not None and sum(map(len, pieces)) + len(piece) > cut:
                rest = piece[: cut - sum(map(len, pieces))]
                pieces += [rest] if rest else []
                break
            pieces.append(piece)
        if cut is not None and len(pieces) <= max_tokens:
            return pieces, "stop"
        return pieces[:max_tokens], "length" if max_tokens < len(REPLY) else "stop"

    async def _pieces(self, pieces: list[str]) -> AsyncIterator[str]:
        # Starlette cancels a streaming body when the client disconnects (as real servers stop
        # generating): that cancellation is what `disconnected` records.
        try:
            if self.mode == "slow_first":
                await asyncio.sleep(self.delay)
            for i, piece in enumerate(pieces):
                if self.mode == "stall" and i == 1:
                    await asyncio.sleep(self.delay)
                yield piece
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.disconnected.set()
            raise

    async def _pings(self, ping: bytes) -> AsyncIterator[bytes]:
        if self.mode != "pings":
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + self.delay
        try:
            while loop.time() < end:
                yield ping
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.disconnected.set()
            raise

    @staticmethod
    def _prompt_words(body: dict[str, Any]) -> int:
        if "messages" in body:
            return sum(len(str(m["content"]).split()) for m in body["messages"])
        return len(str(body.get("prompt", "")).split())

    # -- Ollama ------------------------------------------------------------------------------

    async def ollama_tags(self, request: Request) -> Response:
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": "2026-01-01T00:00:00Z",
                "size": 1234,
                "digest": "0" * 64,
                "details": {"format": "gguf", "family": "llama", "quantization_level": "Q4_0"},
            }
            for name in self.models
        ]
        return JSONResponse({"models": models})

    async def ollama_generate(self, request: Request) -> Response:
        body, refused = await self._accept(request)
        if refused is not None:
            return refused
        options = body.get("options", {})
        pieces, finish = self.reply(int(options.get("num_predict", 128)), options.get("stop"))
        chat = request.url.path.endswith("/chat")

        async def lines() -> AsyncIterator[bytes]:
            async for ping in self._pings(b"\n"):
                yield ping
            sent = 0
            async for piece in self._pieces(pieces):
                if self.mode in ("truncate", "stream_error") and sent == 2:
                    if self.mode == "stream_error":
                        yield b'{"error":"llama runner process has terminated"}\n'
                    return
                if self.mode == "garbage" and sent == 1:
                    yield b"this is not json\n"
                    return
                out: dict[str, Any] = {"model": body["model"], "done": False}
                if chat:
                    out["message"] = {"role": "assistant", "content": piece}
                else:
                    out["response"] = piece
                yield json.dumps(out).encode() + b"\n"
                sent += 1
            final: dict[str, Any] = {
                "model": body["model"],
                "done": True,
                "done_reason": finish,
                "total_duration": 1_000_000,
            }
            if chat:
                final["message"] = {"role": "assistant", "content": ""}
            else:
                final["response"] = ""
            if self.mode != "no_usage":
                final["prompt_eval_count"] = self._prompt_words(body)
                final["eval_count"] = sent
            yield json.dumps(final).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    # -- OpenAI-compatible ---------------------------------------------------------------------

    async def openai_models(self, request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "fake", "max_model_len": 2048}
            for name in self.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def openai_generate(self, request: Request) -> Response:
        body, refused = await self._accept(request)
        if refused is not None:
            return refused
        pieces, finish = self.reply(int(body.get("max_tokens", 16)), body.get("stop"))
        chat = request.url.path.endswith("/chat/completions")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def event(payload: Any) -> bytes:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            return f"data: {data}\n\n".encode()

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": {} if text is None else {"content": text},
                }
            else:
                choice = {"index": 0, "text": text or ""}
            choice["finish_reason"] = finish
            out = {"id": "cmpl-1", "object": "chat.completion.chunk", "model": body["model"]}
            return {**out, "choices": [choice], "usage": None}

        async def events() -> AsyncIterator[bytes]:
            yield b": keep-alive comment\n\n"
            async for ping in self._pings(b": ping\n\n"):
                yield ping
            if chat:
                first = chunk(None, None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield event(first)
            sent = 0
            async for piece in self._pieces(pieces):
                if self.mode in ("truncate", "stream_error") and sent == 2:
                    if self.mode == "stream_error":
                        yield event({"error": {"message": "engine died", "type": "InternalError"}})
                    return
                if self.mode == "garbage" and sent == 1:
                    yield b"data: {not json\n\n"
                    return
                yield event(chunk(piece, None))
                sent += 1
            yield event(chunk(None, finish))
            if include_usage and self.mode != "no_usage":
                prompt = self._prompt_words(body)
                usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": sent,
                    "total_tokens": prompt + sent,
                }
                yield event(
                    {
                        "id": "cmpl-1",
                        "object": "chat.completion.chunk",
                        "choices": [],
                        "usage": usage,
                    }
                )
            yield event("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")


@contextlib.asynccontextmanager
async def serve(fake: FakeLlm) -> AsyncIterator[FakeLlm]:
    """Serve ``fake`` on 127.0.0.1 (a free port) for the duration of the block."""
    config = uvicorn.Config(
        fake.app(),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started)
        port = server.servers[0].sockets[0].getsockname()[1]
        fake.base_url = f"http://127.0.0.1:{port}"
        yield fake
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)

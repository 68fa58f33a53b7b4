"""The Ollama-compatible API under ``/ollama/api`` (``tags``, ``chat``, ``generate``): Ollama
clients take ``<server>/ollama`` as their host, with an API key as a bearer token. Answers
stream as NDJSON by default, as Ollama does; ``"stream": false`` answers one JSON object.
``prompt_eval_count`` and ``eval_count`` are the billed input and output tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from parity.api.deps import ContainerDep, refuse_runner_token
from parity.api.jsonbody import JsonRoute
from parity.clock import utc_iso
from parity.errors import ParityError
from parity.gateway import relay
from parity.gateway.errors import ollama_error, parse
from parity.gateway.openai_schemas import chat_messages
from parity.llm import service as llm
from parity.llm.schemas import PromptCreate

router = APIRouter(route_class=JsonRoute, prefix="/ollama/api", tags=["ollama-compatible"])


class Options(BaseModel):
    model_config = ConfigDict(extra="allow")
    num_predict: int | None = None
    temperature: float | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=255)
    stream: bool = True
    options: Options | None = None


class ChatBody(_Common):
    messages: list[dict[str, Any]]


class GenerateBody(_Common):
    prompt: str


def _now() -> str:
    return utc_iso(datetime.now(UTC))


@router.get("/tags")
async def tags(request: Request, c: ContainerDep) -> Response:
    """The network's models, as Ollama lists its local ones."""
    try:
        await relay.authenticate(request)
        async with c.db.read_session() as session:
            models = await llm.list_models(session)
    except ParityError as exc:
        return ollama_error(exc)
    out = [
        {
            "name": m.model,
            "model": m.model,
            "modified_at": _now(),
            "size": 0,
            "digest": "",
            "details": {"quantization_level": ", ".join(m.quantizations)},
        }
        for m in models
    ]
    return JSONResponse({"models": out})


def _final(model: str, done: relay.Finished, chat: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": _now(), "done": True,
                           "done_reason": done.finish_reason}  # fmt: skip
    if chat:
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    if done.usage is not None:
        out["prompt_eval_count"] = done.usage.input_tokens
        out["eval_count"] = done.usage.output_tokens
    if done.duration_ms is not None:
        out["total_duration"] = int(done.duration_ms * 1_000_000)
    return out


def _piece(model: str, text: str, chat: bool) -> dict[str, Any]:
    key: dict[str, Any] = (
        {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
    )
    return {"model": model, "created_at": _now(), **key, "done": False}


def _line(obj: object) -> bytes:
    return orjson.dumps(obj) + b"\n"


async def _answer(request: Request, c: ContainerDep, chat: bool) -> Response:
    try:
        principal = refuse_runner_token(await relay.authenticate(request))
        body: ChatBody | GenerateBody
        opts = None
        if chat:
            body = await parse(request, ChatBody)
            assert isinstance(body, ChatBody)
            opts = body.options
            create = PromptCreate(model=body.model, messages=chat_messages(body.messages))
        else:
            body = await parse(request, GenerateBody)
            assert isinstance(body, GenerateBody)
            opts = body.options
            create = PromptCreate(model=body.model, prompt=body.prompt)
        if opts is not None:
            create.max_tokens = opts.num_predict
            create.temperature = opts.temperature
        if not body.stream:
            done = await relay.complete(c, principal, create)
            whole = _final(body.model, done, chat)
            whole["message" if chat else "response"] = (
                {"role": "assistant", "content": done.text} if chat else done.text
            )
            return JSONResponse(whole)
        opened = relay.streamed(c, principal, create, request)
        batches = await opened.__aenter__()
    except ParityError as exc:
        return ollama_error(exc)
    model = body.model

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for batch in batches:
                # What arrived together goes out in one write, a line per piece.
                out = []
                for piece in batch:
                    if isinstance(piece, relay.Delta):
                        out.append(_line(_piece(model, piece.text, chat)))
                    elif isinstance(piece, relay.Finished):
                        out.append(_line(_final(model, piece, chat)))
                    else:
                        out.append(_line({"error": piece.message}))
                yield b"".join(out)
                if not isinstance(batch[-1], relay.Delta):
                    return
        finally:
            await opened.__aexit__(None, None, None)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.post("/chat")
async def chat(request: Request, c: ContainerDep) -> Response:
    """Ollama's chat: ``{model, messages, stream?, options?{num_predict, temperature}}``."""
    return await _answer(request, c, chat=True)


@router.post("/generate")
async def generate(request: Request, c: ContainerDep) -> Response:
    """Ollama's generate: ``{model, prompt, stream?, options?{num_predict, temperature}}``."""
    return await _answer(request, c, chat=False)

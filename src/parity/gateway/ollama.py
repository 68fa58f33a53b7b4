"""The Ollama-compatible API under ``/ollama/api`` (``tags``, ``ps``, ``show``, ``version``,
``chat``, ``generate``; any other path is a 404 in Ollama's error shape): Ollama clients take
``<server>/ollama`` as their host, with an API key as a bearer token. Answers stream as NDJSON
by default, as Ollama does; ``"stream": false`` answers one JSON object. ``prompt_eval_count``
and ``eval_count`` are the billed input and output tokens.

Honoured: ``system``, ``options.num_predict`` (-1 and -2: the server's default limit),
``options.temperature``, ``top_p``, ``seed`` and ``stop``. Accepted and ignored:
``keep_alive`` and the host's loading options (:data:`OPTIONS_IGNORED`). Refused, naming the
field: ``format``, ``tools``, ``think``, ``images``, ``suffix``, ``template``, ``raw``,
``context`` (unless empty or false) and any other field or option."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from parity import __version__
from parity.api.deps import ContainerDep, refuse_runner_token
from parity.api.jsonbody import JsonRoute
from parity.clock import utc_iso
from parity.core.llm.aggregate import ModelSummary
from parity.core.llm.request import (
    MAX_OUTPUT_TOKENS,
    parse_seed,
    parse_stop,
    parse_temperature,
    parse_top_p,
)
from parity.errors import InvalidInput, ParityError
from parity.gateway import relay
from parity.gateway.errors import PROMPT_ID_HEADER, invalid, ollama_error, parse
from parity.gateway.openai_schemas import SUFFIX, chat_messages, checked, refuse_unsupported
from parity.llm.schemas import PromptCreate

router = APIRouter(route_class=JsonRoute, prefix="/ollama/api", tags=["ollama-compatible"])


# Honoured options: num_predict (max_tokens), temperature, top_p, seed and stop.
# How the host loads and runs a model (context window, batch, GPU layers, threads, memory
# mapping) is the serving runner's backend's to decide, and Ollama clients send these
# routinely: accepted and ignored.
OPTIONS_IGNORED = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "use_mmap",
        "use_mlock",
        "numa",
        "low_vram",
    }
)
_OPTIONS_HONOURED = ("num_predict", "temperature", "top_p", "seed", "stop")
# Top-level fields not honoured: accepted only with Ollama's default (or null).
_NOT_OFFERED: dict[str, tuple[tuple[object, ...], str]] = {
    "format": (("",), "structured output (JSON mode or a JSON schema) is not offered"),
    "tools": (([],), "tool calls are not offered"),
    "think": ((False,), "thinking output is not offered"),
    "images": (([],), "images are not offered"),
    "suffix": (("",), SUFFIX),
    "template": (("",), "a custom prompt template is not offered"),
    "raw": ((False,), "raw prompts (no template) are not offered"),
    "context": (([],), "an earlier answer's context is not offered (use /api/chat with the "
                "conversation's messages)"),
}  # fmt: skip
# keep_alive: how long the host keeps the model loaded, the runner's to decide.
_IGNORED = frozenset({"keep_alive"})
NO_LIMIT = (-1, -2)  # num_predict: Ollama's "no limit" and "fill the context"


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=255)
    stream: StrictBool = True  # true or false, not "yes" or 1
    options: dict[str, Any] | None = None
    system: str | None = None

    def settings(self) -> dict[str, Any]:
        """The prompt's output limit, sampling settings and stop sequences from ``options``;
        a field or option this gateway does not honour is refused, naming it."""
        refuse_unsupported(self.model_extra or {}, _NOT_OFFERED, _IGNORED)
        opts = self.options or {}
        refuse_unsupported(
            {k: v for k, v in opts.items() if k not in _OPTIONS_HONOURED},
            {},
            OPTIONS_IGNORED,
            prefix="options.",
        )
        return {
            "max_tokens": _num_predict(opts.get("num_predict")),
            "temperature": checked(
                parse_temperature, opts.get("temperature"), "options.temperature"
            ),
            "top_p": checked(parse_top_p, opts.get("top_p"), "options.top_p"),
            "seed": checked(parse_seed, opts.get("seed"), "options.seed"),
            "stop": list(checked(parse_stop, opts.get("stop"), "options.stop")) or None,
        }

    def system_messages(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system}] if self.system else []


class ChatBody(_Common):
    # None or empty: Ollama's "load the model" request (answered without a prompt).
    messages: list[dict[str, Any]] | None = None


class GenerateBody(_Common):
    prompt: str = ""  # empty (without a system text): Ollama's "load the model" request

    def loads_only(self) -> bool:
        return not self.prompt and not self.system


def _num_predict(raw: object) -> int | None:
    """``options.num_predict`` as max_tokens: -1 (no limit) and -2 (fill the context) set no
    limit of the client's own, so the prompt takes the server's default
    (LLM_DEFAULT_MAX_TOKENS), as when it is absent."""
    if raw is None or raw in NO_LIMIT:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidInput("options.num_predict", "must be an integer")
    if not 1 <= raw <= MAX_OUTPUT_TOKENS:
        raise InvalidInput(
            "options.num_predict",
            f"must be between 1 and {MAX_OUTPUT_TOKENS}, or -1 (no limit) or -2 (fill the "
            "context), which take the server's default",
        )
    return raw


def _now() -> str:
    return utc_iso(datetime.now(UTC))


@router.get("/tags")
async def tags(request: Request, c: ContainerDep) -> Response:
    """The network's models, as Ollama lists its local ones."""
    try:
        models = await relay.network_models(request, c)
    except ParityError as exc:
        return ollama_error(exc)
    return JSONResponse({"models": [{**_tag(m), "modified_at": _now()} for m in models]})


def _tag(m: ModelSummary) -> dict[str, Any]:
    return {
        "name": m.model,
        "model": m.model,
        "size": 0,
        "digest": "",
        "details": {"quantization_level": ", ".join(m.quantizations)},
    }


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


def _create(**fields: Any) -> PromptCreate:
    try:
        return PromptCreate(**fields)
    except ValidationError as exc:
        raise invalid(exc) from None


async def _answer(request: Request, c: ContainerDep, chat: bool) -> Response:
    try:
        principal = refuse_runner_token(await relay.authenticate(request))
        body: ChatBody | GenerateBody
        if chat:
            body = await parse(request, ChatBody)
            assert isinstance(body, ChatBody)
            settings = body.settings()
            if not body.messages:
                return await _load(request, c, body.model, chat)
            messages = [*body.system_messages(), *chat_messages(body.messages)]
            create = _create(model=body.model, messages=messages, **settings)
        else:
            body = await parse(request, GenerateBody)
            assert isinstance(body, GenerateBody)
            settings = body.settings()
            if body.loads_only():
                return await _load(request, c, body.model, chat)
            if body.system:
                # Ollama puts the system text before the prompt through the model's template:
                # a chat of the two.
                user = {"role": "user", "content": body.prompt}
                create = _create(
                    model=body.model, messages=[*body.system_messages(), user], **settings
                )
            else:
                create = _create(model=body.model, prompt=body.prompt, **settings)
        if not body.stream:
            done = await relay.complete(c, principal, create)
            whole = _final(body.model, done, chat)
            whole["message" if chat else "response"] = (
                {"role": "assistant", "content": done.text} if chat else done.text
            )
            return JSONResponse(whole, headers={PROMPT_ID_HEADER: str(done.prompt_id)})
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

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={PROMPT_ID_HEADER: str(batches.prompt_id)},
    )


async def _load(request: Request, c: ContainerDep, model: str, chat: bool) -> Response:
    """Ollama's answer to a chat without messages or a generate without a prompt, which its
    clients send to load a model: ``done_reason: "load"`` when an online runner serves the
    model (no prompt is made: the runners load their models themselves), else Ollama's 404."""
    models = await relay.network_models(request, c)
    if not any(m.model == model for m in models):
        return JSONResponse({"error": f"model '{model}' not found"}, status_code=404)
    out: dict[str, Any] = {"model": model, "created_at": _now()}
    if chat:
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    return JSONResponse({**out, "done": True, "done_reason": "load"})


@router.post("/chat")
async def chat(request: Request, c: ContainerDep) -> Response:
    """Ollama's chat: ``{model, messages, system?, stream?, options?{num_predict, temperature,
    top_p, seed, stop}}`` (a top-level ``system`` goes first, as a system message)."""
    return await _answer(request, c, chat=True)


@router.post("/generate")
async def generate(request: Request, c: ContainerDep) -> Response:
    """Ollama's generate: ``{model, prompt, system?, stream?, options?{num_predict,
    temperature, top_p, seed, stop}}`` (with ``system``: a chat of the system text and the
    prompt)."""
    return await _answer(request, c, chat=False)


@router.get("/version")
async def version() -> Response:
    """The server's version, where Ollama answers its own (no key needed, as with Ollama)."""
    return JSONResponse({"version": __version__})


@router.get("/ps")
async def running(request: Request, c: ContainerDep) -> Response:
    """The running models: those loaded on an online runner."""
    try:
        models = await relay.network_models(request, c)
    except ParityError as exc:
        return ollama_error(exc)
    out = []
    for m in models:
        if not m.loaded:
            continue
        entry = {**_tag(m), "expires_at": _now(), "size_vram": 0}
        if m.max_context_length is not None:
            entry["context_length"] = m.max_context_length
        out.append(entry)
    return JSONResponse({"models": out})


class ShowBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, min_length=1, max_length=255)
    name: str | None = Field(default=None, min_length=1, max_length=255)  # older clients
    verbose: StrictBool = False  # Ollama's tokenizer arrays: there are none to show


@router.post("/show")
async def show(request: Request, c: ContainerDep) -> Response:
    """One model the online runners serve (``ollama.show``): its quantization and, when runners
    report it, its context length, under ``model_info`` as ``<architecture>.context_length``
    (architecture ``parity``, the key clients read); Ollama's 404 when no online runner serves
    it. The modelfile, template and parameters are the runners' backends' own: empty here."""
    try:
        body = await parse(request, ShowBody)
        wanted = body.model or body.name
        if wanted is None:
            raise InvalidInput("model", "is required")
        models = await relay.network_models(request, c)
    except ParityError as exc:
        return ollama_error(exc)
    found = next((m for m in models if m.model == wanted), None)
    if found is None:
        return JSONResponse({"error": f"model '{wanted}' not found"}, status_code=404)
    info: dict[str, Any] = {"general.architecture": "parity", "general.name": found.model}
    if found.max_context_length is not None:
        info["parity.context_length"] = found.max_context_length
    return JSONResponse(
        {
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": _tag(found)["details"],
            "model_info": info,
            "capabilities": ["completion"],
            "modified_at": _now(),
        }
    )


# Last of this router: any other path under /ollama/api (pull, embed, ...) is a 404 in
# Ollama's error shape.
@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
async def unknown_route(path: str, request: Request) -> Response:
    message = (
        f"{request.method} /api/{path} is not offered by this gateway (it offers /api/tags, "
        "/api/ps, /api/show, /api/version, /api/chat and /api/generate)"
    )
    return JSONResponse({"error": message}, status_code=404)

"""The OpenAI-compatible gateway at the root (``/v1/models``, ``/v1/models/{id}``,
``/v1/chat/completions``, ``/v1/completions``; any other ``/v1`` path is a 404 in OpenAI's
error shape): the official ``openai`` client and tools built on it work against the
network with ``base_url=<server>/v1`` and an API key of the auth domain as their key.

Each request is one prompt of the LLM domain: non-streaming waits for its result (up to
LLM_GATEWAY_TIMEOUT_SECONDS, else 504); ``stream=true`` answers server-sent events of
``chat.completion.chunk`` (or ``text_completion``) objects ending ``data: [DONE]``, with the
billed usage in a last chunk when ``stream_options.include_usage`` is set, as OpenAI does."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from parity.api.deps import ContainerDep, refuse_runner_token
from parity.api.jsonbody import JsonRoute
from parity.auth.schemas import Principal
from parity.errors import ParityError
from parity.gateway import relay
from parity.gateway.errors import (
    PROMPT_ID_HEADER,
    invalid,
    openai_body,
    openai_error,
    openai_error_body,
    parse,
)
from parity.gateway.openai_schemas import (
    ChatCompletionCreate,
    CompletionCreate,
    chat_messages,
    tokens_limit,
)
from parity.llm.schemas import PromptCreate

router = APIRouter(route_class=JsonRoute, tags=["openai-compatible"])
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _usage(u: relay.Usage | None) -> dict[str, int] | None:
    if u is None:
        return None
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
    }


def _sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@router.get("/v1/models")
async def list_models(request: Request, c: ContainerDep) -> Response:
    """The models the network's online runners serve."""
    try:
        models = await relay.network_models(request, c)
    except ParityError as exc:
        return openai_error(exc)
    return JSONResponse({"object": "list", "data": [_model(m.model) for m in models]})


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "parity"}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request, c: ContainerDep) -> Response:
    """One model the online runners serve (``client.models.retrieve``), else OpenAI's 404
    ``model_not_found``."""
    try:
        models = await relay.network_models(request, c)
    except ParityError as exc:
        return openai_error(exc)
    if any(m.model == model_id for m in models):
        return JSONResponse(_model(model_id))
    message = f"The model `{model_id}` does not exist or no runner serves it"
    return JSONResponse(openai_body(404, message, None, "model_not_found"), status_code=404)


def _create(**fields: Any) -> PromptCreate:
    """The prompt of a request (its fields are checked before: a refusal here is a bug in that
    check, still answered as the parameter it names)."""
    try:
        return PromptCreate(**fields)
    except ValidationError as exc:
        raise invalid(exc) from None


async def _prompt(request: Request, c: ContainerDep, chat: bool) -> Response:
    try:
        principal = refuse_runner_token(await relay.authenticate(request))
        body: ChatCompletionCreate | CompletionCreate
        if chat:
            body = await parse(request, ChatCompletionCreate)
            assert isinstance(body, ChatCompletionCreate)
            create = _create(
                model=body.model,
                messages=chat_messages(body.messages),
                max_tokens=body.output_limit(),
                **body.sampling(),
            )
        else:
            body = await parse(request, CompletionCreate)
            assert isinstance(body, CompletionCreate)
            tokens_limit("max_tokens", body.max_tokens)
            create = _create(
                model=body.model,
                prompt=body.prompt_text(),
                max_tokens=body.max_tokens,
                **body.sampling(),
            )
        created = int(c.clock.now().timestamp())
        shape = _Shape(created, body.model, chat)
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return await _stream(request, c, principal, create, shape, usage)
        done = await relay.complete(c, principal, create)
    except ParityError as exc:
        return openai_error(exc)
    shape.prompt_id = done.prompt_id
    return JSONResponse(shape.whole(done), headers=_prompt_header(done.prompt_id))


def _prompt_header(prompt_id: uuid.UUID) -> dict[str, str]:
    return {PROMPT_ID_HEADER: str(prompt_id)}


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, c: ContainerDep) -> Response:
    """A chat completion (OpenAI's request and response shapes)."""
    return await _prompt(request, c, chat=True)


@router.post("/v1/completions")
async def completions(request: Request, c: ContainerDep) -> Response:
    """A text completion (OpenAI's legacy completions shape)."""
    return await _prompt(request, c, chat=False)


def _texts(batch: list[relay.Piece]) -> list[str]:
    return [p.text for p in batch if isinstance(p, relay.Delta)]


class _Shape:
    """The response objects of one request."""

    def __init__(self, created: int, model: str, chat: bool) -> None:
        self.created, self.model, self.chat = created, model, chat
        self.prompt_id = uuid.UUID(int=0)  # set once the prompt is submitted

    @property
    def ident(self) -> str:
        """The completion's id: the prompt's own (``GET /api/v1/llm/prompts/{id}`` reads its
        record: cost, attempts, timings), in OpenAI's ``chatcmpl-``/``cmpl-`` form."""
        return f"{'chatcmpl' if self.chat else 'cmpl'}-{self.prompt_id.hex}"

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.ident, "object": kind, "created": self.created, "model": self.model}

    def whole(self, done: relay.Finished) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": done.text},
                "logprobs": None,
                "finish_reason": done.finish_reason,
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": done.text, "logprobs": None,
                      "finish_reason": done.finish_reason}  # fmt: skip
            kind = "text_completion"
        return {**self._head(kind), "choices": [choice], "usage": _usage(done.usage)}

    def chunk(
        self, text: str | None, finish: str | None = None, role: bool = False
    ) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if role:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish}  # fmt: skip
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, done: relay.Finished) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(kind), "choices": [], "usage": _usage(done.usage)}

    def delta_events(self, include_usage: bool) -> Callable[[list[str]], bytes]:
        """The events of text deltas: ``chunk(text)`` (with ``"usage": null`` when the usage
        comes last) as server-sent events, from bytes encoded once per request around each
        text's own JSON string."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        head = orjson.dumps(self._head(kind))[:-1]
        opening = (
            b',"choices":[{"index":0,"delta":{"content":'
            if self.chat
            else (b',"choices":[{"index":0,"text":')
        )
        closing = b'},"logprobs":null' if self.chat else b',"logprobs":null'
        tail = b',"finish_reason":null}]' + (b',"usage":null' if include_usage else b"")
        before, after = b"data: " + head + opening, closing + tail + b"}\n\n"

        def events(texts: list[str]) -> bytes:
            return b"".join(before + orjson.dumps(t) + after for t in texts)

        return events


async def _stream(
    request: Request,
    c: ContainerDep,
    principal: Principal,
    create: PromptCreate,
    shape: _Shape,
    include_usage: bool,
) -> Response:
    # Entered here, so a refused submit answers with its status before any event is sent.
    opened = relay.streamed(c, principal, create, request)
    batches = await opened.__aenter__()
    shape.prompt_id = batches.prompt_id
    extra: Callable[[dict[str, Any]], dict[str, Any]] = (
        (lambda o: {**o, "usage": None}) if include_usage else (lambda o: o)
    )

    deltas = shape.delta_events(include_usage)

    async def events() -> AsyncIterator[bytes]:
        try:
            if shape.chat:
                yield _sse(extra(shape.chunk("", role=True)))
            async for batch in batches:
                # What arrived together goes out in one write, an event per delta.
                out = [deltas(texts)] if (texts := _texts(batch)) else []
                last = batch[-1]
                if isinstance(last, relay.Finished):
                    out.append(
                        _sse(extra(shape.chunk(None if shape.chat else "", last.finish_reason)))
                    )
                    if include_usage:
                        out.append(_sse(shape.usage_chunk(last)))
                elif isinstance(last, relay.Failed):
                    out.append(_sse(openai_error_body(last.error)))
                if not isinstance(last, relay.Delta):
                    yield b"".join([*out, b"data: [DONE]\n\n"])
                    return
                yield b"".join(out)
            # No last piece: the client went away, nobody reads an end.
        finally:
            await opened.__aexit__(None, None, None)

    headers = {**SSE_HEADERS, **_prompt_header(batches.prompt_id)}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


# Last of this router: any other path under /v1 (embeddings, images, audio, files, a wrong
# method...) is answered in OpenAI's shape, as OpenAI answers an unknown URL.
@router.api_route(
    "/v1/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def unknown_route(path: str, request: Request) -> Response:
    message = f"Invalid URL ({request.method} /v1/{path}): this gateway offers /v1/models, "
    message += "/v1/chat/completions and /v1/completions"
    return JSONResponse(openai_body(404, message, None, None), status_code=404)

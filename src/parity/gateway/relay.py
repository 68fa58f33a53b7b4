"""What both gateways do with a prompt: authenticate the bearer key, check the model, submit
(subscribed to its token deltas before the submit commits, so none is missed), wait for the
result within LLM_GATEWAY_TIMEOUT_SECONDS, or relay the deltas as they come.

Streaming semantics (ARCHITECTURE §4, streaming leg): deltas come from one attempt. A runner
that stops before its first delta is failed over by the queue and the next attempt streams
instead. Once text has reached the client, a change of attempt cannot be hidden: the client
gets an error event. A runner that reports its failure with the delivered text ends the prompt
`failed` and the delivered tokens are billed (``llm.billing``); so does a runner whose stream
connection broke off (killed outright: the streaming leg fails its attempt with the relayed
text, then ends the stream, and the client gets the error event at once). A runner lost
otherwise is re-routed by the queue, and the gateway then cancels the task. When the prompt
completes, any text the relay did not carry (a subscriber cut off by its bounded buffer, a
runner that does not stream) is sent from the stored result.

A client that goes away cancels the prompt, whenever it leaves: the relay watches the request's
receive channel for the server's ``http.disconnect`` while it waits for events, so a hang-up
before the first token is noticed then, not at the next write."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request

from parity.api.deps import get_principal
from parity.auth.schemas import Principal
from parity.container import Container
from parity.errors import NotFound, ParityError, Unavailable
from parity.llm import service as llm
from parity.llm.repository import PromptRow
from parity.llm.schemas import PromptCreate
from parity.llm.streams import StreamEvent, Subscription
from parity.llm.views import FINISHED, metered, prompt_status
from parity.logging import get_logger
from parity.tasks import service as tasks_service

log = get_logger("parity.gateway")
# After a runner closed its stream, its completion follows within a request: look often.
SETTLE_POLL_SECONDS = 0.25
_background: set[asyncio.Task[None]] = set()


class ModelNotFound(NotFound):
    code = "model_not_found"


class GatewayTimeout(ParityError):
    code = "timeout"


class PromptFailed(Unavailable):
    code = "prompt_failed"


async def authenticate(request: Request) -> Principal:
    """The caller of a bearer key (an API key, or any other token of the auth domain)."""
    return await get_principal(request, request.headers.get("authorization"))


async def require_model(c: Container, model: object) -> str:
    """``model`` when an online runner reports it, else model_not_found (404)."""
    if not isinstance(model, str) or not model:
        return ""  # the submit names the missing field
    async with c.db.read_session() as session:
        names = {m.model for m in await llm.list_models(session)}
    if model not in names:
        raise ModelNotFound(f"The model `{model}` does not exist or no runner serves it")
    return model


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Finished:
    """A completed prompt as the gateways answer it."""

    prompt_id: uuid.UUID
    text: str
    finish_reason: str
    usage: Usage | None
    duration_ms: float | None


def finished(row: PromptRow) -> Finished:
    """A completed prompt's text, finish reason (``stop`` or ``length``) and billed usage."""
    billed = metered(row)
    usage = None if billed is None else Usage(billed[0]["input_tokens"], billed[0]["output_tokens"])
    raw = row.usage or {}
    reason = "length" if raw.get("finish_reason") == "length" else "stop"
    return Finished(
        prompt_id=row.prompt.id,
        text=row.output or "",
        finish_reason=reason,
        usage=usage,
        duration_ms=None if billed is None else billed[2],
    )


def _failure(row: PromptRow) -> PromptFailed:
    return PromptFailed(
        row.last_error or "the prompt failed", details={"prompt_id": str(row.prompt.id)}
    )


async def complete(c: Container, principal: Principal, body: PromptCreate) -> Finished:
    """Submit and wait for the result (no connection held while waiting)."""
    async with c.db.transaction() as session:
        prompt = await llm.submit_prompt(session, c.llm, principal, body)
    row = await llm.wait_for_prompt(
        c.db,
        c.event_hub,
        principal,
        prompt.id,
        c.settings.llm_gateway_timeout_seconds,
        recheck_seconds=c.settings.long_poll_recheck_seconds,
        stopping=lambda: c.draining,
    )
    status = prompt_status(row.status)
    if status == "completed":
        return finished(row)
    if status == "failed":
        raise _failure(row)
    cancel_later(c, principal, prompt.id)
    raise GatewayTimeout(
        f"the prompt did not finish within {c.settings.llm_gateway_timeout_seconds:g} s"
    )


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Failed:
    message: str


Piece = Delta | Finished | Failed


@contextlib.asynccontextmanager
async def streamed(
    c: Container, principal: Principal, body: PromptCreate, request: Request | None = None
) -> AsyncIterator[AsyncIterator[Piece]]:
    """Submit a streaming prompt; yields the iterator of its pieces (deltas, then one
    ``Finished`` or ``Failed``). Leaving early (the client went away) cancels the prompt. With
    ``request``, the iterator also ends, without a last piece, as soon as its client
    disconnects: the caller writes nothing more and leaves."""
    async with contextlib.AsyncExitStack() as stack:
        async with c.db.transaction() as session:
            prompt = await llm.submit_prompt(session, c.llm, principal, body, stream=True)
            # Subscribed before the commit: no runner can see the prompt before this.
            sub = await stack.enter_async_context(c.streams.subscribe(str(prompt.id)))
        state = _Relay(c, principal, prompt.id, sub)
        if request is not None:
            state.gone = asyncio.get_running_loop().create_task(_disconnected(request))
        try:
            yield state.pieces()
        finally:
            if state.gone is not None:
                state.gone.cancel()
            if not state.done:
                cancel_later(c, principal, prompt.id)


async def _disconnected(request: Request) -> None:
    """Returns once the client's connection is gone (the server's ``http.disconnect``). The
    body was read before the submit, so nothing else arrives on the channel."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _ClientGone(Exception):
    pass


class _Relay:
    def __init__(
        self, c: Container, principal: Principal, prompt_id: uuid.UUID, sub: Subscription
    ) -> None:
        self.c, self.principal, self.prompt_id, self.sub = c, principal, prompt_id, sub
        self.sent: list[str] = []
        self.attempt: int | None = None
        self.done = False
        self.gone: asyncio.Task[None] | None = None

    async def _next(self, wait: float) -> StreamEvent | None:
        """The subscription's next event, or _ClientGone as soon as the client disconnects."""
        if self.gone is None:
            return await self.sub.next(wait)
        if not self.gone.done():
            nxt = asyncio.ensure_future(self.sub.next(wait))
            await asyncio.wait((nxt, self.gone), return_when=asyncio.FIRST_COMPLETED)
            if nxt.done():
                return nxt.result()
            nxt.cancel()
            await asyncio.gather(nxt, return_exceptions=True)
        if self.gone.cancelled() or self.gone.exception() is not None:
            self.gone = None  # the channel could not be watched: writes still notice a hang-up
            return await self.sub.next(wait)
        raise _ClientGone

    async def _read(self) -> PromptRow:
        async with self.c.db.read_session() as session:
            return await llm.read_prompt(session, self.principal, self.prompt_id)

    async def pieces(self) -> AsyncIterator[Piece]:
        limit = self.c.settings.llm_gateway_timeout_seconds
        deadline = time.monotonic() + limit
        recheck = self.c.settings.long_poll_recheck_seconds
        settling = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                yield self._fail(f"the prompt did not finish within {limit:g} s")
                return
            wait = min(remaining, SETTLE_POLL_SECONDS if settling else recheck)
            try:
                event = await self._next(wait)
            except _ClientGone:
                return  # no last piece: the caller's exit cancels the prompt
            if event is not None and event.kind == "delta":
                if self.attempt is None:
                    self.attempt = event.attempt
                if event.attempt == self.attempt and event.text:
                    self.sent.append(event.text)
                    yield Delta(event.text)
                continue
            broke = False
            if event is not None and event.kind == "end" and event.attempt == self.attempt:
                settling = not event.broken
                broke = event.broken and bool(self.sent)
            row = await self._read()
            status = prompt_status(row.status)
            if status == "completed":
                done = finished(row)
                sent = "".join(self.sent)
                if done.text.startswith(sent):
                    if done.text[len(sent) :]:
                        yield Delta(done.text[len(sent) :])
                    self.done = True
                    yield done
                else:
                    yield self._fail("the stream broke off (the completed text differs)")
                return
            if status in FINISHED:
                self.done = True
                yield Failed(row.last_error or "the prompt failed")
                return
            if broke or (self.sent and (status == "queued" or row.attempts != self.attempt)):
                # Text was delivered and the runner that sent it is gone: no silent restart.
                # (A broken stream normally finds the prompt failed already, just above.)
                yield self._fail("the runner serving this prompt stopped mid-stream")
                return

    def _fail(self, message: str) -> Failed:
        cancel_later(self.c, self.principal, self.prompt_id)
        self.done = True
        return Failed(message)


def cancel_later(c: Container, principal: Principal, prompt_id: uuid.UUID) -> None:
    """Cancel the prompt's task in the background: called where the caller may itself be
    cancelled (a client that went away), so the cancel must not depend on it."""

    async def cancel() -> None:
        try:
            async with c.db.transaction() as session:
                await tasks_service.cancel_task(session, c.tasks, principal, prompt_id)
        except ParityError:
            pass  # already finished: nothing to cancel
        except Exception as exc:  # the lease and deadline still end it
            log.warning("gateway_cancel_failed", prompt_id=str(prompt_id), error=str(exc)[:200])

    job = asyncio.get_running_loop().create_task(cancel())
    _background.add(job)
    job.add_done_callback(_background.discard)

"""What both gateways do with a prompt: authenticate the bearer key, submit (subscribed to its
token deltas before the submit commits, so none is missed; a model no claiming runner reports
is model_not_found, told by the submit's own routing read), wait for the result within
LLM_GATEWAY_TIMEOUT_SECONDS, or relay the deltas as they come (then the limit is the wait for
the first token, and after it the longest pause between two deltas: a long answer that keeps
coming is never cut off).

A prompt the model's backend refused as a bad request (``llm.service.refusal``: longer than
the context, a parameter out of range) ends at once with the backend's message, answered as
the client's error (400 ``invalid_request_error``), not re-run on another runner.

Streaming semantics (ARCHITECTURE §4, streaming leg): deltas come from one attempt. A runner
that stops before its first delta is failed over by the queue and the next attempt streams
instead. Once text has reached the client, a change of attempt cannot be hidden: the client
gets an error event. A runner that reports its failure with the delivered text ends the prompt
`failed` and the delivered tokens are billed (``llm.billing``); so does a runner whose stream
connection broke off (killed outright: the streaming leg fails its attempt with the relayed
text, then ends the stream, and the client gets the error event at once). A runner lost
otherwise is re-routed by the queue, and the gateway then cancels the task. When the prompt
completes, any text the relay did not carry (a subscriber cut off by its bounded buffer, a
runner that does not stream) is sent from the stored result. Once the runner has closed its
stream, the relay waits for its task's next event (the runner's report, committed right after)
instead of polling, and reads the stored prompt then: one read per streamed prompt.

A client that goes away cancels the prompt, whenever it leaves: the relay watches the request's
receive channel for the server's ``http.disconnect`` while it waits for events, so a hang-up
before the first token is noticed then, not at the next write. The cancel ends the runner's
stream request (``gateway.runner_stream``), so the runner stops at once; the partial usage it
reports is billed, for a stream at most the text relayed to the client before it left (recorded
with the cancel). A non-streaming request does the same while it waits for the answer (the
runner stops and its partial usage is billed), so a client that times out and retries does not
pay for every abandoned try run to its end."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from parity.api.deps import get_principal
from parity.auth.schemas import Principal
from parity.container import Container
from parity.core.llm.aggregate import ModelSummary
from parity.errors import Category, ParityError, Unavailable
from parity.llm import service as llm
from parity.llm.repository import PromptRow
from parity.llm.schemas import PromptCreate
from parity.llm.streams import StreamEvent, Subscription
from parity.llm.views import FINISHED, metered, prompt_status
from parity.logging import get_logger
from parity.tasks import service as tasks_service
from parity.waiters import Watch

log = get_logger("parity.gateway")
# After a runner closed its stream, its completion follows within a request: look often.
SETTLE_POLL_SECONDS = 0.25
# A stream still open when the server starts stopping (SIGTERM) may go on for this share of
# SHUTDOWN_GRACE_SECONDS; then it ends with an error event, within the grace, and its prompt
# is cancelled (billed for what was relayed), instead of being cut off without one.
DRAIN_SHARE = 0.5
SHUTTING_DOWN = "the server is shutting down: the stream ended before its answer; send it again"
_background: set[asyncio.Task[None]] = set()


class GatewayTimeout(ParityError):
    code = "timeout"


class PromptFailed(Unavailable):
    code = "prompt_failed"


class PromptRejected(ParityError):
    """The model's backend refused the request itself (400 ``invalid_request_error``): the
    client's to fix; retrying it as it is would be refused again."""

    code = "backend_rejected_request"
    category = Category.INVALID


class ClientGone(ParityError):
    """The client disconnected before its answer (nobody reads this one)."""

    code = "client_disconnected"
    category = Category.INVALID


# The request being served, set by authenticate(): a gateway that does not hand its request to
# complete() still has its client's hang-up noticed there.
_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "parity_gateway_request", default=None
)


async def authenticate(request: Request) -> Principal:
    """The caller of a bearer key (an API key, or any other token of the auth domain)."""
    _request.set(request)
    return await get_principal(request, request.headers.get("authorization"))


async def network_models(request: Request, c: Container) -> list[ModelSummary]:
    """The models online runners serve, for an authenticated caller (ParityError when the key
    is refused): what every gateway's model list reads."""
    await authenticate(request)
    async with c.db.read_session() as session:
        return await llm.list_models(session)


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


def _failure(row: PromptRow) -> ParityError:
    details = {"prompt_id": str(row.prompt.id)}
    refused = llm.refusal(row.last_error)
    if refused is not None:
        return PromptRejected(refused, details=details)
    return PromptFailed(row.last_error or "the prompt failed", details=details)


async def complete(
    c: Container, principal: Principal, body: PromptCreate, request: Request | None = None
) -> Finished:
    """Submit and wait for the result (no connection held while waiting). A model no
    claiming runner reports is model_not_found (404), as OpenAI and Ollama answer it. The
    client's ``request`` (by default the one :func:`authenticate` read) is watched meanwhile:
    a client that disconnects cancels the prompt (:class:`ClientGone`)."""
    if request is None:
        request = _request.get()
    async with c.db.transaction() as session:
        prompt = await llm.submit_prompt(session, c.llm, principal, body, require_served=True)
    waiting = asyncio.ensure_future(
        llm.wait_for_prompt(
            c.db,
            c.event_hub,
            principal,
            prompt.id,
            c.settings.llm_gateway_timeout_seconds,
            recheck_seconds=c.settings.long_poll_recheck_seconds,
            stopping=lambda: c.draining,
            deps=c.llm,
        )
    )
    try:
        row = await _unless_gone(waiting, request)
    except _ClientGone:
        cancel_later(c, principal, prompt.id, client_gone=True)
        raise ClientGone("the client disconnected before the answer") from None
    status = prompt_status(row.status)
    if status == "completed":
        return finished(row)
    if status == "failed":
        raise _failure(row)
    cancel_later(c, principal, prompt.id)
    raise GatewayTimeout(
        f"the prompt did not finish within {c.settings.llm_gateway_timeout_seconds:g} s"
    )


async def _unless_gone(waiting: asyncio.Future[PromptRow], request: Request | None) -> PromptRow:
    """``waiting``'s result, or _ClientGone as soon as the client disconnects (``waiting`` is
    then cancelled). A disconnect watcher that fails is dropped: the wait goes on."""
    if request is None:
        return await waiting
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((waiting, gone), return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done() and not gone.cancelled() and gone.exception() is None:
            raise _ClientGone
        return await waiting
    finally:
        for job in (gone, waiting):
            if not job.done():
                job.cancel()
        await asyncio.gather(gone, waiting, return_exceptions=True)


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Failed:
    """The prompt ended without an answer: ``error`` is what a non-streamed request would
    have raised (PromptRejected for a backend's refusal, the client's to fix; else
    PromptFailed), so a stream's last event carries the same status and code."""

    error: ParityError

    @property
    def message(self) -> str:
        return self.error.message


Piece = Delta | Finished | Failed


@dataclass(frozen=True)
class Opened:
    """A submitted streaming prompt: its id, and its pieces in batches (iterate it)."""

    prompt_id: uuid.UUID
    pieces: AsyncIterator[list[Piece]]

    def __aiter__(self) -> AsyncIterator[list[Piece]]:
        return self.pieces


@contextlib.asynccontextmanager
async def streamed(
    c: Container, principal: Principal, body: PromptCreate, request: Request | None = None
) -> AsyncIterator[Opened]:
    """Submit a streaming prompt; yields its id and the iterator of its pieces (deltas, then
    one ``Finished`` or ``Failed``), in batches of what arrived together, so a caller writes
    them to its client at once. Leaving early (the client went away) cancels the prompt. With
    ``request``, the iterator also ends, without a last piece, as soon as its client
    disconnects: the caller writes nothing more and leaves."""
    async with contextlib.AsyncExitStack() as stack:
        async with c.db.transaction() as session:
            prompt = await llm.submit_prompt(
                session, c.llm, principal, body, stream=True, require_served=True
            )
            # Subscribed before the commit: no runner can see the prompt before this.
            sub = await stack.enter_async_context(c.streams.subscribe(str(prompt.id)))
        state = _Relay(c, principal, prompt.id, sub)
        stack.callback(state.close)
        # Its task's events wake the relay from the start: a runner's failure before the
        # first token (a refusal ends the prompt, see _after) is read at once, not at a re-check.
        state.watch = state._watches.enter_context(c.event_hub.watch_resource(str(prompt.id)))
        if request is not None:
            state.gone = asyncio.get_running_loop().create_task(_disconnected(request))
        try:
            yield Opened(prompt.id, state.batches())
        finally:
            if not state.done:
                # The client left: billed for at most what was relayed to it by now.
                delivered = "".join(state.sent)
                cancel_later(c, principal, prompt.id, client_gone=True, delivered=delivered)


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
        self.settling = False  # the attempt's stream ended: its runner's report follows
        self.cut_off = False  # the subscription overflowed (or missed deltas): no more events
        self.gone: asyncio.Task[None] | None = None
        self._watches = contextlib.ExitStack()
        self.watch: Watch[str] | None = None

    def close(self) -> None:
        if self.gone is not None:
            self.gone.cancel()
        self._watches.close()

    def _client_gone(self) -> bool:
        """Whether the client disconnected; a watcher that failed is dropped (writes still
        notice a hang-up)."""
        gone = self.gone
        if gone is None or not gone.done():
            return False
        if gone.cancelled() or gone.exception() is not None:
            self.gone = None
            return False
        return True

    async def _events(self, wait: float) -> list[StreamEvent]:
        """The events queued now, else those that come within ``wait`` seconds (none: empty,
        also when an event of its task came before the first token or after the subscription
        was cut off: the caller reads the prompt then); _ClientGone as soon as the client
        disconnects. Waits on the subscription's future and the disconnect watcher together:
        no task per wait while tokens flow."""
        if self._client_gone():
            raise _ClientGone
        events = self.sub.take()
        if events:
            return events
        arrival = self.sub.arrival()
        waiting: list[asyncio.Future[Any]] = [arrival]
        if self.gone is not None:
            waiting.append(self.gone)
        woken = None
        if (self.attempt is None or self.cut_off) and self.watch is not None:
            woken = asyncio.ensure_future(self.watch.wait(wait))
            waiting.append(woken)
        try:
            await asyncio.wait(waiting, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if woken is not None and not woken.done():
                woken.cancel()
                await asyncio.gather(woken, return_exceptions=True)
        events = self.sub.take()
        if events:
            return events
        watcher = self.gone
        if self._client_gone():
            raise _ClientGone
        if watcher is not None and self.gone is None:
            return await self._events(wait)  # the watcher failed: wait on without it
        return events

    async def _settle(self, wait: float) -> None:
        """The attempt's stream ended: wait for its task's next event (the runner's report
        commits right after), the client's hang-up (_ClientGone), or ``wait`` seconds. One
        read then, instead of a read and a poll."""
        if self.watch is None:
            self.watch = self._watches.enter_context(
                self.c.event_hub.watch_resource(str(self.prompt_id))
            )
        woken = asyncio.ensure_future(self.watch.wait(wait))
        waiting = {woken} if self.gone is None else {woken, self.gone}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not woken.done():
            woken.cancel()
            await asyncio.gather(woken, return_exceptions=True)
        if self._client_gone():
            raise _ClientGone

    async def _read(self) -> PromptRow:
        return await llm.read_prompt_now(self.c.db, self.principal, self.prompt_id)

    async def batches(self) -> AsyncIterator[list[Piece]]:
        # LLM_GATEWAY_TIMEOUT_SECONDS bounds the wait for the first token, then each pause
        # between deltas (an idle limit), not the whole stream.
        limit = self.c.settings.llm_gateway_timeout_seconds
        deadline = time.monotonic() + limit
        recheck = self.c.settings.long_poll_recheck_seconds
        drain_by: float | None = None  # the server is stopping: the stream ends by then
        while True:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                if self.attempt is None:
                    why = f"no token came within {limit:g} s"
                else:
                    why = f"no token came for {limit:g} s (the stream stalled)"
                yield [self._fail(why)]
                return
            if drain_by is None and self.c.draining:
                drain_by = now + self.c.settings.shutdown_grace_seconds * DRAIN_SHARE
            if drain_by is not None:
                if now >= drain_by:
                    yield [self._fail(SHUTTING_DOWN)]
                    return
                remaining = min(remaining, drain_by - now)
            try:
                if self.settling:
                    await self._settle(min(remaining, SETTLE_POLL_SECONDS))
                    events: list[StreamEvent | None] = [*self.sub.take(), None]
                else:
                    events = [*(await self._events(min(remaining, recheck)))] or [None]
            except _ClientGone:
                return  # no last piece: the caller's exit cancels the prompt
            out: list[Piece] = []
            read = False
            for event in events:
                if event is not None and event.kind == "delta":
                    if self.attempt is None:
                        self.attempt = event.attempt
                    if event.attempt == self.attempt:
                        deadline = time.monotonic() + limit  # the stream is alive
                        if event.text:
                            self.sent.append(event.text)
                            out.append(Delta(event.text))
                    continue
                if event is not None and event.kind == "overflow":
                    # Cut off: no more deltas show progress; the rest comes with the
                    # completion (its task's event wakes the wait), which gets one more
                    # limit, as a non-streamed answer does.
                    self.cut_off = True
                    deadline = time.monotonic() + limit
                if event is None and read:
                    continue
                if out:
                    yield out  # the text first: the read below takes a while
                    out = []
                read = True
                last = await self._after(event)
                if last is not None:
                    yield last
                    return
            if out:
                yield out

    async def _after(self, event: StreamEvent | None) -> list[Piece] | None:
        """After an end, an overflow or a quiet wait, the stored prompt decides: its last
        pieces when it ended (or must end here), else None."""
        broke = False
        if event is not None and event.kind == "end" and event.attempt == self.attempt:
            if not event.broken:
                # Its runner's report follows: the settling wait reads once the task's next
                # event comes (a report that came first has woken it already).
                self.settling = True
                return None
            broke = bool(self.sent)
        row = await self._read()
        status = prompt_status(row.status)
        if status == "queued" and not self.sent:
            refused = llm.refusal(row.last_error)
            if refused is not None and await llm.end_refused(self.c.db, self.c.llm, row):
                self.done = True
                return [Failed(PromptRejected(refused, details={"prompt_id": str(row.prompt.id)}))]
        if status == "completed":
            done = finished(row)
            sent = "".join(self.sent)
            if not done.text.startswith(sent):
                return [self._fail("the stream broke off (the completed text differs)")]
            self.done = True
            rest = done.text[len(sent) :]
            return [Delta(rest), done] if rest else [done]
        if status in FINISHED:
            self.done = True
            return [Failed(_failure(row))]
        if broke or (self.sent and (status == "queued" or row.attempts != self.attempt)):
            # Text was delivered and the runner that sent it is gone: no silent restart.
            # (A broken stream normally finds the prompt failed already, just above.)
            return [self._fail("the runner serving this prompt stopped mid-stream")]
        return None

    def _fail(self, message: str) -> Failed:
        cancel_later(self.c, self.principal, self.prompt_id)
        self.done = True
        return Failed(PromptFailed(message, details={"prompt_id": str(self.prompt_id)}))


def cancel_later(
    c: Container,
    principal: Principal,
    prompt_id: uuid.UUID,
    *,
    client_gone: bool = False,
    delivered: str | None = None,
) -> None:
    """Cancel the prompt's task in the background: called where the caller may itself be
    cancelled (a client that went away), so the cancel must not depend on it. ``client_gone``:
    cancelled because the client went away (its runner's partial report is billed, a stream's
    at most ``delivered``, the text relayed to the client; see ``llm.billing``)."""

    async def cancel() -> None:
        try:
            async with c.db.transaction() as session:
                if client_gone:
                    await llm.cancel_for_gone_client(
                        session, c.llm, principal, prompt_id, delivered
                    )
                else:
                    await tasks_service.cancel_task(session, c.tasks, principal, prompt_id)
        except ParityError:
            pass  # already finished: nothing to cancel
        except Exception as exc:  # the lease and deadline still end it
            log.warning("gateway_cancel_failed", prompt_id=str(prompt_id), error=str(exc)[:200])

    job = asyncio.get_running_loop().create_task(cancel())
    _background.add(job)
    job.add_done_callback(_background.discard)

"""``POST /api/v1/runners/tasks/{id}/stream``: the runner's streaming leg (ARCHITECTURE §4).

One request per attempt. The claim token goes in the ``X-Claim-Token`` header, so the claim is
fenced once, before the body is read; the body is chunked NDJSON, one ``{"delta": "text"}`` per
line, relayed to the prompt's ``StreamBus`` subscribers as it arrives (no database work per
delta), each numbered within the attempt so a subscriber notices deltas lost on the way. The
answer, once the body ends: ``{"deltas": n, "listeners": k}``. The completion still goes
through ``/complete`` (or ``/fail``) with the whole text and usage; the stream only carries it
early.

The body's own end (the chunked encoding's last, empty chunk) marks a stream the runner closed.
A connection lost before it (a runner killed outright, a network cut) after at least one delta
fails the attempt here, fenced by the same claim token, with the relayed text as its partial
output (``llm.service.fail_broken_stream``): the client gets its error event at once and that
text is billed, instead of both waiting for the lease to expire. Before the first delta nothing
reached the client and the queue's failover applies as for any lost runner.

A prompt cancelled while its runner streams (its client went away) ends the stream from here:
the task's events wake the request, which stops reading the body and answers ``{"cancelled":
true}`` with ``Connection: close``; the runner, seeing its streaming leg end that way, stops the
backend at once and reports what it produced, instead of generating until its next heartbeat
carries the cancel. So does a claim that is no longer the runner's."""

from __future__ import annotations

import asyncio
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from parity.api import jsonbody
from parity.api.deps import ClaimTokenHeader, ContainerDep, CurrentRunner
from parity.api.jsonbody import JsonRoute
from parity.container import Container
from parity.core.tasks.states import TaskStatus, TaskType
from parity.errors import InvalidInput
from parity.llm import service as llm
from parity.llm import stream_sql
from parity.llm.billing import PARTIAL_TEXT_MAX_CHARS
from parity.llm.streams import StreamBus, StreamEvent
from parity.logging import get_logger
from parity.tasks import lifecycle
from parity.waiters import Watch

router = APIRouter(route_class=JsonRoute, tags=["runner tasks"])
log = get_logger("parity.gateway")
MAX_LINE_BYTES = 1024 * 1024
# The task's events wake a stream to end it (a cancel); this re-check covers a wake-up lost on
# the way from another replica.
CANCEL_RECHECK_SECONDS = 10.0
_LINE = 'each line must be a JSON object {"delta": text}'
_background: set[asyncio.Task[None]] = set()


class StreamAccepted(BaseModel):
    deltas: int
    listeners: int
    cancelled: bool = Field(
        False,
        description="true when the server ended the stream before its body's end: the prompt "
        "was cancelled (its client went away) or the claim is no longer the runner's; the "
        "runner stops generating",
    )


def _delta(line: bytes) -> str:
    try:
        item = jsonbody.loads(line)  # a lone surrogate is not text: refused like bad JSON
    except ValueError:
        raise InvalidInput("delta", _LINE) from None
    text = item.get("delta") if isinstance(item, dict) else None
    if not isinstance(text, str):
        raise InvalidInput("delta", _LINE)
    return text


@router.post(
    "/runners/tasks/{task_id}/stream",
    response_model=StreamAccepted,
    response_model_exclude_defaults=True,  # `cancelled` only when true
)
async def stream_deltas(
    task_id: uuid.UUID,
    request: Request,
    runner_id: CurrentRunner,
    c: ContainerDep,
    claim_token: ClaimTokenHeader,
) -> StreamAccepted | JSONResponse:
    """Relay an ``llm`` task's token deltas (NDJSON ``{"delta": text}`` lines) to the clients
    streaming the prompt. Fenced by ``X-Claim-Token`` like every runner call: a stale or
    foreign claim is refused before anything is relayed."""
    broken = cancelled = False
    # Watched before the fence's read: a cancel committed after that read wakes the watch.
    with c.event_hub.watch_resource(str(task_id)) as watch:
        attempt, streams, stopping = await _fenced(c, runner_id, task_id, claim_token)
        body = _Body(c.streams, str(task_id), attempt)
        reading = asyncio.ensure_future(_read(request, body))
        stopped = asyncio.ensure_future(
            _until_stopped(c, watch, runner_id, task_id, claim_token, stopping)
        )
        try:
            await asyncio.wait((reading, stopped), return_when=asyncio.FIRST_COMPLETED)
            if reading.done():
                await reading  # the body's end, or why it did not end
            elif not stopped.cancelled() and stopped.exception() is None:
                cancelled = True  # the rest of the body is not read: the answer ends it
            else:
                await reading  # the watcher failed: read on without it
        except ClientDisconnect:
            broken = True  # the runner went away mid-stream
            if body.text and streams:
                await _fail_broken(c, runner_id, task_id, claim_token, body)
        finally:
            for job in (reading, stopped):
                if not job.done():
                    job.cancel()
            await asyncio.gather(reading, stopped, return_exceptions=True)
            # After the failure is recorded: a reader woken by this end finds the prompt ended.
            await body.bus.publish(body.key, StreamEvent("end", attempt, broken=broken))
    listeners = await body.bus.subscribers(body.key)
    if cancelled:
        log.info("runner_stream_cancelled", task_id=str(task_id), deltas=body.deltas)
        # Connection: close, so a server that left the body unread drops the connection and
        # the runner, still writing, stops and reads this answer.
        answer = StreamAccepted(deltas=body.deltas, listeners=listeners, cancelled=True)
        return JSONResponse(answer.model_dump(), headers={"Connection": "close"})
    return StreamAccepted(deltas=body.deltas, listeners=listeners)


async def _read(request: Request, body: _Body) -> None:
    async for chunk in request.stream():
        await body.feed(chunk)
    await body.finish()


async def _until_stopped(
    c: Container,
    watch: Watch[str],
    runner_id: uuid.UUID,
    task_id: uuid.UUID,
    token: str,
    stopping: bool,
) -> None:
    """Returns once the attempt streaming under ``token`` must stop: its task was cancelled
    (``cancel_requested``: the prompt's client went away) or the claim is no longer the
    runner's. Woken by the task's own events; re-checked every CANCEL_RECHECK_SECONDS for a
    wake-up missed on another replica."""
    if stopping:
        return
    while True:
        await watch.wait(CANCEL_RECHECK_SECONDS)
        found = await stream_sql.stream_task(c.db, task_id)
        if found is None or found.status == TaskStatus.CANCEL_REQUESTED:
            return
        if not lifecycle.holds_current_claim(
            found.runner_id, found.status, found.claim_token_hash, runner_id, token
        ):
            return


async def _fenced(
    c: Container, runner_id: uuid.UUID, task_id: uuid.UUID, token: str
) -> tuple[int, bool, bool]:
    """The attempt of the caller's current claim on an ``llm`` task, whether its prompt
    streams (one that does not has no client reading along: its runner reports), and whether
    it was cancelled already (``cancel_requested``: the stream is ended at once). The usual
    case, the current claim of an active task, is recognised from one read without a unit of
    work (the stream changes no state: a lock would be released before the first line); the
    queue's fence names any refusal."""
    found = await stream_sql.stream_task(c.db, task_id)
    if found is not None and lifecycle.holds_current_claim(
        found.runner_id, found.status, found.claim_token_hash, runner_id, token
    ):
        kind, attempt, streams, status = found.type, found.attempts, found.streams, found.status
    else:
        async with c.db.transaction() as session:
            task, attempt = await lifecycle.current_attempt(session, runner_id, task_id, token)
            kind, streams = task.type, (task.config or {}).get("stream") is True
            status = task.status
    if kind != TaskType.LLM:
        raise InvalidInput("task_id", f"only llm tasks stream (this one is {kind})")
    return attempt, streams, status == TaskStatus.CANCEL_REQUESTED


class _Body:
    """One attempt's NDJSON body, line by line onto the bus; keeps the relayed text (bounded)
    for billing a stream that breaks off."""

    def __init__(self, bus: StreamBus, key: str, attempt: int) -> None:
        self.bus, self.key, self.attempt = bus, key, attempt
        self.deltas = 0
        self.pending = b""
        self.parts: list[str] = []
        self.kept = 0

    @property
    def text(self) -> str:
        return "".join(self.parts)

    async def feed(self, chunk: bytes) -> None:
        """The chunk's complete lines go onto the bus together (one call, one round trip on a
        shared bus); a line cut by the chunk's end waits for the rest."""
        if b"\n" not in chunk:
            self.pending += chunk
            if len(self.pending) > MAX_LINE_BYTES:
                raise InvalidInput("delta", f"a line may hold at most {MAX_LINE_BYTES} bytes")
            return
        *lines, rest = (self.pending + chunk).split(b"\n")
        self.pending = rest
        if len(rest) > MAX_LINE_BYTES:
            raise InvalidInput("delta", f"a line may hold at most {MAX_LINE_BYTES} bytes")
        texts: list[str] = []
        try:
            for line in lines:
                if line.strip():
                    texts.append(_delta(line))
        finally:
            # The lines before a refused one were sent: they are relayed as they were before.
            await self._publish(texts)

    async def finish(self) -> None:
        if self.pending.strip():
            await self._publish([_delta(self.pending)])

    async def _publish(self, texts: list[str]) -> None:
        if not texts:
            return
        # Numbered within the attempt (one stream request per attempt): a subscriber that
        # misses some on the way (a shared bus's outage) sees the gap (``llm.streams``).
        first = self.deltas
        if len(texts) == 1:
            event = StreamEvent("delta", self.attempt, texts[0], seq=first)
            await self.bus.publish(self.key, event)
        else:
            events = [
                StreamEvent("delta", self.attempt, t, seq=first + i) for i, t in enumerate(texts)
            ]
            await self.bus.publish_many(self.key, events)
        self.deltas += len(texts)
        for text in texts:
            if text and self.kept < PARTIAL_TEXT_MAX_CHARS:
                self.parts.append(text)
                self.kept += len(text)


async def _fail_broken(
    c: Container, runner_id: uuid.UUID, task_id: uuid.UUID, token: str, body: _Body
) -> None:
    """Fail the attempt whose stream broke after its first token. Shielded: the request it
    serves is already lost, and a server that cancels such a request must not skip this."""

    async def fail() -> None:
        try:
            await llm.fail_broken_stream(
                c.db, c.llm, runner_id, task_id, token, body.text, body.deltas
            )
        except Exception as exc:  # already ended (a report came first), or the database
            log.warning("broken_stream_fail_refused", task_id=str(task_id), error=str(exc)[:200])

    job = asyncio.get_running_loop().create_task(fail())
    _background.add(job)
    job.add_done_callback(_background.discard)
    await asyncio.shield(job)

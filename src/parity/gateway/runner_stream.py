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
reached the client and the queue's failover applies as for any lost runner."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from parity.api import jsonbody
from parity.api.deps import ContainerDep, CurrentRunner
from parity.api.jsonbody import JsonRoute
from parity.container import Container
from parity.core.tasks.states import TaskType
from parity.errors import InvalidInput
from parity.llm import service as llm
from parity.llm import stream_sql
from parity.llm.billing import PARTIAL_TEXT_MAX_CHARS
from parity.llm.streams import StreamBus, StreamEvent
from parity.logging import get_logger
from parity.tasks import lifecycle

router = APIRouter(route_class=JsonRoute, tags=["runner tasks"])
log = get_logger("parity.gateway")
MAX_LINE_BYTES = 1024 * 1024
_LINE = 'each line must be a JSON object {"delta": text}'
_background: set[asyncio.Task[None]] = set()


class StreamAccepted(BaseModel):
    deltas: int
    listeners: int


def _delta(line: bytes) -> str:
    try:
        item = jsonbody.loads(line)  # a lone surrogate is not text: refused like bad JSON
    except ValueError:
        raise InvalidInput("delta", _LINE) from None
    text = item.get("delta") if isinstance(item, dict) else None
    if not isinstance(text, str):
        raise InvalidInput("delta", _LINE)
    return text


@router.post("/runners/tasks/{task_id}/stream", response_model=StreamAccepted)
async def stream_deltas(
    task_id: uuid.UUID,
    request: Request,
    runner_id: CurrentRunner,
    c: ContainerDep,
    claim_token: Annotated[str | None, Header(alias="X-Claim-Token")] = None,
) -> StreamAccepted:
    """Relay an ``llm`` task's token deltas (NDJSON ``{"delta": text}`` lines) to the clients
    streaming the prompt. Fenced by ``X-Claim-Token`` like every runner call: a stale or
    foreign claim is refused before anything is relayed."""
    if not claim_token:
        raise InvalidInput("X-Claim-Token", "required: the claim token of this task")
    attempt, streams = await _fenced(c, runner_id, task_id, claim_token)
    body = _Body(c.streams, str(task_id), attempt)
    broken = False
    try:
        async for chunk in request.stream():
            await body.feed(chunk)
        await body.finish()
    except ClientDisconnect:
        broken = True  # the runner went away mid-stream
        if body.text and streams:
            await _fail_broken(c, runner_id, task_id, claim_token, body)
    finally:
        # After the failure is recorded: a reader woken by this end finds the prompt ended.
        await body.bus.publish(body.key, StreamEvent("end", attempt, broken=broken))
    return StreamAccepted(deltas=body.deltas, listeners=await body.bus.subscribers(body.key))


async def _fenced(
    c: Container, runner_id: uuid.UUID, task_id: uuid.UUID, token: str
) -> tuple[int, bool]:
    """The attempt of the caller's current claim on an ``llm`` task, and whether its prompt
    streams (one that does not has no client reading along: its runner reports). The usual
    case, the current claim of an active task, is recognised from one read without a unit of
    work (the stream changes no state: a lock would be released before the first line); the
    queue's fence names any refusal."""
    found = await stream_sql.stream_task(c.db, task_id)
    if found is not None and lifecycle.holds_current_claim(
        found.runner_id, found.status, found.claim_token_hash, runner_id, token
    ):
        kind, attempt, streams = found.type, found.attempts, found.streams
    else:
        async with c.db.transaction() as session:
            task, attempt = await lifecycle.current_attempt(session, runner_id, task_id, token)
            kind, streams = task.type, (task.config or {}).get("stream") is True
    if kind != TaskType.LLM:
        raise InvalidInput("task_id", f"only llm tasks stream (this one is {kind})")
    return attempt, streams


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

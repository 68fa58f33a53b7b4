"""``POST /api/v1/runners/tasks/{id}/stream``: the runner's streaming leg (ARCHITECTURE §4).

One request per attempt. The claim token goes in the ``X-Claim-Token`` header, so the claim is
fenced once, before the body is read; the body is chunked NDJSON, one ``{"delta": "text"}`` per
line, relayed to the prompt's ``StreamBus`` subscribers as it arrives (no database work per
delta). The answer, once the body ends: ``{"deltas": n, "listeners": k}``. The completion still
goes through ``/complete`` (or ``/fail``) with the whole text and usage; the stream only carries
it early."""

from __future__ import annotations

import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from parity.api.deps import ContainerDep, CurrentRunner
from parity.core.tasks.states import TaskType
from parity.errors import InvalidInput
from parity.llm.streams import StreamEvent
from parity.tasks import lifecycle

router = APIRouter(tags=["runner tasks"])
MAX_LINE_BYTES = 1024 * 1024


class StreamAccepted(BaseModel):
    deltas: int
    listeners: int


def _delta(line: bytes) -> str:
    try:
        item = json.loads(line)
    except ValueError:
        raise InvalidInput("delta", 'each line must be a JSON object {"delta": text}') from None
    text = item.get("delta") if isinstance(item, dict) else None
    if not isinstance(text, str):
        raise InvalidInput("delta", 'each line must be a JSON object {"delta": text}')
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
    async with c.db.transaction() as session:
        task, attempt = await lifecycle.current_attempt(session, runner_id, task_id, claim_token)
        if task.type != TaskType.LLM:
            raise InvalidInput("task_id", f"only llm tasks stream (this one is {task.type})")
    key = str(task_id)
    bus = c.streams
    deltas = 0
    broken = False
    pending = b""
    try:
        async for chunk in request.stream():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > MAX_LINE_BYTES:
                raise InvalidInput("delta", f"a line may hold at most {MAX_LINE_BYTES} bytes")
            for line in lines:
                if line.strip():
                    bus.publish(key, StreamEvent("delta", attempt, _delta(line)))
                    deltas += 1
        if pending.strip():
            bus.publish(key, StreamEvent("delta", attempt, _delta(pending)))
            deltas += 1
    except ClientDisconnect:
        broken = True  # the runner went away mid-stream
    finally:
        bus.publish(key, StreamEvent("end", attempt, broken=broken))
    return StreamAccepted(deltas=deltas, listeners=bus.subscribers(key))

"""The read of a streamed prompt's task that the runner's stream request needs, defined once in
Core (bound parameters, one compiled form, no ORM loading) and run as one statement on a lookup
connection (no unit of work): the task's type, whether the prompt streams, and the columns that
tell its current claim, so the request is fenced without a write transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select

from parity.db.session import Database
from parity.tasks.queue.statements import TASKS

_T = TASKS.c

STREAM_TASK = select(
    _T.type, _T.config, _T.status, _T.runner_id, _T.claim_token_hash, _T.attempts
).where(_T.id == bindparam("b_id", type_=_T.id.type))


@dataclass(frozen=True)
class StreamTask:
    """What the stream endpoint reads of a task: its type, whether its prompt streams, and
    its current claim (runner, status, token hash, attempt number)."""

    type: str
    streams: bool
    status: str
    runner_id: uuid.UUID | None
    claim_token_hash: str | None
    attempts: int


async def stream_task(db: Database, task_id: uuid.UUID) -> StreamTask | None:
    """The task as :class:`StreamTask` (None when there is no such task)."""
    async with db.lookup() as conn:
        r: Any = (await conn.execute(STREAM_TASK, {"b_id": task_id})).first()
    if r is None:
        return None
    config = r.config if isinstance(r.config, dict) else {}
    return StreamTask(
        r.type, config.get("stream") is True, r.status, r.runner_id, r.claim_token_hash,
        r.attempts,
    )  # fmt: skip

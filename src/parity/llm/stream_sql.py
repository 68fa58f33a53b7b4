"""The reads of a streamed prompt that surround the submit, defined once in Core (bound
parameters, one compiled form each, no ORM loading) and run as one statement on a lookup
connection (no unit of work): whether a claiming runner reports a model (the gateways' check
before they submit) and what the runner's stream request needs of its task (type, whether the
prompt streams, and the columns that tell its current claim, so the request is fenced without
a write transaction)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, select

from parity.db.session import Database
from parity.runners.models import Runner, RunnerModel
from parity.tasks.queue.statements import TASKS

RUNNERS = cast(Table, Runner.__table__)
MODELS = cast(Table, RunnerModel.__table__)
_T, _R, _M = TASKS.c, RUNNERS.c, MODELS.c

# A model as discovery lists it (``llm.service.list_models``): reported by an online runner
# that is neither banned nor draining.
MODEL_SERVED = (
    select(_M.runner_id)
    .join(RUNNERS, _R.id == _M.runner_id)
    .where(
        _M.model_name == bindparam("b_model", type_=_M.model_name.type),
        _R.status == "online",
        _R.banned_at.is_(None),
        _R.drain_requested.is_(False),
    )
    .limit(1)
)

STREAM_TASK = select(
    _T.type, _T.config, _T.status, _T.runner_id, _T.claim_token_hash, _T.attempts
).where(_T.id == bindparam("b_id", type_=_T.id.type))


async def model_served(db: Database, model: str) -> bool:
    """Whether a claiming runner reports ``model`` now."""
    async with db.lookup() as conn:
        return (await conn.execute(MODEL_SERVED, {"b_model": model})).first() is not None


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

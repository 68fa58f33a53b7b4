"""Client endpoints of compute tasks. Paths the original README documents keep its shapes
(``GET /tasks`` is a bare array with limit/offset and X-Total-Count)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from parity.api.deps import (
    ContainerDep,
    CurrentPrincipal,
    Idempotency,
    ReadSession,
    StreamAuth,
    WalletPrincipal,
    WriteSession,
)
from parity.api.errors import read_json
from parity.api.jsonbody import JsonRoute
from parity.api.pagination import BIGINT_MAX
from parity.api.queryflags import Flag
from parity.core.tasks.states import TERMINAL
from parity.db.types import INT32_MAX, check_name
from parity.errors import InvalidInput
from parity.ledger import service as ledger_service
from parity.storage import service as storage_service
from parity.tasks import service
from parity.tasks.schemas import (
    AttemptRead,
    LogLine,
    LogsRead,
    ResultRead,
    RewardRead,
    TaskCreate,
    TaskRead,
    TaskStatusRead,
    TaskUpdate,
)
from parity.tasks.views import attempt_read, result_read, status_read, task_read

router = APIRouter(route_class=JsonRoute, tags=["tasks"])
FOLLOW_MAX_SECONDS = 1800


def _validated(raw: Any) -> TaskCreate:
    if not isinstance(raw, dict):
        raise InvalidInput("body", "must be a JSON object")
    try:
        return TaskCreate.model_validate(raw)
    except ValidationError as exc:
        # The body is parsed here (not by FastAPI) to allow multipart; keep the same 422.
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=raw) from None


async def _body(request: Request) -> tuple[TaskCreate, UploadFile | None]:
    """JSON, or the original API's multipart form: a ``task`` field holding the JSON and an
    optional ``image`` file (a docker image tar)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        task_field = form.get("task")
        if not isinstance(task_field, str):
            raise InvalidInput("task", "the form needs a 'task' field holding the task JSON")
        raw = read_json(task_field, "task")
        image = form.get("image")
        if image is not None and not isinstance(image, UploadFile):
            raise InvalidInput("image", "must be a file part")
        return _validated(raw), image
    return _validated(read_json(await request.body(), "body")), None


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1024 * 1024):
        yield chunk


async def _with_image(
    c: ContainerDep, session: Any, principal: Any, body: TaskCreate, image: UploadFile
) -> TaskCreate:
    """Store the image tar in the content store (pinned for the caller) and make the task a
    docker task that loads it from its CID. Its filename names the pin: checked first."""
    if image.filename:
        try:
            check_name(image.filename)
        except ValueError as exc:
            raise InvalidInput("image", f"its filename {exc}") from None
    stored = await storage_service.store_stream(c.content_store, c.storage, _chunks(image))
    await storage_service.record_upload(
        session,
        c.content_store,
        c.storage,
        principal.address,
        stored,
        pin=True,
        name=image.filename[:255] if image.filename else None,  # a pin name holds 255
        now=c.clock.now(),
    )
    config = {
        k: v
        for k, v in (body.config or {}).items()
        if k not in ("image", "image_cid", "image_name", "docker_image_url")
    }
    config["image_cid"] = stored.cid.encode()
    return body.model_copy(update={"type": "docker", "image": None, "config": config})


@router.post(
    "/tasks",
    status_code=201,
    response_model=TaskRead,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": TaskCreate.model_json_schema()}},
        }
    },
)
async def create_task(
    request: Request,
    principal: WalletPrincipal,
    session: WriteSession,
    idem: Idempotency,
    c: ContainerDep,
) -> Any:
    """Create a `command` or `docker` task (status `pending`). Legacy fields of the original
    API are accepted (`image`, `environment`); `reward` and creator headers are ignored."""
    stored = await idem.replay()
    if stored is not None:
        return JSONResponse(stored.body, status_code=stored.status_code)
    body, image = await _body(request)
    if image is not None:
        body = await _with_image(c, session, principal, body, image)
    task = await service.create_task(session, c.tasks, principal, body)
    out = task_read(task)
    await idem.remember(201, out.model_dump(mode="json"))
    return out


@router.get("/tasks", response_model=list[TaskRead])
async def list_tasks(
    response: Response,
    principal: CurrentPrincipal,
    session: ReadSession,
    status: Annotated[list[str] | None, Query(description="Filter by status (repeatable)")] = None,
    type: Annotated[list[str] | None, Query(description="Filter by type (repeatable)")] = None,
    include_internal: Annotated[Flag, Query(description="Also llm and fl_train rows")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=BIGINT_MAX)] = 0,
) -> list[TaskRead]:
    """Your tasks (all, for an operator), newest first. Internal `llm`/`fl_train` rows are
    hidden unless `include_internal=true` or asked for by `type`."""
    rows, total = await service.list_tasks(
        session,
        principal,
        statuses=status,
        types=type,
        include_internal=include_internal,
        limit=limit,
        offset=offset,
    )
    response.headers["X-Total-Count"] = str(total)
    return [task_read(t) for t in rows]


@router.get("/tasks/{task_id}", response_model=TaskRead)
async def get_task(
    task_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSession
) -> TaskRead:
    """One of your tasks (someone else's is 404). A pending one no online runner is big enough
    for says why in `waiting_for`."""
    task = await service.get_task(session, principal, task_id)
    out = task_read(task)
    out.waiting_for = await service.waiting_for(session, task)
    return out


@router.put("/tasks/{task_id}", response_model=TaskRead)
async def update_task(
    task_id: uuid.UUID,
    body: TaskUpdate,
    principal: WalletPrincipal,
    session: WriteSession,
    c: ContainerDep,
) -> TaskRead:
    """Merge fields into a pending task (409 task_not_pending otherwise). A field left out
    keeps its value; null is refused, naming the field, except `not_before: null` (available
    now)."""
    return task_read(await service.update_task(session, c.tasks, principal, task_id, body))


@router.delete("/tasks/{task_id}", response_model=TaskRead)
async def cancel_task(
    task_id: uuid.UUID, principal: WalletPrincipal, session: WriteSession, c: ContainerDep
) -> TaskRead:
    """Cancel: pending/assigned → cancelled; running → cancel_requested until the runner
    acknowledges or its lease expires."""
    return task_read(await service.cancel_task(session, c.tasks, principal, task_id))


@router.get("/tasks/{task_id}/status", response_model=TaskStatusRead)
async def task_status(
    task_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSession
) -> TaskStatusRead:
    """A task's status, attempts, runner and last error."""
    return status_read(await service.get_task(session, principal, task_id))


@router.get("/tasks/{task_id}/result", response_model=ResultRead)
async def task_result(
    task_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSession
) -> ResultRead:
    """The one accepted result (404 result_not_found before completion)."""
    return result_read(await service.get_result(session, principal, task_id))


@router.get("/tasks/{task_id}/attempts", response_model=list[AttemptRead])
async def task_attempts(
    task_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSession
) -> list[AttemptRead]:
    """Every claim of the task: runner, times, exit code, error, why a lease expired."""
    return [attempt_read(a) for a in await service.get_attempts(session, principal, task_id)]


@router.get("/tasks/{task_id}/reward", response_model=RewardRead)
async def task_reward(
    task_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSession, c: ContainerDep
) -> RewardRead:
    """What the task costs and pays, from the ledger, and whether it is paid on chain: for a
    prompt's ``llm`` task, what the prompt was billed (its tokens). A task created while pricing
    was off is ``not_priced`` (it costs nothing), and so is an ``fl_train`` task (its session's
    reward pool pays the update)."""
    task = await service.get_task(session, principal, task_id)
    r = await ledger_service.task_reward(
        session, c.ledger, task.id, settling=c.settlement is not None, task_type=task.type
    )

    def text(v: int | None) -> str | None:
        return None if v is None else str(v)

    return RewardRead(
        task_id=task.id,
        reward=text(r.reward),
        price=text(r.price),
        fee=text(r.fee),
        reserved=text(r.reserved),
        paid=r.status == "paid",
        status=r.status,
        message=r.message,
        settlements=r.settlements,
    )


def _pos(line: Any) -> int:
    return int(line.attempt) * 10**8 + int(line.seq)


# Attempts are INTEGER columns; a log position is `attempt * 10^8 + seq` (seq < 10^8): bounded
# so that both parts fit their columns, and both databases answer a larger one alike (422).
LOG_POSITION_MAX = INT32_MAX * 10**8 + 10**8 - 1


@router.get(
    "/tasks/{task_id}/logs",
    response_model=LogsRead,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def task_logs(
    request: Request,
    task_id: uuid.UUID,
    principal: CurrentPrincipal,
    c: ContainerDep,
    attempt: Annotated[int | None, Query(ge=1, le=INT32_MAX)] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=LOG_POSITION_MAX, description="next_after of a previous read"),
    ] = None,
    follow: Annotated[Flag, Query(description="Stream as Server-Sent Events")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> Any:
    """Log chunks in order. ``follow=true`` streams them as Server-Sent Events until the task
    ends (one `log` event per chunk, then an `end` event)."""
    async with c.db.read_session() as s:
        task, rows = await service.get_logs(
            s, principal, task_id, attempt=attempt, after=after, limit=limit
        )
    if not follow:
        items = [
            LogLine(attempt=r.attempt, seq=r.seq, lines=r.lines, created_at=r.created_at)
            for r in rows
        ]
        return LogsRead(
            task_id=task.id,
            items=items,
            next_after=_pos(rows[-1]) if rows else after,
            truncated=any(r.truncated for r in rows),
        )

    auth = StreamAuth(request)

    async def stream() -> AsyncIterator[bytes]:
        cursor = after
        batch = rows
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FOLLOW_MAX_SECONDS
        while True:
            for r in batch:
                cursor = _pos(r)
                data = {"attempt": r.attempt, "seq": r.seq, "lines": r.lines}
                yield f"id: {cursor}\nevent: log\ndata: {json.dumps(data)}\n\n".encode()
            if await auth.revoked():
                end = {"status": None, "reason": "unauthenticated", "next_after": cursor}
                yield f"event: end\ndata: {json.dumps(end)}\n\n".encode()
                return
            async with c.db.read_session() as s:
                current, batch = await service.get_logs(
                    s, principal, task_id, attempt=attempt, after=cursor, limit=limit
                )
            if batch:
                continue
            # Why the stream ends: the task ended (every line was sent), the server is
            # shutting down, or the stream reached its time limit (reconnect with `after`).
            reason = (
                "task_ended"
                if current.status in TERMINAL
                else "shutdown"
                if c.draining
                else "timeout"
                if loop.time() > deadline
                else None
            )
            if reason is not None:
                end = {"status": current.status, "reason": reason, "next_after": cursor}
                yield f"event: end\ndata: {json.dumps(end)}\n\n".encode()
                return
            await asyncio.sleep(1.0)

    return StreamingResponse(stream(), media_type="text/event-stream")

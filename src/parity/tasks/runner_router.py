"""The runner side of the queue (runner token): available, claim (long-poll), reconcile, lease,
start, store a large output, complete, fail, release, logs."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from parity.api.deps import ClaimTokenHeader, ContainerDep, CurrentRunner, WriteSession
from parity.api.jsonbody import JsonRoute
from parity.api.queryflags import Flag
from parity.container import Container
from parity.errors import InvalidInput
from parity.storage import service as storage_service
from parity.storage.router import declared_size, store_body
from parity.storage.schemas import ContentRead
from parity.tasks import hotpath, lifecycle, runner_side, service
from parity.tasks.claims import available_for
from parity.tasks.queue.ops import Claim
from parity.tasks.schemas import (
    ClaimBody,
    ClaimRead,
    CompleteBody,
    FailBody,
    LeaseRead,
    LogAppended,
    LogBody,
    TaskRead,
)
from parity.tasks.views import task_read

router = APIRouter(route_class=JsonRoute, tags=["runner tasks"])

MAX_WAIT_SECONDS = 30.0
OUTPUT_PATH_PATTERN = r"/runners/tasks/[^/]+/output"
"""The output upload's path (after the API prefix), as a pattern: its body is limited by
STORAGE_MAX_UPLOAD_BYTES, not MAX_REQUEST_BODY_BYTES."""


class ClaimBatchRead(BaseModel):
    claims: list[ClaimRead]


class ReconcileBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    claims: list[str] = Field(
        default_factory=list, max_length=1000, description="Claim tokens the runner holds"
    )


class ReconcileRead(BaseModel):
    released: list[uuid.UUID] = Field(description="Tasks given back: the runner did not list them")


async def _claims(c: Container, claim: Claim) -> list[ClaimRead]:
    answers = []
    for t in claim.tasks:
        read = task_read(t)
        extra = c.claim_answers.get(read.type)
        if extra is not None:
            read.config = await extra(read.config)
        answers.append(
            ClaimRead(
                task=read,
                claim_token=claim.token,
                attempt=t.attempts,
                lease_seconds=claim.lease_seconds,
                lease_expires_at=claim.lease_expires_at,
            )
        )
    return answers


def _no_content(retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return Response(status_code=204, headers=headers)


@router.get("/runners/tasks/available", response_model=list[TaskRead])
async def available(
    runner_id: CurrentRunner,
    c: ContainerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Any:
    """Pending tasks this runner could claim now (targeted at it or at nobody, fitting it)."""
    async with c.db.read_session() as s:
        rows = await available_for(s, c.tasks, runner_id, limit)
        return [task_read(t) for t in rows]


@router.post(
    "/runners/tasks/claim",
    response_model=ClaimRead | ClaimBatchRead,
    responses={204: {"description": "Nothing to claim within `wait` seconds"}},
)
async def claim_next(
    request: Request,
    runner_id: CurrentRunner,
    c: ContainerDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0,
    max_tasks: Annotated[int, Query(ge=1, le=100)] = 1,
    start: Annotated[Flag, Query(description="Claim and start in one call")] = False,
) -> Any:
    """Claim the next task(s). Long-polls up to ``wait`` seconds (30 max) without holding a
    database connection. ``max_tasks`` > 1 answers ``{"claims": [...]}``; ``start=true``
    claims and starts in one call. 204 when nothing came; 204 with Retry-After while the
    server is shutting down. A task created for this runner while it waits may be claimed
    for it by the creating transaction (``tasks.handoff``): answered the same way."""
    deadline = time.monotonic() + wait
    woken = False
    with c.wakeups.taking(runner_id, start=start) as watch:
        while True:
            claim = await watch.take()
            if claim is None:
                if c.draining:
                    return _no_content(retry_after=5)
                claim = await hotpath.claim_next(
                    c.db, c.tasks, runner_id, max_tasks=max_tasks, start=start, likely=woken
                )
            if claim is not None:
                claims = await _claims(c, claim)
                return ClaimBatchRead(claims=claims) if max_tasks > 1 else claims[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _no_content()
            woken = await watch.wait(min(remaining, c.settings.long_poll_recheck_seconds))
            if await request.is_disconnected():
                # The runner went away while waiting (stopped, restarted under the same runner
                # id): a claim now would hold work for a process that can never receive it.
                return _no_content()


@router.post("/runners/tasks/reconcile", response_model=ReconcileRead)
async def reconcile_claims(
    body: ReconcileBody,
    runner_id: CurrentRunner,
    session: WriteSession,
    c: ContainerDep,
) -> ReconcileRead:
    """The runner lists the claim tokens it holds; every claim of this runner not listed is
    given back untouched (not counted as a failure). A runner calls this after a claim request
    whose outcome it cannot know (the connection broke, the server restarted, a 5xx): a claim
    committed without its answer reaching the runner would otherwise wait for its lease to
    expire. Answers the task ids released."""
    released = await runner_side.release_unlisted(session, c.tasks, runner_id, body.claims)
    return ReconcileRead(released=released)


@router.post("/runners/tasks/{task_id}/claim", response_model=ClaimRead)
async def claim_one(
    task_id: uuid.UUID,
    runner_id: CurrentRunner,
    c: ContainerDep,
    start: Annotated[Flag, Query(description="Claim and start in one call")] = False,
) -> ClaimRead:
    """Claim a specific task: 404 unknown, 409 task_not_claimable (details say why),
    403 runner_not_eligible when it does not fit this runner."""
    claim = await hotpath.claim_task(c.db, c.tasks, runner_id, task_id, start=start)
    return (await _claims(c, claim))[0]


@router.post("/runners/tasks/{task_id}/lease", response_model=LeaseRead)
async def renew_lease(
    task_id: uuid.UUID,
    body: ClaimBody,
    runner_id: CurrentRunner,
    session: WriteSession,
    c: ContainerDep,
) -> LeaseRead:
    """Extend the claim's lease (claim token fenced); says whether a cancel was requested."""
    task = await lifecycle.renew(session, c.tasks, runner_id, task_id, body.claim_token)
    assert task.lease_expires_at is not None
    return LeaseRead(
        lease_seconds=c.tasks.lease_seconds,
        lease_expires_at=task.lease_expires_at,
        cancel_requested=task.status == "cancel_requested",
    )


@router.post("/runners/tasks/{task_id}/start", response_model=TaskRead)
async def start_task(
    task_id: uuid.UUID,
    body: ClaimBody,
    runner_id: CurrentRunner,
    c: ContainerDep,
) -> TaskRead:
    """Mark a claimed task running (claim token fenced; a repeat answers the same)."""
    return task_read(await hotpath.start_task(c.db, c.tasks, runner_id, task_id, body.claim_token))


@router.post("/runners/tasks/{task_id}/complete", response_model=TaskRead)
async def complete_task(
    task_id: uuid.UUID,
    body: CompleteBody,
    runner_id: CurrentRunner,
    c: ContainerDep,
) -> TaskRead:
    """Report a successful run. A failed run must use ``fail``; ``exit_code`` ≠ 0 here is
    refused so a failure is never recorded as a completion."""
    if body.exit_code not in (None, 0):
        raise InvalidInput("exit_code", "a non-zero exit code is a failure: use /fail")
    report = lifecycle.Report(
        output=body.output,
        output_cid=body.output_cid,
        exit_code=body.exit_code,
        error=body.error,
        result_hash=body.result_hash,
        usage=body.usage,
    )
    task = await hotpath.complete_task(c.db, c.tasks, runner_id, task_id, body.claim_token, report)
    return task_read(task)


@router.put(
    "/runners/tasks/{task_id}/output",
    status_code=201,
    response_model=ContentRead,
    summary="Store the output of a task the runner holds (raw body, streamed)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def store_output(
    task_id: uuid.UUID,
    request: Request,
    runner_id: CurrentRunner,
    c: ContainerDep,
    claim_token: ClaimTokenHeader,
) -> ContentRead:
    """An output too large to report inline, into the content store, then reported by its CID
    (``complete``'s ``output_cid``). Fenced by ``X-Claim-Token``: only the current claim of an
    active task stores. The output is the task creator's: pinned for them (their quota,
    ``STORAGE_QUOTA_BYTES`` / ``STORAGE_MAX_PINS``; named "output of task ID"), never for the
    runner, so a runner's own pins do not fill up with the outputs it produced. Size limit
    ``STORAGE_MAX_UPLOAD_BYTES`` (413); the same bytes give the same CID, so a repeat is
    harmless."""
    declared = declared_size(request)
    storage_service.check_declared_size(c.storage, declared)
    async with c.db.read_session() as session:
        owner = await lifecycle.output_owner(session, runner_id, task_id, claim_token)
        await storage_service.check_quota_room(session, c.storage, owner, declared)
    stored = await store_body(c, request.stream())
    async with c.db.transaction() as session:
        # The claim may have moved while the bytes arrived: checked again where the pin is made.
        owner = await lifecycle.output_owner(session, runner_id, task_id, claim_token)
        return await storage_service.record_upload(
            session,
            c.content_store,
            c.storage,
            owner,
            stored,
            pin=True,
            name=f"output of task {task_id}",
            now=c.clock.now(),
        )


@router.post("/runners/tasks/{task_id}/fail", response_model=TaskRead)
async def fail_task(
    task_id: uuid.UUID,
    body: FailBody,
    runner_id: CurrentRunner,
    session: WriteSession,
    c: ContainerDep,
) -> TaskRead:
    """Report a failed run (claim token fenced): retried while attempts remain, else failed;
    a streamed prompt's partial output and usage are kept for billing."""
    deps = c.tasks
    task = await lifecycle.fail(
        session,
        deps,
        runner_id,
        task_id,
        body.claim_token,
        error=body.error,
        exit_code=body.exit_code,
        output=body.output,
        usage=body.usage,
    )
    now = c.clock.now()
    if await lifecycle.slot_freed(session, deps, now):
        await service.reoffer_pending(session, deps, now, limit=1)
    return task_read(task)


@router.post("/runners/tasks/{task_id}/release", response_model=TaskRead)
async def release_task(
    task_id: uuid.UUID,
    body: ClaimBody,
    runner_id: CurrentRunner,
    session: WriteSession,
    c: ContainerDep,
) -> TaskRead:
    """Give the task back untouched (e.g. on shutdown); it does not count as a failure."""
    task = await lifecycle.release(session, c.tasks, runner_id, task_id, body.claim_token)
    return task_read(task)


@router.post("/runners/tasks/{task_id}/logs", response_model=LogAppended)
async def append_logs(
    task_id: uuid.UUID,
    body: LogBody,
    runner_id: CurrentRunner,
    session: WriteSession,
    c: ContainerDep,
) -> LogAppended:
    """Append log lines (idempotent on task, attempt, seq; ~1 MiB per task, then a marker)."""
    accepted, truncated, stored = await lifecycle.append_logs(
        session, c.tasks, runner_id, task_id, body.claim_token, body.seq, body.lines
    )
    return LogAppended(accepted=accepted, truncated=truncated, stored_bytes=stored)

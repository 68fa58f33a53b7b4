"""Runner registry endpoints: the registry's change, then what it means for the runner's work,
in one unit of work. Static paths come before /runners/{runner_id}."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Response

from parity.api.deps import (
    ContainerDep,
    CurrentPrincipal,
    CurrentRunner,
    Idempotency,
    ReadSession,
    WriteSession,
)
from parity.api.jsonbody import JsonRoute
from parity.api.pagination import Page, PageParamsDep, make_page
from parity.network.schemas import RunnerRegistered
from parity.runners import service
from parity.runners.schemas import (
    Heartbeat,
    HeartbeatAnswer,
    RunnerRead,
    RunnerRegister,
    RunnerStats,
    WebhookSet,
    WebhookSetRead,
)
from parity.runners.views import by_id, runner_read
from parity.tasks import runner_side
from parity.tasks.schemas import ClaimRead
from parity.tasks.views import task_read

router = APIRouter(route_class=JsonRoute, tags=["runners"])


async def _read(session: Any, runner: Any) -> RunnerRead:
    models = await service.models_for(session, [runner])
    counts = await runner_side.active_counts(session, [runner.id])
    return runner_read(runner, by_id(models, runner.id), counts.get(runner.id, 0))


async def _register(
    body: RunnerRegister,
    principal: CurrentPrincipal,
    session: WriteSession,
    idem: Idempotency,
    c: ContainerDep,
) -> Any:
    # A repeat (same Idempotency-Key and body) registers again: re-registration is what a
    # repeat means for a device, and its answer holds secrets (the runner token, claim
    # tokens) that are never stored to be replayed. A reused key with another body is 422.
    replayed = await idem.replay() is not None
    reg = await service.register(session, c.auth, c.runners, principal, body)
    claims = await runner_side.rebind_claims(session, c.tasks, reg.runner.id)
    out = RunnerRegistered(
        runner=await _read(session, reg.runner),
        runner_token=reg.runner_token,
        webhook_secret=reg.webhook_secret,
        claims=[
            ClaimRead(
                task=task_read(t),
                claim_token=tok,
                attempt=attempt,
                lease_seconds=c.tasks.lease_seconds,
                lease_expires_at=t.lease_expires_at or t.updated_at,
            )
            for t, tok, attempt in claims
        ],
    )
    if not replayed:
        await idem.remember(201, {"runner": out.runner.model_dump(mode="json")})
    return out


router.add_api_route(
    "/runners",
    _register,
    methods=["POST"],
    status_code=201,
    response_model=RunnerRegistered,
    summary="Register (or re-register) a runner",
    description=(
        "Wallet token required. A device_id belongs to the first wallet that registers it "
        "(another wallet gets 409 device_owned_by_other_wallet). Re-registration rotates the "
        "runner token and returns current claims with fresh claim tokens."
    ),
)
router.add_api_route(
    "/runners/register",
    _register,
    methods=["POST"],
    status_code=201,
    response_model=RunnerRegistered,
    include_in_schema=False,
)


@router.post("/runners/heartbeat", response_model=HeartbeatAnswer)
async def heartbeat(
    body: Heartbeat, runner_id: CurrentRunner, session: WriteSession, c: ContainerDep
) -> HeartbeatAnswer:
    """Runner token. Records liveness and usage, renews the leases of the listed claims, and
    answers which claims are revoked and which tasks must be cancelled. ``status: offline`` is
    a stopping runner's last call: it shows offline at once and its work is released now."""
    beat = await service.heartbeat(session, c.runners, runner_id, body)
    res = await runner_side.heartbeat(
        session,
        c.tasks,
        runner_id,
        body.claims,
        offline=beat.offline,
        came_online=beat.came_online,
    )
    return HeartbeatAnswer(
        revoked=res.revoked,
        cancel=res.cancel,
        renewed=res.renewed,
        lease_seconds=c.tasks.lease_seconds,
    )


@router.get("/runners/stats", response_model=RunnerStats)
async def stats(principal: CurrentPrincipal, session: ReadSession) -> Any:
    """Network-wide counts: runners by derived status, capacity online, tasks queued."""
    by_status = await runner_side.counts_by_status(session)
    return await service.stats(
        session, lambda ids: runner_side.active_counts(session, ids), by_status
    )


async def _set_webhook(
    body: WebhookSet, runner_id: CurrentRunner, session: WriteSession, c: ContainerDep
) -> WebhookSetRead:
    """Set this runner's push URL (SSRF-guarded); returns a new signing secret."""
    runner, secret = await service.set_webhook(session, c.runners, runner_id, body.url)
    assert secret is not None
    return WebhookSetRead(id=runner.id, url=body.url, webhook_secret=secret)


router.add_api_route(
    "/runners/webhooks",
    _set_webhook,
    methods=["PUT"],
    response_model=WebhookSetRead,
    summary="Set this runner's push URL (SSRF-guarded); returns the signing secret",
)
router.add_api_route(
    "/runners/webhooks",
    _set_webhook,
    methods=["POST"],
    status_code=201,
    response_model=WebhookSetRead,
    include_in_schema=False,
)


@router.delete("/runners/webhooks", status_code=204)
async def clear_webhook(
    runner_id: CurrentRunner, session: WriteSession, c: ContainerDep
) -> Response:
    """Remove this runner's push URL: it gets work by pulling only."""
    await service.set_webhook(session, c.runners, runner_id, None)
    return Response(status_code=204)


@router.get("/runners", response_model=Page[RunnerRead])
async def list_runners(
    principal: CurrentPrincipal, session: ReadSession, page: PageParamsDep
) -> Page[RunnerRead]:
    """Your runners (all runners for an operator), newest first."""
    rows = await service.list_runners(session, principal, page.limit, page.cursor)
    models = await service.models_for(session, rows)
    counts = await runner_side.active_counts(session, [r.id for r in rows])
    items = [runner_read(r, by_id(models, r.id), counts.get(r.id, 0)) for r in rows]
    return make_page(items, rows, page.limit)


@router.get("/runners/{runner_id}", response_model=RunnerRead)
async def get_runner(
    runner_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSession
) -> RunnerRead:
    """One runner (yours; any for an operator), with its active claims and models."""
    runner = await service.get_runner(session, principal, runner_id)
    return await _read(session, runner)


@router.post("/runners/{runner_id}/drain", response_model=RunnerRead)
async def drain(
    runner_id: uuid.UUID, principal: CurrentPrincipal, session: WriteSession, c: ContainerDep
) -> RunnerRead:
    """Owner or operator: stop giving this runner new work; current work continues."""
    runner = await service.set_draining(session, c.runners, principal, runner_id, True)
    return await _read(session, runner)


@router.post("/runners/{runner_id}/resume", response_model=RunnerRead)
async def resume(
    runner_id: uuid.UUID, principal: CurrentPrincipal, session: WriteSession, c: ContainerDep
) -> RunnerRead:
    """Owner or operator: give a draining runner new work again."""
    runner = await service.set_draining(session, c.runners, principal, runner_id, False)
    return await _read(session, runner)


@router.post("/runners/{runner_id}/ban", response_model=RunnerRead)
async def ban(
    runner_id: uuid.UUID, principal: CurrentPrincipal, session: WriteSession, c: ContainerDep
) -> RunnerRead:
    """Operator only: revoke the runner's token and expire its leases."""
    runner = await service.ban(session, c.runners, principal, runner_id)
    await runner_side.runners_gone(session, c.tasks, [runner.id], c.clock.now(), sweep=False)
    return await _read(session, runner)

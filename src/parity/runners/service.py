"""Runner registry: registration (device ownership, token rotation), heartbeats (liveness,
usage, models, reported status), push URL, drain, ban, liveness sweep, stats. What these mean
for a runner's tasks (claims handed back, leases renewed or released) is the task queue's
(``parity.tasks.runner_side``); this package imports nothing from it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.auth import service as auth_service
from parity.auth.schemas import Principal
from parity.auth.service import AuthDeps
from parity.clock import Clock
from parity.core.runners.liveness import offline_cutoff
from parity.events import service as events_service
from parity.events.service import EventDeps
from parity.ledger import service as ledger
from parity.ledger.deps import LedgerDeps
from parity.runners import repository as repo
from parity.runners.errors import (
    DeviceOwnedByOtherWallet,
    RunnerBanned,
    RunnerNotFound,
    RunnerTokenRequired,
    RunnerVersionTooOld,
    WebhookUrlRefused,
)
from parity.runners.models import Runner, RunnerModel
from parity.runners.schemas import Heartbeat, RunnerRegister
from parity.webhooks.signing import new_secret
from parity.webhooks.ssrf import UrlRefused, resolve_and_check


@dataclass(frozen=True)
class RunnerConfig:
    allow_private_webhooks: bool
    min_version: str
    offline_timeout_seconds: float
    clock: Clock
    random_bytes: Callable[[int], bytes]
    events: EventDeps
    ledger: LedgerDeps | None = None  # stake gating of registration; None when pricing is off


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


async def check_webhook_url(url: str, cfg: RunnerConfig, field: str = "webhook") -> str:
    try:
        await resolve_and_check(url, allow_private=cfg.allow_private_webhooks)
    except UrlRefused as exc:
        raise WebhookUrlRefused(field, str(exc)) from None
    return url


@dataclass
class Registration:
    runner: Runner
    runner_token: str
    webhook_secret: str | None


async def register(
    session: AsyncSession,
    auth: AuthDeps,
    cfg: RunnerConfig,
    principal: Principal,
    body: RunnerRegister,
) -> Registration:
    """Create or re-register a runner. A device belongs to the first wallet that registers it.
    Re-registration rotates the runner token (the caller then hands back the runner's current
    claims with fresh claim tokens, so a restarted runner can resume or release them)."""
    if principal.kind == "runner":
        raise RunnerTokenRequired("register with a wallet session or API key, not a runner token")
    if body.runner_version and _version_tuple(body.runner_version) < _version_tuple(
        cfg.min_version
    ):
        raise RunnerVersionTooOld(
            f"runner_version {body.runner_version} is below the minimum {cfg.min_version}",
            details={"minimum": cfg.min_version},
        )
    if body.webhook:
        await check_webhook_url(body.webhook, cfg)
    now = cfg.clock.now()
    caps = body.capabilities
    runner = await repo.by_device(session, body.device_id, lock=True)
    if runner is not None and runner.owner_address != principal.address:
        raise DeviceOwnedByOtherWallet(
            "this device_id is registered to another wallet", details={"device_id": body.device_id}
        )
    if runner is not None and runner.banned_at is not None:
        raise RunnerBanned("this runner is banned by the operator")
    if cfg.ledger is not None:
        account = ledger.runner_account(cfg.ledger, principal.address, body.device_id)
        await ledger.require_min_stake(cfg.ledger, account, doing="registering a runner")
    secret: str | None = None
    if runner is None:
        runner = Runner(
            id=uuid.uuid4(),
            device_id=body.device_id,
            owner_address=principal.address,
            created_at=now,
            banned_at=None,
            webhook_secret=None,
            drain_requested=False,
        )
        session.add(runner)
    runner.status = "online"
    runner.webhook_url = body.webhook
    if body.webhook:
        secret = new_secret(cfg.random_bytes(32))
        runner.webhook_secret = secret
    runner.cpu_cores = caps.cpu_cores
    runner.memory_mb = caps.memory_mb
    runner.gpus = caps.gpus
    runner.docker = caps.docker
    runner.fl = caps.fl
    runner.fl_datasets = list(caps.fl_datasets)
    runner.max_concurrent_tasks = body.max_concurrent_tasks
    runner.labels = dict(body.labels)
    runner.runner_version = body.runner_version
    runner.last_heartbeat = now
    runner.updated_at = now
    await session.flush()
    await repo.sync_models(session, runner.id, [m.model_dump() for m in body.models], now)
    await auth_service.revoke_runner_tokens(session, runner.id, now)
    raw, _ = await auth_service.issue_runner_token(session, auth, principal.address, runner.id)
    return Registration(runner, raw, secret)


@dataclass(frozen=True)
class Beat:
    """What a heartbeat recorded: the status the runner reported, and whether it came back."""

    runner: Runner
    offline: bool
    came_online: bool


async def heartbeat(
    session: AsyncSession, cfg: RunnerConfig, runner_id: uuid.UUID, body: Heartbeat
) -> Beat:
    """Liveness, usage, models (rows written only when the list changed) and the reported
    status (``offline`` is the runner's last call when it stops; the caller releases its
    work)."""
    runner = await repo.get(session, runner_id, lock=True)
    if runner is None:
        raise RunnerNotFound("runner not found")
    now = cfg.clock.now()
    reported = "online" if body.status == "busy" else body.status
    runner.last_heartbeat = now
    runner.cpu_usage = body.cpu_usage
    runner.memory_usage = body.memory_usage
    runner.updated_at = now
    was_offline = runner.status == "offline"
    runner.status = reported
    if body.models is not None:
        await repo.sync_models(session, runner.id, [m.model_dump() for m in body.models], now)
    offline = reported == "offline"
    if offline and not was_offline:
        await _offline_event(session, cfg, runner, "reported")
    await session.flush()
    return Beat(runner, offline, was_offline and reported == "online")


async def set_webhook(
    session: AsyncSession, cfg: RunnerConfig, runner_id: uuid.UUID, url: str | None
) -> tuple[Runner, str | None]:
    runner = await repo.get(session, runner_id, lock=True)
    if runner is None:
        raise RunnerNotFound("runner not found")
    secret: str | None = None
    if url:
        await check_webhook_url(url, cfg, field="url")
        secret = new_secret(cfg.random_bytes(32))
    runner.webhook_url = url
    runner.webhook_secret = secret
    runner.updated_at = cfg.clock.now()
    await session.flush()
    return runner, secret


async def get_runner(session: AsyncSession, principal: Principal, runner_id: uuid.UUID) -> Runner:
    runner = await repo.get(session, runner_id)
    visible = runner is not None and (
        principal.is_admin
        or runner.owner_address == principal.address
        or principal.runner_id == runner.id
    )
    if runner is None or not visible:
        raise RunnerNotFound(f"runner {runner_id} not found")
    return runner


async def list_runners(
    session: AsyncSession, principal: Principal, limit: int, after: Any
) -> list[Runner]:
    owner = None if principal.is_admin else principal.address
    return await repo.list_runners(session, owner, limit, after)


async def set_draining(
    session: AsyncSession,
    cfg: RunnerConfig,
    principal: Principal,
    runner_id: uuid.UUID,
    drain: bool,
) -> Runner:
    """Owner or operator: a draining runner finishes its work but claims nothing new."""
    runner = await get_runner(session, principal, runner_id)
    runner.drain_requested = drain
    runner.updated_at = cfg.clock.now()
    await session.flush()
    return runner


async def ban(
    session: AsyncSession, cfg: RunnerConfig, principal: Principal, runner_id: uuid.UUID
) -> Runner:
    """Operator only: the runner goes offline for good and its tokens stop working (the caller
    expires its leases)."""
    auth_service.require_admin(principal)
    runner = await get_runner(session, principal, runner_id)
    now = cfg.clock.now()
    runner.banned_at = now
    runner.status = "offline"
    runner.updated_at = now
    await auth_service.revoke_runner_tokens(session, runner.id, now)
    await session.flush()
    return runner


async def mark_stale_offline(
    session: AsyncSession, cfg: RunnerConfig, now: datetime, timeout_seconds: float
) -> list[uuid.UUID]:
    """Liveness sweep: runners silent past the timeout go offline (the caller expires their
    leases, so the attempts count and the work is retried elsewhere)."""
    stale = await repo.stale_runners(session, offline_cutoff(now, timeout_seconds), limit=500)
    for r in stale:
        r.status = "offline"
        r.updated_at = now
        await _offline_event(session, cfg, r, "heartbeat_timeout")
    await session.flush()
    return [r.id for r in stale]


async def _offline_event(session: AsyncSession, cfg: RunnerConfig, r: Runner, reason: str) -> None:
    data = {"runner_id": str(r.id), "device_id": r.device_id, "reason": reason}
    await events_service.emit(
        session, cfg.events, "runner.offline", r.owner_address, data, str(r.id)
    )


async def models_for(
    session: AsyncSession, runners: list[Runner]
) -> dict[uuid.UUID, list[RunnerModel]]:
    return await repo.models_of(session, [r.id for r in runners])


async def online_runners(session: AsyncSession) -> list[Runner]:
    """Online runners neither draining nor banned (placement's candidates)."""
    return await repo.online_runners(session)


async def get(session: AsyncSession, runner_id: uuid.UUID) -> Runner | None:
    return await repo.get(session, runner_id)


async def try_lock(session: AsyncSession, runner_id: uuid.UUID) -> bool:
    """Lock the runner row without waiting: False when another transaction holds it."""
    return await repo.try_lock(session, runner_id)


async def stats(
    session: AsyncSession,
    active_counts: Callable[[list[uuid.UUID]], Awaitable[dict[uuid.UUID, int]]],
    by_status: dict[str, int],
) -> dict[str, Any]:
    """Network-wide counts; claims per runner and tasks by status come from the task queue."""
    runners = await repo.all_runners(session)
    counts = await active_counts([r.id for r in runners])
    out: dict[str, Any] = {
        "total": len(runners),
        "online": 0,
        "busy": 0,
        "draining": 0,
        "offline": 0,
        "banned": 0,
        "active_claims": sum(counts.values()),
        "capacity": {"cpu_cores": 0.0, "memory_mb": 0, "gpus": 0, "docker": False, "fl": False},
        "pending_tasks": by_status.get("pending", 0),
        "running_tasks": by_status.get("running", 0) + by_status.get("assigned", 0),
    }
    for r in runners:
        status = derived_status(r, counts.get(r.id, 0))
        out[status] += 1
        if r.banned_at is not None:
            out["banned"] += 1
        if status in ("online", "busy"):
            cap = out["capacity"]
            cap["cpu_cores"] += r.cpu_cores
            cap["memory_mb"] += r.memory_mb
            cap["gpus"] += r.gpus
            cap["docker"] = cap["docker"] or r.docker
            cap["fl"] = cap["fl"] or r.fl
    return out


def derived_status(runner: Runner, active_claims: int) -> str:
    """busy is derived: an online runner holding at least one claim."""
    if runner.banned_at is not None:
        return "offline"
    if runner.drain_requested and runner.status != "offline":
        return "draining"
    if runner.status == "online" and active_claims > 0:
        return "busy"
    return runner.status

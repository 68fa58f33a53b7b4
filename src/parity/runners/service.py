"""Runner registry: registration (device ownership, token rotation, claim hand-back),
heartbeats (liveness, usage, models, lease renewal), push URL, drain, ban, stats."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.auth import service as auth_service
from parity.auth.schemas import Principal
from parity.auth.service import AuthDeps
from parity.core.identity.siwe import hash_token
from parity.core.runners.liveness import offline_cutoff
from parity.core.tasks.states import TaskStatus
from parity.db.hooks import after_commit
from parity.events import service as events_service
from parity.ledger import service as ledger
from parity.runners import repository as repo
from parity.runners.errors import (
    DeviceOwnedByOtherWallet,
    RunnerBanned,
    RunnerNotFound,
    RunnerVersionTooOld,
    WebhookUrlRefused,
)
from parity.runners.models import Runner, RunnerModel
from parity.runners.schemas import Heartbeat, RunnerRegister
from parity.tasks import lifecycle
from parity.tasks import queue_repository as tasks_queue_repo
from parity.tasks import repository as tasks_repo
from parity.tasks.claims import new_claim_token
from parity.tasks.deps import TaskDeps
from parity.tasks.errors import RunnerTokenRequired
from parity.tasks.models import Task, TaskAttempt
from parity.webhooks.signing import new_secret
from parity.webhooks.ssrf import UrlRefused, resolve_and_check


@dataclass(frozen=True)
class RunnerConfig:
    allow_private_webhooks: bool
    min_version: str
    offline_timeout_seconds: float


def require_runner(principal: Principal) -> uuid.UUID:
    if principal.kind != "runner" or principal.runner_id is None:
        raise RunnerTokenRequired("this endpoint needs a runner token (from registration)")
    return principal.runner_id


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
    claims: list[tuple[Task, str, int]]


async def register(
    session: AsyncSession,
    auth: AuthDeps,
    tasks: TaskDeps,
    cfg: RunnerConfig,
    principal: Principal,
    body: RunnerRegister,
) -> Registration:
    """Create or re-register a runner. A device belongs to the first wallet that registers it.
    Re-registration rotates the runner token and hands back current claims with fresh tokens
    so a restarted runner can resume or release them."""
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
    now = tasks.clock.now()
    caps = body.capabilities
    runner = await repo.by_device(session, body.device_id, lock=True)
    if runner is not None and runner.owner_address != principal.address:
        raise DeviceOwnedByOtherWallet(
            "this device_id is registered to another wallet", details={"device_id": body.device_id}
        )
    if runner is not None and runner.banned_at is not None:
        raise RunnerBanned("this runner is banned by the operator")
    if tasks.ledger is not None:
        account = ledger.runner_account(tasks.ledger, principal.address, body.device_id)
        await ledger.require_min_stake(tasks.ledger, account, doing="registering a runner")
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
        secret = new_secret(tasks.random_bytes(32))
        runner.webhook_secret = secret
    runner.cpu_cores = caps.cpu_cores
    runner.memory_mb = caps.memory_mb
    runner.gpus = caps.gpus
    runner.docker = caps.docker
    runner.fl = caps.fl
    runner.max_concurrent_tasks = body.max_concurrent_tasks
    runner.labels = dict(body.labels)
    runner.runner_version = body.runner_version
    runner.last_heartbeat = now
    runner.updated_at = now
    await session.flush()
    await repo.replace_models(session, runner.id, [m.model_dump() for m in body.models], now)
    await auth_service.revoke_runner_tokens(session, runner.id, now)
    raw, _ = await auth_service.issue_runner_token(session, auth, principal.address, runner.id)
    claims = await _rebind_claims(session, tasks, runner.id)
    return Registration(runner, raw, secret, claims)


async def _rebind_claims(
    session: AsyncSession, deps: TaskDeps, runner_id: uuid.UUID
) -> list[tuple[Task, str, int]]:
    """Claims are stored only as hashes, so a restarted runner gets a fresh token per claim
    (same attempt); its old tokens stop working."""
    out: list[tuple[Task, str, int]] = []
    for task in await tasks_queue_repo.runner_active_tasks(session, runner_id, lock=True):
        token = new_claim_token(deps)
        h = hash_token(token)
        attempt: TaskAttempt | None = await tasks_repo.current_attempt(session, task)
        task.claim_token_hash = h
        task.lease_expires_at = deps.clock.now() + timedelta(seconds=deps.lease_seconds)
        if attempt is not None:
            attempt.claim_token_hash = h
        out.append((task, token, task.attempts))
    await session.flush()
    return out


@dataclass
class HeartbeatResult:
    revoked: list[str]
    cancel: list[uuid.UUID]
    renewed: list[uuid.UUID]


async def heartbeat(
    session: AsyncSession, deps: TaskDeps, principal: Principal, body: Heartbeat
) -> HeartbeatResult:
    runner_id = require_runner(principal)
    runner = await repo.get(session, runner_id, lock=True)
    if runner is None:
        raise RunnerNotFound("runner not found")
    now = deps.clock.now()
    reported = "online" if body.status == "busy" else body.status
    runner.last_heartbeat = now
    runner.cpu_usage = body.cpu_usage
    runner.memory_usage = body.memory_usage
    runner.updated_at = now
    was_offline = runner.status == "offline"
    runner.status = reported
    if body.models is not None:
        await repo.replace_models(session, runner.id, [m.model_dump() for m in body.models], now)
    active = await tasks_queue_repo.runner_active_tasks(session, runner.id, lock=True)
    if reported == "offline":
        if not was_offline:
            await _offline_event(session, deps, runner, "reported")
        await lifecycle.release_runner_claims(session, deps, runner.id)
        return HeartbeatResult(revoked=list(body.claims), cancel=[], renewed=[])
    by_hash: dict[str, list[Task]] = {}
    for t in active:
        if t.claim_token_hash:
            by_hash.setdefault(t.claim_token_hash, []).append(t)
    revoked: list[str] = []
    renewed: list[uuid.UUID] = []
    until = now + timedelta(seconds=deps.lease_seconds)
    for token in body.claims:
        held = by_hash.get(hash_token(token))
        if not held:
            revoked.append(token)
            continue
        for t in held:
            t.lease_expires_at = until
            renewed.append(t.id)
    cancel = [t.id for t in active if t.status == TaskStatus.CANCEL_REQUESTED]
    await session.flush()
    if was_offline and reported == "online":
        wakeups = deps.wakeups

        def wake() -> None:
            wakeups.wake_runner(runner_id)

        after_commit(session, wake)
    return HeartbeatResult(revoked=revoked, cancel=cancel, renewed=renewed)


async def set_webhook(
    session: AsyncSession, deps: TaskDeps, cfg: RunnerConfig, principal: Principal, url: str | None
) -> tuple[Runner, str | None]:
    runner_id = require_runner(principal)
    runner = await repo.get(session, runner_id, lock=True)
    if runner is None:
        raise RunnerNotFound("runner not found")
    secret: str | None = None
    if url:
        await check_webhook_url(url, cfg, field="url")
        secret = new_secret(deps.random_bytes(32))
    runner.webhook_url = url
    runner.webhook_secret = secret
    runner.updated_at = deps.clock.now()
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
    session: AsyncSession, deps: TaskDeps, principal: Principal, runner_id: uuid.UUID, drain: bool
) -> Runner:
    """Owner or operator: a draining runner finishes its work but claims nothing new."""
    runner = await get_runner(session, principal, runner_id)
    runner.drain_requested = drain
    runner.updated_at = deps.clock.now()
    await session.flush()
    return runner


async def ban(
    session: AsyncSession, deps: TaskDeps, principal: Principal, runner_id: uuid.UUID
) -> Runner:
    auth_service.require_admin(principal)
    runner = await get_runner(session, principal, runner_id)
    now = deps.clock.now()
    runner.banned_at = now
    runner.status = "offline"
    runner.updated_at = now
    await auth_service.revoke_runner_tokens(session, runner.id, now)
    await tasks_queue_repo.expire_runner_leases(session, runner.id, now)
    await session.flush()
    return runner


async def mark_stale_offline(
    session: AsyncSession, deps: TaskDeps, now: datetime, timeout_seconds: float
) -> int:
    """Liveness sweep: runners silent past the timeout go offline and their leases expire now
    (the lease job then counts the attempt and retries elsewhere)."""
    stale = await repo.stale_runners(session, offline_cutoff(now, timeout_seconds), limit=500)
    for r in stale:
        r.status = "offline"
        r.updated_at = now
        await tasks_queue_repo.expire_runner_leases(session, r.id, now)
        await _offline_event(session, deps, r, "heartbeat_timeout")
    await session.flush()
    if stale:
        await lifecycle.expire_leases(session, deps, now)
    return len(stale)


async def _offline_event(session: AsyncSession, deps: TaskDeps, r: Runner, reason: str) -> None:
    data = {"runner_id": str(r.id), "device_id": r.device_id, "reason": reason}
    await events_service.emit(
        session, deps.events, "runner.offline", r.owner_address, data, str(r.id)
    )


async def models_for(
    session: AsyncSession, runners: list[Runner]
) -> dict[uuid.UUID, list[RunnerModel]]:
    return await repo.models_of(session, [r.id for r in runners])


async def active_counts(session: AsyncSession, runners: list[Runner]) -> dict[uuid.UUID, int]:
    return await tasks_repo.active_counts(session, [r.id for r in runners])


async def stats(session: AsyncSession) -> dict[str, Any]:
    runners = await repo.all_runners(session)
    counts = await tasks_repo.active_counts(session, [r.id for r in runners])
    by_status = await tasks_repo.count_by_status(session)
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

"""The client side of compute tasks: create, read, update, cancel. Placement writes an offer
(``target_runner_id``) for a push-capable runner and queues the signed push."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.auth.schemas import Principal
from parity.core.tasks.config import ConfigInvalid, normalize_task_config
from parity.core.tasks.placement import Resources, RunnerLoad, choose_runner
from parity.core.tasks.states import TaskStatus, TaskType
from parity.db.hooks import after_commit
from parity.db.pagination import Cursor
from parity.errors import InvalidInput
from parity.runners import service as runners_service
from parity.tasks import billing
from parity.tasks import claim_repository as claim_repo
from parity.tasks import queue_repository as queue_repo
from parity.tasks import repository as repo
from parity.tasks.deps import TaskDeps
from parity.tasks.errors import (
    TaskNotCancellable,
    TaskNotEditable,
    TaskNotFound,
)
from parity.tasks.events import TaskEvent, emit_task_event, emit_task_events
from parity.tasks.models import RunnerPush, Task, TaskAttempt, TaskLog, TaskResult
from parity.tasks.queue import transitions as tr
from parity.tasks.rows import check_pending_limits, new_task
from parity.tasks.schemas import ResourcesIn, TaskCreate, TaskUpdate

CLIENT_TYPES = [TaskType.COMMAND.value, TaskType.DOCKER.value]


def _config(task_type: str, config: dict[str, Any] | None, image: str | None) -> dict[str, Any]:
    try:
        return normalize_task_config(task_type, config, image=image)
    except ConfigInvalid as exc:
        raise InvalidInput(exc.field, exc.reason) from None


def _as_input(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored (normalized) config back in input form, so an edit can merge into it."""
    out = dict(stored)
    command_string = out.pop("command_string", None)
    if command_string is not None and "command" not in out:
        out["command"] = command_string
    if "image_url" in out:
        out["docker_image_url"] = out.pop("image_url")
    return out


def _legacy_config(body: TaskCreate) -> tuple[str, dict[str, Any] | None]:
    """The original API: a top-level ``image`` makes a docker task; ``environment {type,
    config}`` may carry the type (when ``type`` itself is not given) and the config."""
    task_type = body.type
    config = body.config
    legacy_type = (body.environment or {}).get("type")
    if "type" not in body.model_fields_set and legacy_type in ("command", "docker"):
        task_type = legacy_type
    if body.image:
        task_type = TaskType.DOCKER.value
    if config is None and body.environment and isinstance(body.environment.get("config"), dict):
        config = body.environment["config"]
    return task_type, config


async def create_task(
    session: AsyncSession, deps: TaskDeps, principal: Principal, body: TaskCreate
) -> Task:
    task_type, raw_config = _legacy_config(body)
    config = _config(task_type, raw_config, body.image)
    now = deps.clock.now()
    await check_pending_limits(session, deps, principal.address)
    res = body.resources or ResourcesIn()
    not_before = body.not_before
    if not_before is not None and not_before.tzinfo is None:
        raise InvalidInput("not_before", "must carry a timezone (UTC ISO-8601)")
    timeout = body.timeout_seconds or config.get("timeout_seconds")
    task = new_task(
        deps,
        now,
        task_type=task_type,
        title=body.title,
        config=config,
        creator=principal.address,
        max_attempts=body.max_attempts,
        description=body.description,
        environment=body.environment,
        req_cpu_cores=res.cpu_cores,
        req_memory_mb=res.memory_mb,
        req_gpus=res.gpus,
        req_docker=res.docker or task_type == TaskType.DOCKER,
        required_labels=dict(body.labels),
        priority=body.priority,
        timeout_seconds=timeout,
        available_at=max(not_before, now) if not_before else now,
    )
    await billing.gate_and_reserve(session, deps, task)
    await repo.add(session, task)
    await emit_task_event(session, deps, "task.created", task, type=task.type)
    await offer(session, deps, task)
    return task


async def offer(session: AsyncSession, deps: TaskDeps, task: Task) -> uuid.UUID | None:
    """Place a due task: target the least-loaded push-capable runner that fits and queue its
    ``task.offered`` push; pull-only runners are woken instead. Either way first claim wins."""
    now = deps.clock.now()
    if task.available_at > now:
        return None
    runners = [
        r
        for r in await runners_service.online_runners(session)
        if r.webhook_url and r.webhook_secret
    ]
    target: uuid.UUID | None = None
    if runners:
        # Active claims and outstanding offers both count, in slots and in resources: a burst
        # of tasks spreads over the runners and no runner is offered more than it could claim.
        used = await claim_repo.committed_usages(session, [r.id for r in runners], now)
        none = claim_repo.Usage(0, 0.0, 0, 0)
        loads = [
            RunnerLoad(
                runner_id=str(r.id),
                capacity=Resources(r.cpu_cores, r.memory_mb, r.gpus, r.docker),
                in_use=Resources(
                    used.get(r.id, none).cpu_cores,
                    used.get(r.id, none).memory_mb,
                    used.get(r.id, none).gpus,
                    False,
                ),
                active_claims=used.get(r.id, none).count,
                max_concurrent_tasks=r.max_concurrent_tasks,
                cpu_usage=r.cpu_usage,
                labels={k: str(v) for k, v in (r.labels or {}).items()},
            )
            for r in runners
        ]
        need = Resources(task.req_cpu_cores, task.req_memory_mb, task.req_gpus, task.req_docker)
        excluded = {str(x) for x in await repo.exclusions(session, task.id)}
        if excluded and not await repo.some_runner_fits(session, task.id, unexcluded=True):
            excluded = set()  # exclusion is a preference: no other runner could take it
        labels = {k: str(v) for k, v in (task.required_labels or {}).items()}
        target = await _reserve_runner(
            session,
            now,
            need,
            labels,
            loads,
            excluded,
            choose_runner(need, labels, loads, excluded),
        )
    if target is not None:
        expires = now + timedelta(seconds=deps.offer_seconds)
        await offer_to(session, deps, task, target, now, push=True, expires=expires)
    else:
        wakeups = deps.wakeups

        def wake_one() -> None:
            wakeups.wake_any(1)

        after_commit(session, wake_one)
    return target


async def offer_to(
    session: AsyncSession,
    deps: TaskDeps,
    task: Task,
    runner_id: uuid.UUID,
    now: datetime,
    *,
    push: bool,
    expires: datetime | None,
) -> None:
    """Target ``task`` at a runner: queue its signed ``task.offered`` push when it has a push
    URL, and wake it after commit (its long-poll, and the push loop). A runner in a long-poll on
    this replica is only woken: it claims at once, and a push would make it claim twice."""
    event = stage_offer(session, deps, task, runner_id, now, push=push, expires=expires)
    await session.flush()
    await emit_task_events(session, deps, [event])


def stage_offer(
    session: AsyncSession,
    deps: TaskDeps,
    task: Task,
    runner_id: uuid.UUID,
    now: datetime,
    *,
    push: bool,
    expires: datetime | None,
) -> TaskEvent:
    """:func:`offer_to` without its flush and event: the caller flushes and emits the returned
    ``task.offered`` with others (an FL round's tasks, in one pass)."""
    event, push_row = offer_rows(session, deps, task, runner_id, now, push=push, expires=expires)
    if push_row is not None:
        session.add(RunnerPush(**push_row))
    return event


def offer_rows(
    session: AsyncSession,
    deps: TaskDeps,
    task: Task,
    runner_id: uuid.UUID,
    now: datetime,
    *,
    push: bool,
    expires: datetime | None,
) -> tuple[TaskEvent, dict[str, Any] | None]:
    """The offer of ``task`` to ``runner_id`` as its caller writes it: the task's target set,
    the runner woken after commit, and the ``task.offered`` event and the ``runner_pushes``
    row (when pushed: not while the runner is in a long-poll here) returned, not added."""
    task.target_runner_id = runner_id
    task.offer_expires_at = expires
    push = push and not deps.wakeups.is_waiting(runner_id)
    push_row = None
    if push:
        push_row = {
            "id": uuid.uuid4(),
            "runner_id": runner_id,
            "task_id": task.id,
            "payload": {"type": "task.offered", "task_id": str(task.id), "title": task.title},
            "attempts": 0,
            "next_attempt_at": now,
            "delivered_at": None,
            "abandoned_at": None,
            "last_error": None,
            "created_at": now,
        }
    wakeups = deps.wakeups

    def wake_target() -> None:
        wakeups.wake_runner(runner_id)
        if push:
            wakeups.poke_pushes()

    after_commit(session, wake_target)
    return TaskEvent("task.offered", task, {"runner_id": str(runner_id)}), push_row


async def _reserve_runner(
    session: AsyncSession,
    now: datetime,
    need: Resources,
    labels: dict[str, str],
    loads: list[RunnerLoad],
    excluded: set[str],
    chosen: str | None,
) -> uuid.UUID | None:
    """Confirm placement's pick under the runner's row lock: concurrent placements read the
    same committed offers, so each would offer the same runner its last free slot. Locked,
    a new statement sees every offer committed before the lock was granted; a runner that
    no longer has room drops out and the next best is tried. The lock is taken without
    waiting (a runner locked by another placement or a claim is passed over for now): a
    placement may hold one runner while trying the next, and waiting there could deadlock
    with a placement doing the same the other way round. A task offered to nobody stays
    claimable by any runner and is offered again when a slot frees."""
    none = claim_repo.Usage(0, 0.0, 0, 0)
    while chosen is not None:
        runner_id = uuid.UUID(chosen)
        if await runners_service.try_lock(session, runner_id):
            fresh = (await claim_repo.committed_usages(session, [runner_id], now)).get(
                runner_id, none
            )
            load = next(x for x in loads if x.runner_id == chosen)
            load = dataclasses.replace(
                load,
                in_use=Resources(fresh.cpu_cores, fresh.memory_mb, fresh.gpus, False),
                active_claims=fresh.count,
            )
            if choose_runner(need, labels, [load], excluded) == chosen:
                return runner_id
        loads = [x for x in loads if x.runner_id != chosen]
        chosen = choose_runner(need, labels, loads, excluded)
    return None


async def reoffer_pending(
    session: AsyncSession, deps: TaskDeps, now: datetime, limit: int = 50
) -> int:
    """Offer due, untargeted tasks again: each scheduler tick, and right after a runner frees
    a slot (a push-only runner may have been full when the first offer came, or the offer
    expired)."""
    n = 0
    for task in await queue_repo.unoffered_due(session, now, limit=limit):
        if await offer(session, deps, task) is not None:
            n += 1
        else:
            break  # no push-capable runner has room now
    return n


async def get_task(session: AsyncSession, principal: Principal, task_id: uuid.UUID) -> Task:
    task = await repo.get(session, task_id)
    # Someone else's task answers like a missing one.
    if task is None or (task.creator_address != principal.address and not principal.is_admin):
        if (
            task is not None
            and principal.runner_id is not None
            and task.runner_id == principal.runner_id
        ):
            return task
        raise TaskNotFound(f"task {task_id} not found")
    return task


async def waiting_for(session: AsyncSession, task: Task) -> str | None:
    """Why no runner can take a pending compute task now, when no online runner is big enough
    for it (its requirements named); None otherwise. Prompts and FL rounds are routed to
    their runners and say so in their own records."""
    if task.status != TaskStatus.PENDING or task.type not in (TaskType.COMMAND, TaskType.DOCKER):
        return None
    if await repo.some_runner_fits(session, task.id):
        return None
    return f"no online runner is big enough for it: it needs {_needs(task)}"


def _needs(task: Task) -> str:
    wants = [
        f"{name} >= {value:g}"
        for name, value in (
            ("cpu_cores", task.req_cpu_cores),
            ("memory_mb", task.req_memory_mb),
            ("gpus", task.req_gpus),
        )
        if value
    ]
    if task.req_docker:
        wants.append("a docker engine")
    return ", ".join(wants) or "an online runner (none is online)"


async def list_tasks(
    session: AsyncSession,
    principal: Principal,
    *,
    statuses: list[str] | None,
    types: list[str] | None,
    include_internal: bool,
    limit: int,
    offset: int | None = None,
    after: Cursor | None = None,
) -> tuple[list[Task], int]:
    for s in statuses or []:
        if s not in {st.value for st in TaskStatus}:
            raise InvalidInput("status", f"unknown status {s!r}")
    if types:
        for t in types:
            if t not in {tt.value for tt in TaskType}:
                raise InvalidInput("type", f"unknown type {t!r}")
    elif not include_internal:
        types = CLIENT_TYPES
    creator = None if principal.is_admin else principal.address
    return await repo.list_tasks(
        session,
        creator=creator,
        statuses=statuses,
        types=types,
        limit=limit,
        offset=offset,
        after=after,
    )


async def update_task(
    session: AsyncSession,
    deps: TaskDeps,
    principal: Principal,
    task_id: uuid.UUID,
    body: TaskUpdate,
) -> Task:
    """Merge the given fields into a pending task."""
    task = await get_task(session, principal, task_id)
    task = await repo.get(session, task.id, lock=True) or task
    if task.status != TaskStatus.PENDING:
        raise TaskNotEditable(
            f"only pending tasks can be edited; task is {task.status}",
            details={"status": task.status},
        )
    now = deps.clock.now()
    fields = body.model_dump(exclude_unset=True)
    if "title" in fields and body.title is not None:
        task.title = body.title
    if "description" in fields and body.description is not None:
        task.description = body.description
    if body.config is not None:
        merged = {**_as_input(task.config), **body.config}
        task.config = _config(task.type, merged, None)
    if body.resources is not None:
        task.req_cpu_cores = body.resources.cpu_cores
        task.req_memory_mb = body.resources.memory_mb
        task.req_gpus = body.resources.gpus
        task.req_docker = body.resources.docker or task.type == TaskType.DOCKER
    if body.labels is not None:
        task.required_labels = dict(body.labels)
    if body.max_attempts is not None:
        task.max_attempts = body.max_attempts
    if body.priority is not None:
        task.priority = body.priority
    if "not_before" in fields:
        nb = body.not_before
        if nb is not None and nb.tzinfo is None:
            raise InvalidInput("not_before", "must carry a timezone (UTC ISO-8601)")
        task.available_at = max(nb, now) if nb else now
    if body.timeout_seconds is not None:
        task.timeout_seconds = body.timeout_seconds
    if body.resources is not None or body.timeout_seconds is not None:
        await billing.resize(session, deps, task)
    task.updated_at = now
    await session.flush()
    return task


async def cancel_task(
    session: AsyncSession, deps: TaskDeps, principal: Principal, task_id: uuid.UUID
) -> Task:
    """pending/assigned → cancelled; running → cancel_requested (delivered through the lease
    and heartbeat answers); repeating a cancel answers with the current task."""
    task = await get_task(session, principal, task_id)
    task = await repo.get(session, task.id, lock=True) or task
    now = deps.clock.now()
    if task.status in (TaskStatus.CANCELLED, TaskStatus.CANCEL_REQUESTED):
        return task
    if task.status in (TaskStatus.PENDING, TaskStatus.ASSIGNED):
        attempt = await repo.current_attempt(session, task) if task.status == "assigned" else None
        await tr.transition(session, deps, task, tr.CANCEL, now=now, attempt=attempt)
    elif task.status == TaskStatus.RUNNING:
        await tr.transition(session, deps, task, tr.REQUEST_CANCEL, now=now)
    else:
        raise TaskNotCancellable(f"task is {task.status}", details={"status": task.status})
    return task


async def get_result(session: AsyncSession, principal: Principal, task_id: uuid.UUID) -> TaskResult:
    task = await get_task(session, principal, task_id)
    result = await repo.get_result(session, task.id)
    if result is None:
        raise TaskNotFound(
            _no_result(task), code="result_not_found", details={"status": task.status}
        )
    return result


def _no_result(task: Task) -> str:
    """Why there is no result: not yet, or never (only a completed task has one)."""
    if task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        why = f" (last error: {task.last_error})" if task.last_error else ""
        where = (
            f"the prompt (GET /api/v1/llm/prompts/{task.id}) shows what of its answer was "
            "delivered and billed"
            if task.type == "llm"
            else "its logs and attempts say what happened"
        )
        return f"task {task.id} is {task.status}{why}: only a completed task has a result; {where}"
    return f"task {task.id} has no result yet (it is {task.status})"


async def prune_finished_logs(session: AsyncSession, before: datetime, limit: int) -> int:
    """Retention: at most ``limit`` log chunks of tasks that ended before ``before``."""
    return await repo.delete_finished_logs(session, before, limit)


async def get_attempts(
    session: AsyncSession, principal: Principal, task_id: uuid.UUID
) -> list[TaskAttempt]:
    task = await get_task(session, principal, task_id)
    return await repo.list_attempts(session, task.id)


async def get_logs(
    session: AsyncSession,
    principal: Principal,
    task_id: uuid.UUID,
    *,
    attempt: int | None,
    after: int | None,
    limit: int,
) -> tuple[Task, list[TaskLog]]:
    task = await get_task(session, principal, task_id)
    return task, await repo.read_logs(session, task.id, attempt, after, limit)

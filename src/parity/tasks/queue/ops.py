"""The queue's common cases, one implementation for every executor: claim the next task (or a
named one) under the runner's row lock, start or complete a task under the runner's current
claim. Refusals to explain, repeats and timers are the general path's (``lifecycle``)."""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from parity.core.tasks.placement import Resources, fits
from parity.core.tokens import hash_token
from parity.tasks.deps import TaskDeps
from parity.tasks.queue import transitions as tr
from parity.tasks.queue.executors import Executor

CLAIM_PREFIX = "ps_claim_"


@dataclass(frozen=True)
class ClaimingRunner:
    """What a claim needs of the runner row (read with the row lock, no ORM object)."""

    id: uuid.UUID
    status: str
    drain_requested: bool
    banned_at: datetime | None
    max_concurrent_tasks: int
    cpu_cores: float
    memory_mb: int
    gpus: int
    docker: bool
    labels: dict[str, Any] | None

    def candidate_params(self, now: datetime, max_tasks: int) -> dict[str, Any]:
        """The candidates statement's parameters for this runner (its capacity and slots) and
        how many rows to read: the batch plus a margin for rows placement turns down."""
        return {
            "b_runner_id": self.id,
            "b_now": now,
            "b_cpu": float(self.cpu_cores),
            "b_memory": self.memory_mb,
            "b_gpus": self.gpus,
            "b_max": self.max_concurrent_tasks,
            "b_docker": self.docker,
            "b_labels": json.dumps(self.labels or {}),
            "b_limit": min(max_tasks, self.max_concurrent_tasks) + 8,
        }


@dataclass(frozen=True)
class Claim:
    tasks: Sequence[Any]  # tasks rows (a Core row or a RecordView: the same attribute names)
    token: str
    lease_seconds: float
    lease_expires_at: datetime


class Refusal(enum.Enum):
    UNKNOWN_RUNNER = "unknown_runner"  # unknown or banned
    NOT_CLAIMING = "not_claiming"  # draining or not online
    NOTHING = "nothing"  # no candidate fits (or the named task is not claimable)


def new_claim_token(deps: TaskDeps) -> str:
    return CLAIM_PREFIX + deps.random_bytes(32).hex()


def _labels_match(required: dict[str, object], labels: dict[str, object]) -> bool:
    return all(labels.get(k) == v for k, v in required.items())


def choose(runner: ClaimingRunner, candidates: Sequence[Any], max_tasks: int) -> list[uuid.UUID]:
    """Placement over the locked candidates, in their order: each must fit what the runner has
    left after its active claims and the tasks chosen before it, and carry only labels the
    runner has. Candidates carry the runner's usage (``used_*``) and requirements (``req_*``)."""
    if not candidates:
        return []
    first = candidates[0]
    capacity = Resources(runner.cpu_cores, runner.memory_mb, runner.gpus, runner.docker)
    in_use = Resources(first.used_cpu, first.used_memory, first.used_gpus, False)
    want = min(max_tasks, runner.max_concurrent_tasks - first.used_count)
    chosen: list[uuid.UUID] = []
    for t in candidates:
        need = Resources(t.req_cpu_cores, t.req_memory_mb, t.req_gpus, t.req_docker)
        if not fits(need, capacity, in_use) or not _labels_match(
            t.required_labels or {}, runner.labels or {}
        ):
            continue
        in_use = Resources(
            in_use.cpu_cores + need.cpu_cores,
            in_use.memory_mb + need.memory_mb,
            in_use.gpus + need.gpus,
            False,
        )
        chosen.append(t.id)
        if len(chosen) >= want:
            break
    return chosen


async def lock_runner(x: Executor, runner_id: uuid.UUID) -> ClaimingRunner | None:
    """Lock the runner row: this runner's claims are serialized, so none overcommits it."""
    rows = await x.rows(x.statements.lock_runner, {"b_runner_id": runner_id})
    return ClaimingRunner(*rows[0]) if rows else None


async def claim(
    x: Executor,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    *,
    max_tasks: int,
    start: bool,
    task_id: uuid.UUID | None,
) -> Claim | Refusal:
    """Lock the runner, read the candidates with its usage, place, mark them claimed (with
    their attempts). Run inside the caller's transaction."""
    now = deps.clock.now()
    runner = await lock_runner(x, runner_id)
    if runner is None or runner.banned_at is not None:
        return Refusal.UNKNOWN_RUNNER
    if runner.status != "online" or runner.drain_requested:
        return Refusal.NOT_CLAIMING
    params = runner.candidate_params(now, max_tasks)
    s = x.statements
    if task_id is None:
        candidates = await x.rows(s.candidates, params)
    else:
        candidates = await x.rows(s.candidate_by_id, {**params, "b_task_id": task_id})
    chosen = choose(runner, candidates, max_tasks)
    if not chosen:
        return Refusal.NOTHING
    token = new_claim_token(deps)
    token_hash = hash_token(token)
    lease_until = now + timedelta(seconds=deps.lease_seconds)
    marked = await x.rows(
        s.claim_started if start else s.claim,
        {
            "b_ids": chosen,
            "b_runner_id": runner.id,
            "b_token_hash": token_hash,
            "b_lease_until": lease_until,
            "b_now": now,
        },
    )
    if not marked:
        return Refusal.NOTHING
    if not s.single:
        await x.execute(
            s.insert_attempts,
            [
                {
                    "id": uuid.uuid4(),
                    "task_id": t.id,
                    "attempt": t.attempts,
                    "runner_id": runner.id,
                    "claim_token_hash": token_hash,
                    "claimed_at": now,
                    "started_at": now if start else None,
                }
                for t in marked
            ],
        )
    return Claim(marked, token, deps.lease_seconds, lease_until)


def _held(
    task_id: uuid.UUID, runner_id: uuid.UUID, token_hash: str, now: datetime
) -> dict[str, Any]:
    return {
        "b_task_id": task_id,
        "b_token_hash": token_hash,
        "b_runner_id": runner_id,
        "b_now": now,
    }


async def start_held(
    x: Executor, task_id: uuid.UUID, runner_id: uuid.UUID, token_hash: str, now: datetime
) -> Any | None:
    """``start`` in its common case: an assigned task under this runner's current claim turns
    running. None when that does not hold (the caller then fences the slow way)."""
    s = x.statements
    rows = await x.rows(s.start, _held(task_id, runner_id, token_hash, now))
    if not rows:
        return None
    if not s.single:
        await x.execute(
            s.start_attempt, {"b_task_id": task_id, "b_n": rows[0].attempts, "b_now": now}
        )
    return rows[0]


@dataclass(frozen=True)
class Completed:
    task: Any
    deliveries: int  # webhook deliveries the statement queued (PostgreSQL; else 0)
    due: bool  # an untargeted task is due (a re-offer may place it)
    push: bool  # a push-capable runner is online


@dataclass(frozen=True)
class ResultFields:
    output: str | None
    output_cid: str | None
    exit_code: int | None
    error: str | None
    result_hash: str | None
    usage: dict[str, Any]


async def complete_held(
    x: Executor,
    task_id: uuid.UUID,
    runner_id: uuid.UUID,
    token_hash: str,
    now: datetime,
    result: ResultFields,
    admins: Sequence[str],
) -> Completed | None:
    """``complete`` in its common case: the task under this runner's current claim turns
    completed, its attempt ends, its result is stored; on PostgreSQL the ``task.completed``
    event and its deliveries are written by the same statement (elsewhere the caller emits
    it). None when the task is not active under this claim."""
    s = x.statements
    params = {
        **_held(task_id, runner_id, token_hash, now),
        "b_exit_code": result.exit_code,
        "b_result_id": uuid.uuid4(),
        "b_output": result.output,
        "b_output_cid": result.output_cid,
        "b_error": result.error,
        "b_result_hash": result.result_hash,
        "b_usage": result.usage,
        "b_event_id": uuid.uuid4(),
        "b_admins": list(admins),
    }
    rows = await x.rows(
        s.complete, params if s.single else _held(task_id, runner_id, token_hash, now)
    )
    if not rows:
        return None
    row = rows[0]
    if s.single:
        return Completed(row, int(row.deliveries), bool(row.due), bool(row.push))
    started = row.started_at or now
    await x.execute(
        s.end_attempt,
        {
            "b_task_id": task_id,
            "b_n": row.attempts,
            "b_started": started,
            "b_now": now,
            "b_outcome": tr.COMPLETE.outcome,
            "b_exit_code": result.exit_code,
        },
    )
    await x.execute(
        s.insert_result,
        {
            "id": params["b_result_id"],
            "task_id": task_id,
            "attempt": row.attempts,
            "runner_id": runner_id,
            "output": result.output,
            "output_cid": result.output_cid,
            "exit_code": result.exit_code,
            "error": result.error,
            "result_hash": result.result_hash,
            "usage": dict(result.usage),
            "execution_seconds": max((now - started).total_seconds(), 0.0),
            "created_at": now,
        },
    )
    return Completed(row, 0, bool(row.due), bool(row.push))

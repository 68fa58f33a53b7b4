"""Task rows → wire shapes (the original API's fields plus the new ones)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from parity.tasks.models import Task, TaskAttempt, TaskResult
from parity.tasks.queue.executors import RecordView
from parity.tasks.schemas import AttemptRead, ResourcesIn, ResultRead, TaskRead, TaskStatusRead


def task_read(task: Task | Row[Any] | RecordView) -> TaskRead:
    """From a Task or a plain ``tasks`` row (Core RETURNING, or the driver's record): same
    attribute names."""
    return TaskRead(
        id=task.id,
        title=task.title,
        description=task.description,
        type=task.type,
        status=task.status,
        config=task.config,
        environment=task.environment,
        creator_address=task.creator_address,
        runner_id=task.runner_id,
        nonce=task.nonce,
        resources=ResourcesIn(
            cpu_cores=task.req_cpu_cores,
            memory_mb=task.req_memory_mb,
            gpus=task.req_gpus,
            docker=task.req_docker,
        ),
        labels=task.required_labels or {},
        priority=task.priority,
        timeout_seconds=task.timeout_seconds,
        attempts=task.attempts,
        releases=task.releases,
        max_attempts=task.max_attempts,
        available_at=task.available_at,
        target_runner_id=task.target_runner_id,
        last_error=task.last_error,
        cancel_requested=task.cancel_requested_at is not None,
        created_at=task.created_at,
        updated_at=task.updated_at,
        started_at=task.started_at,
        completed_at=task.completed_at,
    )


def status_read(task: Task) -> TaskStatusRead:
    return TaskStatusRead(
        id=task.id,
        status=task.status,
        attempts=task.attempts,
        max_attempts=task.max_attempts,
        runner_id=task.runner_id,
        last_error=task.last_error,
        updated_at=task.updated_at,
    )


def attempt_read(a: TaskAttempt) -> AttemptRead:
    return AttemptRead(
        attempt=a.attempt,
        runner_id=a.runner_id,
        claimed_at=a.claimed_at,
        started_at=a.started_at,
        ended_at=a.ended_at,
        outcome=a.outcome,
        exit_code=a.exit_code,
        error=a.error,
    )


def result_read(r: TaskResult) -> ResultRead:
    return ResultRead(
        id=r.id,
        task_id=r.task_id,
        attempt=r.attempt,
        runner_id=r.runner_id,
        output=r.output,
        output_cid=r.output_cid,
        exit_code=r.exit_code,
        error=r.error,
        result_hash=r.result_hash,
        usage=r.usage or {},
        execution_time_seconds=r.execution_seconds,
        created_at=r.created_at,
    )

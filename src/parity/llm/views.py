"""Prompt rows → wire shapes. A prompt's status is its task's, renamed (§5: ``queued →
processing → completed | failed``)."""

from __future__ import annotations

from typing import Any

from parity.core.tasks.states import TaskStatus
from parity.llm.billing import (
    PARTIAL_OUTPUT,
    latency_ms,
    meter_partial,
    meter_prompt,
    partial_report,
    partial_text,
    usage_record,
)
from parity.llm.repository import PromptRow
from parity.llm.schemas import PriceRead, PromptRead, UsageRead

_S = TaskStatus
PROMPT_STATUS = {
    _S.PENDING.value: "queued",
    _S.ASSIGNED.value: "processing",
    _S.RUNNING.value: "processing",
    _S.CANCEL_REQUESTED.value: "processing",
    _S.COMPLETED.value: "completed",
    _S.FAILED.value: "failed",
    _S.CANCELLED.value: "failed",
}
FINISHED = frozenset({"completed", "failed"})


def prompt_status(task_status: str) -> str:
    return PROMPT_STATUS.get(task_status, "processing")


def metered(row: PromptRow) -> tuple[dict[str, Any], int, float | None] | None:
    """(usage, cost, latency) of a completed prompt, or of what a broken stream delivered: as
    stored when metered, else computed the same way from its result (the prompts job stores
    it within a tick) or kept report (a row that ended before its part was metered)."""
    p = row.prompt
    if p.metered_at is not None and p.usage is not None:
        return p.usage, p.cost or 0, p.latency_ms
    if row.status in (_S.FAILED, _S.CANCELLED):
        # A stream that broke off after its first token: what it delivered (billed when
        # pricing is on, free otherwise), normally stored when the task ended.
        partial = partial_report(p)
        if partial is None:
            return None
        delivered, record = meter_partial(p, partial)
        return record, delivered.cost, None
    if row.status != _S.COMPLETED or row.usage is None:
        return None
    m = meter_prompt(p, row.output, row.usage)
    return usage_record(m, row.usage), m.cost, latency_ms(p, row.completed_at)


def _error(row: PromptRow, status: str) -> str | None:
    """Why it failed; a prompt cancelled before any runner took it has no runner error."""
    if status == "completed":
        return None
    if row.last_error is None and row.status == _S.CANCELLED:
        return "cancelled"
    return row.last_error


def prompt_read(row: PromptRow) -> PromptRead:
    p = row.prompt
    status = prompt_status(row.status)
    billed = metered(row)
    usage = None
    if billed is not None:
        u = {k: v for k, v in billed[0].items() if k != PARTIAL_OUTPUT}
        usage = UsageRead(**u, total_tokens=u["input_tokens"] + u["output_tokens"])
    if status == "completed":
        response = row.output or ""
    else:
        # What a stream that broke off delivered (usage.partial says so), else nothing.
        response = (partial_text(p) or "") if usage is not None and usage.partial else ""
    return PromptRead(
        id=p.id,
        task_id=p.task_id,
        status=status,
        model_name=p.model,
        request=p.request,
        response=response,
        error=_error(row, status),
        runner_id=row.runner_id or row.target_runner_id,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        usage=usage,
        cost=None if billed is None else str(billed[1]),
        price=PriceRead(**p.price) if p.price else None,
        max_price=p.max_price,
        reserved=None if p.reserved is None else str(p.reserved),
        latency_ms=None if billed is None else billed[2],
        deadline_at=p.deadline_at,
        created_at=p.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
    )

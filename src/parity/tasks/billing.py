"""Where compute tasks meet the ledger: escrow at creation, a posting or a release when the
task ends (ARCHITECTURE §6). Both run in the transaction of the task's own state change."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import TaskStatus
from parity.events.service import EventDeps
from parity.ledger import service as ledger
from parity.ledger.deps import LedgerDeps
from parity.runners import service as runners_service
from parity.tasks.deps import TaskDeps
from parity.tasks.models import Task, TaskResult
from parity.tasks.schemas import REPORT_DELAY

TERMINAL_EVENTS = frozenset({"task.completed", "task.failed", "task.cancelled"})


def _size(task: Task) -> dict[str, Any]:
    """What the price depends on."""
    return {
        "cpu_cores": task.req_cpu_cores,
        "memory_mb": task.req_memory_mb,
        "gpus": task.req_gpus,
        "timeout_seconds": task.timeout_seconds,
    }


async def gate_and_reserve(session: AsyncSession, deps: TaskDeps, task: Task) -> None:
    """MIN_STAKE gating, then hold the task's maximum cost (409 insufficient_funds)."""
    if deps.ledger is None:
        return
    account = ledger.client_account(task.creator_address)
    stake = await ledger.require_min_stake(deps.ledger, account, doing="creating work")
    await ledger.reserve_task(
        session,
        deps.ledger,
        task_id=task.id,
        client=task.creator_address,
        stake=stake,
        **_size(task),
    )


async def resize(session: AsyncSession, deps: TaskDeps, task: Task) -> None:
    """A pending task's resources or timeout changed: resize its escrow."""
    if deps.ledger is None:
        return
    await ledger.resize_task_reservation(session, deps.ledger, task_id=task.id, **_size(task))


def escrow_ledger(deps: TaskDeps) -> LedgerDeps | None:
    """The ledger when a task could hold escrow; None when pricing is off and nothing was held
    at start-up: then a terminal transition has nothing to close and needs no lookup at all."""
    return deps.ledger if deps.ledger is not None and deps.ledger.escrow.possible else None


Closer = Callable[[AsyncSession, LedgerDeps, Any, EventDeps], Awaitable[None]]
CLOSERS: dict[str, Closer] = {}
"""Task type → how its escrow closes, for types not billed by run time (a prompt bills its
tokens), with the events it records (a prompt's ``prompt.completed``). Registered by the domain
that owns the type, at start-up."""


PartialKeeper = Callable[[AsyncSession, Any, Any, str | None, dict[str, Any]], Awaitable[bool]]
PARTIALS: dict[str, PartialKeeper] = {}
"""Task type → what to keep of a failed attempt's report (session, task, attempt, output,
usage), in the fail's transaction, before its transition: the work it delivered before it broke
off, for the closer to bill. Returns True when that work already reached the client, so the
task must not be run again elsewhere. Registered by the domain that owns the type."""


Ender = Callable[[AsyncSession, TaskDeps, Any], Awaitable[None]]
ENDERS: dict[str, Ender] = {}
"""Task type → what follows when its task ends failed or cancelled, pricing on or off, in that
transition's transaction after its escrow closed (a prompt's ``prompt.failed``). Registered by
the domain that owns the type."""


async def ended(session: AsyncSession, deps: TaskDeps, task: Any) -> None:
    """The task ended failed or cancelled: its type's ender, if it has one."""
    ender = ENDERS.get(task.type)
    if ender is not None:
        await ender(session, deps, task)


async def close(session: AsyncSession, deps: TaskDeps, task: Any) -> None:
    """The task reached a terminal state: bill a completion, release anything else."""
    ledger_deps = escrow_ledger(deps)
    if ledger_deps is None:
        return
    closer = CLOSERS.get(task.type)
    if closer is not None:
        await closer(session, ledger_deps, task, deps.events)
        return
    reservation = await ledger.open_task_reservation(session, task.id)
    if reservation is None:
        return  # unpriced work, or its escrow is already closed
    completed = task.status == TaskStatus.COMPLETED
    payee = None
    delay_ms = 0
    if completed and task.runner_id is not None:
        runner = await runners_service.get(session, task.runner_id)
        if runner is not None:
            payee = ledger.runner_account(ledger_deps, runner.owner_address, runner.device_id)
        # Only the usage column: the result row also holds up to 64 KiB of output.
        usage = await session.scalar(select(TaskResult.usage).where(TaskResult.task_id == task.id))
        delay_ms = report_delay_ms(usage)
    await ledger.close_task(
        session,
        ledger_deps,
        reservation,
        completed=completed,
        started_at=task.started_at,
        completed_at=task.completed_at,
        payee=payee,
        report_delay_ms=delay_ms,
    )


def report_delay_ms(usage: Any) -> int:
    """How long the accepted completion waited on its runner before the try that reached the
    server (``usage.report_delay_ms``: the server unreachable, retries), as the runner says.
    Not billed: the meter stops when the run ended, not when its report got through. A runner
    can only lower its own pay with it (the bill never exceeds the server-observed time)."""
    value = usage.get(REPORT_DELAY) if isinstance(usage, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value

"""Metering a completed prompt and closing its escrow (ARCHITECTURE §6).

The task queue calls :func:`close_prompt` when a prompt's task reaches a terminal status
(``tasks.billing.CLOSERS``), in that transition's transaction: a completion is metered from
the runner's reported usage (cross-checked against the estimate, output capped at
``max_tokens``), billed at the price snapshotted at dispatch as exactly one posting, the
runner's latency EWMA is updated, and its ``prompt.completed`` event is recorded (once: a
prompt is metered once). A streamed prompt whose attempt broke off after its first
token (the runner failed, or the client went away and the work was cancelled) is billed the same
way for what it delivered: :func:`keep_partial` stores that attempt's report with the prompt
(``tasks.billing.PARTIALS``) and the closer meters it when the task ends failed or cancelled.
A prompt cancelled because its gateway client went away (:func:`mark_client_gone`) bills its
runner's partial report too, streamed or not; a stream's output at most the tokens of the text
relayed to the client before it left.
Any other end releases the escrow. When nothing can hold
escrow (pricing off) the queue skips closers, so the prompts job meters those completions
with the same :func:`record_completion`. A prompt that ends failed or cancelled, pricing on or
off, is announced by :func:`prompt_failed` (``tasks.billing.ENDERS``) in that transaction,
which also meters a broken stream's part when no closer did."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.llm.metering import LlmPrice, Metered, estimate_text_tokens, meter
from parity.core.llm.request import parse_llm_config
from parity.core.llm.routing import update_latency_ewma
from parity.core.tasks.states import TaskStatus, TaskType
from parity.events import service as events_service
from parity.events.service import EventDeps
from parity.ledger import service as ledger
from parity.ledger.deps import LedgerDeps
from parity.llm import repository as repo
from parity.llm.models import Prompt
from parity.runners import service as runners_service
from parity.tasks import billing as task_billing
from parity.tasks.deps import TaskDeps

INPUT_KEYS = ("input_tokens", "prompt_tokens")
PARTIAL = "partial"  # key of a broken attempt's report in Prompt.usage until it is metered
# Key in Prompt.usage, until it is metered: the prompt was cancelled because its gateway client
# went away; ``{"streamed": bool, "delivered": text}`` (a stream's text relayed to it by then).
CLIENT_GONE = "client_gone"
# Key in a metered partial's usage record: the partial text shown as the prompt's response.
PARTIAL_OUTPUT = "partial_output"
CAPPED_AT_DELIVERED = "output_tokens_capped_at_delivered"
# Kept of a partial text: far more than max_tokens can produce (metering caps the count anyway).
PARTIAL_TEXT_MAX_CHARS = 256 * 1024
OUTPUT_KEYS = ("output_tokens", "completion_tokens", "response_tokens")


def _reported(usage: Mapping[str, Any], keys: tuple[str, ...]) -> object:
    """The first count present under one of ``keys`` (the names backends and old runners use)."""
    for key in keys:
        if usage.get(key) is not None:
            return usage[key]
    return None


def meter_prompt(prompt: Prompt, output: str | None, usage: Mapping[str, Any]) -> Metered:
    """What ``prompt`` is billed for a completion that delivered ``output`` and reported
    ``usage``, at its dispatch price (free when it has none)."""
    price = LlmPrice.from_snapshot(prompt.price) if prompt.price else LlmPrice()
    return meter(
        parse_llm_config(prompt.request),
        reported_input=_reported(usage, INPUT_KEYS),
        reported_output=_reported(usage, OUTPUT_KEYS),
        output_text=output or "",
        price=price,
    )


def usage_record(metered: Metered, usage: Mapping[str, Any]) -> dict[str, Any]:
    """How a prompt was metered, as stored with it (and shown as its ``usage``)."""
    reported_in, reported_out = _reported(usage, INPUT_KEYS), _reported(usage, OUTPUT_KEYS)
    return {
        "input_tokens": metered.input_tokens,
        "output_tokens": metered.output_tokens,
        "reported_input_tokens": reported_in if isinstance(reported_in, int) else None,
        "reported_output_tokens": reported_out if isinstance(reported_out, int) else None,
        "input_estimate": metered.input_estimate,
        "output_estimate": metered.output_estimate,
        "flags": list(metered.flags),
        "flagged": metered.flagged,
    }


def latency_ms(prompt: Prompt, completed_at: datetime | None) -> float | None:
    """End to end, as the client saw it: submitted → completion accepted."""
    if completed_at is None:
        return None
    return max((completed_at - prompt.created_at).total_seconds() * 1000, 0.0)


async def record_completion(
    session: AsyncSession, prompt: Prompt, now: datetime, events: EventDeps
) -> bool:
    """Meter a completed prompt once: store its usage, cost and latency, feed the serving
    runner's latency EWMA and record its ``prompt.completed`` event. False when it is not
    completed or was metered already."""
    if prompt.metered_at is not None:
        return False
    f = await repo.completion_facts(session, prompt.task_id)
    if f is None or f.status != TaskStatus.COMPLETED or f.result_task_id is None:
        return False
    claimed = f.claimed_at if f.runner_id is not None and f.completed_at is not None else None
    item = repo.ToMeter(prompt, f.runner_id, f.completed_at, claimed, f.output, dict(f.usage or {}))
    await record_completions(session, [item], now, events)
    return True


async def record_completions(
    session: AsyncSession, items: Sequence[repo.ToMeter], now: datetime, events: EventDeps
) -> None:
    """Meter completed prompts (read by ``repository.to_meter``): their usage, cost and
    latency, then each serving runner's latency EWMA fed with its samples in completion
    order, one stats row lock per (runner, model); their ``prompt.completed`` events in one
    insert."""
    samples: dict[tuple[uuid.UUID, str], list[float]] = {}
    for item in sorted(items, key=lambda i: (i.completed_at is None, i.completed_at)):
        prompt = item.prompt
        metered = meter_prompt(prompt, item.output, item.usage)
        prompt.input_tokens = metered.input_tokens
        prompt.output_tokens = metered.output_tokens
        prompt.cost = metered.cost
        prompt.usage = usage_record(metered, item.usage)
        prompt.latency_ms = latency_ms(prompt, item.completed_at)
        prompt.metered_at = now
        if item.runner_id is not None and item.completed_at is not None:
            sample = (item.completed_at - (item.claimed_at or item.completed_at)).total_seconds()
            samples.setdefault((item.runner_id, prompt.model), []).append(max(sample, 0.0) * 1000)
    for (runner_id, model), values in samples.items():
        stats = await repo.locked_latency(session, runner_id, model, now)
        if stats is None:
            continue
        for value in values:
            previous = stats.latency_ewma_ms if stats.samples else None
            stats.latency_ewma_ms = update_latency_ewma(previous, value)
            stats.samples += 1
        stats.updated_at = now
    await session.flush()
    await events_service.emit_many(
        session,
        events,
        [
            events_service.NewEvent(
                PROMPT_COMPLETED,
                item.prompt.creator_address,
                completed_event_data(item.prompt, item.runner_id),
                str(item.prompt.id),
            )
            for item in items
        ],
    )


PROMPT_COMPLETED = "prompt.completed"


def completed_event_data(prompt: Prompt, runner_id: uuid.UUID | None) -> dict[str, Any]:
    """The data of a metered prompt's ``prompt.completed`` event: what it was billed."""
    return {
        "prompt_id": str(prompt.id),
        "task_id": str(prompt.task_id),
        "model": prompt.model,
        "status": TaskStatus.COMPLETED.value,
        "runner_id": None if runner_id is None else str(runner_id),
        "input_tokens": prompt.input_tokens,
        "output_tokens": prompt.output_tokens,
        "cost": None if prompt.cost is None else str(prompt.cost),
        "latency_ms": prompt.latency_ms,
        "flagged": bool((prompt.usage or {}).get("flagged")),
    }


async def keep_partial(
    session: AsyncSession, task: Any, attempt: Any, output: str | None, usage: dict[str, Any]
) -> bool:
    """A failed attempt's report (a keeper of ``tasks.billing.PARTIALS``). When the prompt
    streams and the attempt delivered text (or reports output tokens), its report is kept with
    the prompt for the closer to bill, and True says that text reached the client: the prompt
    must not be re-run. The first such attempt is the one the client saw (failover stops at the
    first token), so a later report never replaces it. Without a first token nothing is kept:
    the prompt fails over."""
    reported = _reported(usage, OUTPUT_KEYS)
    if not output and not (isinstance(reported, int) and reported > 0):
        return False  # no first token: nothing delivered
    prompt = await repo.get(session, task.id, lock=True)
    if prompt is None or prompt.metered_at is not None:
        return False
    gone = client_gone(prompt)
    if gone is not None and gone.get("streamed") and not gone.get("delivered"):
        return False  # its client left before its first token: nothing reached it
    if gone is None and not parse_llm_config(prompt.request).stream:
        return False  # nothing reached the client before the completion
    if partial_report(prompt) is None:
        prompt.usage = {
            **(prompt.usage or {}),
            PARTIAL: {
                "attempt": attempt.attempt,
                "runner_id": str(attempt.runner_id),
                "output": (output or "")[:PARTIAL_TEXT_MAX_CHARS],
                "usage": usage,
            },
        }
        await session.flush()
    return True


def mark_client_gone(prompt: Prompt, delivered: str | None) -> None:
    """The prompt is being cancelled because its gateway client went away (in the cancel's
    transaction): a partial report its runner sends then is billed, also for a prompt that does
    not stream (the runner's work up to the cancel), and for a stream at most ``delivered``,
    the text relayed to the client before it left (None: the prompt does not stream)."""
    if prompt.metered_at is not None:
        return
    mark: dict[str, Any] = {"streamed": delivered is not None}
    if delivered is not None:
        mark["delivered"] = delivered[:PARTIAL_TEXT_MAX_CHARS]
    prompt.usage = {**(prompt.usage or {}), CLIENT_GONE: mark}


def client_gone(prompt: Prompt) -> dict[str, Any] | None:
    """The mark of :func:`mark_client_gone`, until the prompt is metered."""
    if prompt.metered_at is not None or not prompt.usage:
        return None
    found = prompt.usage.get(CLIENT_GONE)
    return found if isinstance(found, dict) else None


def partial_report(prompt: Prompt) -> dict[str, Any] | None:
    """The kept report of the attempt that broke off mid-stream, until it is metered."""
    if prompt.metered_at is not None or not prompt.usage:
        return None
    found = prompt.usage.get(PARTIAL)
    return found if isinstance(found, dict) else None


def meter_partial(prompt: Prompt, partial: Mapping[str, Any]) -> tuple[Metered, dict[str, Any]]:
    """What a broken attempt delivered, metered like a completion (reported counts, estimated
    from the delivered text when missing, output capped at ``max_tokens``), and its usage
    record as stored (``partial: true``)."""
    raw = partial.get("usage")
    usage: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    output = partial.get("output")
    text = output if isinstance(output, str) else ""
    gone = client_gone(prompt)
    if gone is None or not gone.get("streamed"):
        metered = meter_prompt(prompt, text, usage)
        return metered, {**usage_record(metered, usage), PARTIAL: True, PARTIAL_OUTPUT: text}
    # Its client went away mid-stream: billed for at most what was relayed to it, whatever the
    # runner produced before it learnt of the cancel.
    delivered = str(gone.get("delivered") or "")
    bound = estimate_text_tokens(delivered)
    reported = _reported(usage, OUTPUT_KEYS)
    capped = isinstance(reported, int) and not isinstance(reported, bool) and reported > bound
    price = LlmPrice.from_snapshot(prompt.price) if prompt.price else LlmPrice()
    metered = meter(
        parse_llm_config(prompt.request),
        reported_input=_reported(usage, INPUT_KEYS),
        reported_output=bound if capped else reported,
        output_text=delivered,
        price=price,
    )
    record = usage_record(metered, usage)
    if capped:
        record["flags"] = [*record["flags"], CAPPED_AT_DELIVERED]
    return metered, {**record, PARTIAL: True, PARTIAL_OUTPUT: delivered}


def partial_text(prompt: Prompt) -> str | None:
    """The text a prompt that broke off delivered (its response, marked partial by its usage):
    what its client received when it went away mid-stream, else the runner's partial output.
    None when it kept no partial report."""
    if prompt.metered_at is not None:
        if not prompt.usage or not prompt.usage.get(PARTIAL):
            return None
        shown = prompt.usage.get(PARTIAL_OUTPUT)
        return shown if isinstance(shown, str) else None
    partial = partial_report(prompt)
    if partial is None:
        return None
    gone = client_gone(prompt)
    if gone is not None and gone.get("streamed"):
        return str(gone.get("delivered") or "")
    output = partial.get("output")
    return output if isinstance(output, str) else ""


def record_partial(prompt: Prompt, partial: Mapping[str, Any], now: datetime) -> None:
    """Store the metering of what a broken attempt delivered (:func:`meter_partial`)."""
    metered, record = meter_partial(prompt, partial)
    prompt.input_tokens = metered.input_tokens
    prompt.output_tokens = metered.output_tokens
    prompt.cost = metered.cost
    prompt.usage = record
    prompt.metered_at = now


def _facts(prompt: Prompt) -> dict[str, Any]:
    return {
        "model": prompt.model,
        "input_tokens": prompt.input_tokens,
        "output_tokens": prompt.output_tokens,
        "price": prompt.price,
        "flags": (prompt.usage or {}).get("flags", []),
    }


async def _payee(session: AsyncSession, deps: LedgerDeps, runner_id: Any) -> str | None:
    runner = await runners_service.get(session, runner_id)
    if runner is None:
        return None
    return ledger.runner_account(deps, runner.owner_address, runner.device_id)


async def close_prompt(
    session: AsyncSession, deps: LedgerDeps, task: Any, events: EventDeps
) -> None:
    """The prompt's task ended (a closer of ``tasks.billing``): bill a completion, or what a
    stream delivered before it broke off, as one posting at the dispatch price; release the
    escrow otherwise."""
    prompt = await repo.get(session, task.id, lock=True)
    if prompt is None:
        return
    amount: int | None = None
    payee: str | None = None
    facts: dict[str, Any] = {}
    partial = partial_report(prompt)
    if task.status == TaskStatus.COMPLETED and task.runner_id is not None:
        await record_completion(session, prompt, deps.clock.now(), events)
        payee = await _payee(session, deps, task.runner_id)
        amount = prompt.cost
        facts = _facts(prompt)
    elif task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) and partial is not None:
        record_partial(prompt, partial, deps.clock.now())
        payee = await _payee(session, deps, uuid.UUID(str(partial.get("runner_id"))))
        amount = prompt.cost
        facts = {**_facts(prompt), "partial": True, "attempt": partial.get("attempt")}
        await session.flush()
    await ledger.close_with_amount(
        session,
        deps,
        source_type=ledger.PROMPT,
        source_id=str(prompt.id),
        kind=ledger.PROMPT_PAYMENT,
        amount=amount,
        payee=payee,
        facts=facts,
    )


PROMPT_FAILED = "prompt.failed"


async def prompt_failed(session: AsyncSession, deps: TaskDeps, task: Any) -> None:
    """The prompt's task ended failed or cancelled (an ender of ``tasks.billing.ENDERS``),
    after the closer ran when pricing is on: meter what a broken stream delivered if nothing
    has yet (pricing off), and record the prompt's one ``prompt.failed`` event."""
    prompt = await repo.get(session, task.id, lock=True)
    if prompt is None:
        return
    partial = partial_report(prompt)  # None once metered
    if partial is not None:
        record_partial(prompt, partial, deps.clock.now())
    await events_service.emit(
        session,
        deps.events,
        PROMPT_FAILED,
        prompt.creator_address,
        failed_event_data(prompt, task),
        str(prompt.id),
    )


def failed_event_data(prompt: Prompt, task: Any) -> dict[str, Any]:
    """The data of a ``prompt.failed`` event: why, and what was billed for a stream that broke
    off after its first token (``partial``; nothing otherwise). The attempt that delivered a
    part is the task's last (no failover after a first token): its runner is the task's."""
    partial = prompt.metered_at is not None and bool((prompt.usage or {}).get(PARTIAL))
    runner_id = task.runner_id
    status = TaskStatus(task.status)
    error = task.last_error or ("cancelled" if status == TaskStatus.CANCELLED else None)
    return {
        "prompt_id": str(prompt.id),
        "task_id": str(prompt.task_id),
        "model": prompt.model,
        "status": status.value,
        "error": error,
        "attempts": task.attempts,
        "runner_id": None if runner_id is None else str(runner_id),
        "partial": partial,
        "input_tokens": prompt.input_tokens if partial else 0,
        "output_tokens": prompt.output_tokens if partial else 0,
        "cost": str(prompt.cost or 0) if partial else "0",
    }


def register() -> None:
    """At start-up: prompts close their escrow by tokens, not by run time, and tell their
    creator when they fail."""
    task_billing.CLOSERS[TaskType.LLM.value] = close_prompt
    task_billing.PARTIALS[TaskType.LLM.value] = keep_partial
    task_billing.ENDERS[TaskType.LLM.value] = prompt_failed

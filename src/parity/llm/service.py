"""Prompts (ARCHITECTURE §4-§6): submit (a prompt and its ``llm`` task in one transaction,
escrow held, routed at once when a runner fits), read, wait for the result without holding a
database connection, complete (the original runner's path), discovery and billing metrics.
``submit_prompt`` and ``wait_for_prompt`` are the entry points a gateway builds on.

A runner whose backend refused the request itself (:func:`refusal`: HTTP 400, 413 or 422, e.g.
a prompt longer than the model's context) failed because of the request, not of the runner:
the prompt is not routed to another runner but ends with the backend's message, by the prompts
job or at once by a gateway waiting on it."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.auth.schemas import Principal
from parity.core.llm.aggregate import ModelOffer, ModelSummary, aggregate_models
from parity.core.llm.metering import reservation_amount
from parity.core.llm.metrics import BillingMetrics, Period, PromptUsage, billing_metrics
from parity.core.llm.request import LlmRequest, parse_llm_config
from parity.core.llm.routing import NoRoute, NoRouteReason, RouteCounts
from parity.core.tasks.config import ConfigInvalid
from parity.core.tasks.states import TaskType
from parity.db.hooks import after_commit
from parity.db.session import Database
from parity.errors import InvalidInput
from parity.events.hub import EventHub
from parity.ledger import service as ledger
from parity.llm import dispatch, submit_sql
from parity.llm import repository as repo
from parity.llm.billing import mark_client_gone, record_completions
from parity.llm.deps import LlmDeps
from parity.llm.errors import ModelNotServed, PromptNotFound
from parity.llm.models import Prompt
from parity.llm.repository import PromptRow
from parity.llm.schemas import PromptComplete, PromptCreate
from parity.llm.views import FINISHED, metered, prompt_status
from parity.tasks import handoff, hotpath, internal, lifecycle
from parity.tasks import service as tasks_service
from parity.tasks.lifecycle import Report

JOB_BATCH = 100
FIRST_READ_AFTER_SECONDS = 0.2
SLOT_WATCH_LIMIT = 256  # tasks watched for a freed slot (see jobs.SlotWatch)
_NO_COUNTS = RouteCounts(0, 0, 0, 0)
# How a runner reports its backend refusing the request (the runner's BackendRejected, as the
# ``error`` of its fail: "backend_rejected_request: <message> (HTTP <status>) [<backend>]").
_REFUSED = re.compile(
    r"backend_rejected_request: (?P<message>.*) \(HTTP (?P<status>\d{3})\) \[[^\]]*\]", re.S
)
# The statuses that refuse the request itself; others (401, 403: the runner's credentials)
# are the runner's problem, and the prompt goes to another runner as after any failure.
REQUEST_REFUSED = frozenset({400, 413, 422})


def refusal(error: str | None) -> str | None:
    """The backend's message when a runner's failure ``error`` says the model's backend
    refused the request itself (HTTP 400, 413 or 422: longer than the context, a parameter out
    of range): the client's error, which another runner would refuse too. None otherwise."""
    found = _REFUSED.fullmatch(error.strip()) if error else None
    if found is None or int(found["status"]) not in REQUEST_REFUSED:
        return None
    return found["message"].strip() or f"HTTP {found['status']}"


async def end_refused(db: Database, deps: LlmDeps, row: PromptRow) -> bool:
    """End a queued prompt whose last attempt's backend refused the request (:func:`refusal`)
    with that failure as its error, instead of waiting for the prompts job to do so. True when
    it ended here (False: no longer queued)."""
    reason = row.last_error or "the backend refused the request"
    async with db.transaction() as session:
        return await internal.end_internal_task(session, deps.tasks, row.prompt.task_id, reason)


def _refused_in_queue(row: PromptRow) -> bool:
    return prompt_status(row.status) == "queued" and refusal(row.last_error) is not None


def _request(body: PromptCreate, deps: LlmDeps, *, stream: bool = False) -> LlmRequest:
    """The body as an llm config, refused with the body's own field names. ``stream``: the
    caller relays the runner's token deltas (the gateway), so the runner is asked for them."""
    if body.model is not None and body.model_name is not None and body.model != body.model_name:
        raise InvalidInput("model", "give model or model_name, not two different names")
    if body.stream and not stream:
        raise InvalidInput("stream", "streaming is not offered here; use ?wait=S for the result")
    config: dict[str, object] = {
        "model": body.model if body.model is not None else body.model_name,
        "max_tokens": body.max_tokens,
    }
    for key in ("prompt", "messages", "temperature", "top_p", "seed", "stop"):
        if getattr(body, key) is not None:
            config[key] = getattr(body, key)
    if stream:
        config["stream"] = True
    try:
        return parse_llm_config(config, default_max_tokens=deps.default_max_tokens)
    except ConfigInvalid as exc:
        field = exc.field.removeprefix("config.")
        if field == "model" and body.model is None:
            field = "model_name"
        reason = exc.reason
        if field == "messages" and body.messages is None and body.prompt is None:
            field, reason = "prompt", "is required (or give messages)"
        raise InvalidInput(field, reason) from None


def _max_price(body: PromptCreate) -> dict[str, str] | None:
    cap = {
        k: v
        for k, v in (
            ("input_per_1k", body.max_price_per_1k_input),
            ("output_per_1k", body.max_price_per_1k_output),
        )
        if v is not None
    }
    return cap or None


async def submit_prompt(
    session: AsyncSession,
    deps: LlmDeps,
    principal: Principal,
    body: PromptCreate,
    *,
    stream: bool = False,
    require_served: bool = False,
) -> Prompt:
    """Create a prompt and its ``llm`` task, hold its escrow, and route it when a runner fits
    now (else it stays queued for the prompts job until its deadline). ``require_served``
    (the gateways): :class:`ModelNotServed`, with nothing written, when no claiming runner
    reports the model, instead of queueing the prompt."""
    row = await submit(session, deps, principal, body, stream=stream, require_served=require_served)
    return row.prompt


async def submit(
    session: AsyncSession,
    deps: LlmDeps,
    principal: Principal,
    body: PromptCreate,
    *,
    stream: bool = False,
    require_served: bool = False,
) -> PromptRow:
    """:func:`submit_prompt`, answering the prompt as :func:`read_prompt_now` would read it."""
    request = _request(body, deps, stream=stream)
    # The routing read lists every claiming runner that reports the model: it is also the
    # gateways' "is this model served" check, with no read of its own.
    routing = await submit_sql.read_routing(session, request.model, principal.address)
    if require_served and not routing.loaded:
        raise ModelNotServed(f"The model `{request.model}` does not exist or no runner serves it")
    now = deps.clock.now()
    stake = None
    if deps.ledger is not None:
        account = ledger.client_account(principal.address)
        stake = await ledger.require_min_stake(deps.ledger, account, doing="submitting a prompt")
    deadline = body.deadline_seconds or deps.queue_timeout_seconds
    prompt = Prompt(
        creator_address=principal.address,
        model=request.model,
        request=request.to_config(),
        max_price=_max_price(body),
        reserved_price=None,
        reserved=None,
        price=None,
        routed_runner_id=None,
        routed_at=None,
        no_route_reason=None,
        deadline_at=now + timedelta(seconds=deadline),
        input_tokens=None,
        output_tokens=None,
        cost=None,
        usage=None,
        latency_ms=None,
        metered_at=None,
        created_at=now,
    )
    loaded = routing.loaded
    priced = deps.priced and deps.ledger is not None
    price = dispatch.reserve_price([x.serving for x in loaded], dispatch.cap_of(prompt.max_price))
    if priced:
        prompt.reserved_price = price.snapshot()
    # Routed before its task exists: the task is created already offered to that runner.
    choice = dispatch.choose_runner(
        request, dispatch.routing_cap(deps, prompt), loaded, excluded=set()
    )
    dispatch.note_route(deps, prompt, choice)
    staged = internal.stage_internal_task(
        session,
        deps.tasks,
        pending=routing.pending,
        task_type=TaskType.LLM,
        creator=principal.address,
        title=f"llm: {request.model}"[:255],
        config=request.to_config(),
        max_attempts=body.max_attempts or deps.default_max_attempts,
        offer_to=None if choice.serving is None else choice.serving.runner_id,
        push=choice.serving is not None and choice.serving.push,
    )
    task = staged.task
    prompt.id = prompt.task_id = task.id
    if priced and deps.ledger is not None:
        # Held before the rows are written, so the prompt row is written once, with it.
        held = await ledger.reserve_amount(
            session,
            deps.ledger,
            source_type=ledger.PROMPT,
            source_id=str(prompt.id),
            client=principal.address,
            amount=reservation_amount(request, price),
            price_snapshot=price.snapshot(),
            stake=stake,
            what=f"this prompt (up to {request.max_tokens} output tokens of {request.model})",
        )
        prompt.reserved = None if held is None else held.amount
    await submit_sql.insert_submission(
        session, deps.tasks, staged, submit_sql.prompt_values(prompt)
    )
    if choice.serving is None:
        after_commit(session, deps.route_now.set)
        return _submitted(prompt, task)
    # Its runner's long-poll waiting here answers the claim made now, after the commit.
    claim = await handoff.hand_over(session, deps.tasks, task.id, choice.serving.runner_id)
    return _submitted(prompt, task if claim is None else claim.tasks[0])


def _submitted(prompt: Prompt, task: Any) -> PromptRow:
    return PromptRow(
        prompt,
        task.status,
        task.runner_id,
        task.target_runner_id,
        task.attempts,
        task.max_attempts,
        task.last_error,
        task.started_at,
        task.completed_at,
        None,
        None,
    )


async def read_prompt_now(db: Database, principal: Principal, prompt_id: uuid.UUID) -> PromptRow:
    """The caller's prompt (an operator's: any; a runner's: the one it holds), read as one
    statement outside any unit of work (a GET, a ?wait re-check): no transaction to open and
    close around it."""
    async with db.lookup() as conn:
        row = await repo.row_once(conn, prompt_id)
    return _visible(row, principal, prompt_id)


def _visible(row: PromptRow | None, principal: Principal, prompt_id: uuid.UUID) -> PromptRow:
    if row is None:
        raise PromptNotFound(f"prompt {prompt_id} not found")
    p = row.prompt
    mine = p.creator_address == principal.address or principal.is_admin
    holds = principal.runner_id is not None and principal.runner_id == row.runner_id
    if not (mine or holds):
        raise PromptNotFound(f"prompt {prompt_id} not found")
    return row


async def wait_for_prompt(
    db: Database,
    hub: EventHub,
    principal: Principal,
    prompt_id: uuid.UUID,
    seconds: float,
    *,
    recheck_seconds: float,
    stopping: Callable[[], bool] = lambda: False,
    unfinished: bool = False,
    deps: LlmDeps | None = None,
) -> PromptRow:
    """The prompt once it has finished, or as it is after ``seconds``. No connection is held
    while waiting: the events of the prompt's own task wake this waiter (not every event of
    its creator: a client with many prompts in flight would re-read each of them on every
    event), and a re-check every ``recheck_seconds`` covers a wake-up missed on another
    replica. With ``deps``, a prompt back in the queue because its backend refused the request
    is ended here at once (:func:`end_refused`) rather than at the prompts job's next tick."""
    deadline = time.monotonic() + seconds
    with hub.watch_resource(str(prompt_id)) as watch:  # a prompt's id is its task's
        if unfinished:
            # The caller has just seen it unfinished (its own submit): nothing to read until
            # an event of its task comes, or a short while (its events may have been published
            # between the submit's commit and this watch).
            await watch.wait(min(seconds, recheck_seconds, FIRST_READ_AFTER_SECONDS))
        while True:
            row = await read_prompt_now(db, principal, prompt_id)
            remaining = deadline - time.monotonic()
            if prompt_status(row.status) in FINISHED or remaining <= 0 or stopping():
                return row
            if deps is not None and _refused_in_queue(row) and await end_refused(db, deps, row):
                continue  # read it ended
            await watch.wait(min(remaining, recheck_seconds))


async def list_prompts(
    session: AsyncSession, principal: Principal, limit: int, offset: int
) -> tuple[list[PromptRow], int]:
    """The caller's prompts, newest first."""
    return await repo.list_rows(session, principal.address, limit, offset)


async def complete_prompt(
    db: Database, deps: LlmDeps, runner_id: uuid.UUID, prompt_id: uuid.UUID, body: PromptComplete
) -> None:
    """The original runner's completion: the same unit of work as the task API's complete
    (claim-token fenced, same-token repeats answer again, escrow closed with it)."""
    async with db.lookup() as conn:
        task_id = await repo.task_of(conn, prompt_id)
    if task_id is None:
        raise PromptNotFound(f"prompt {prompt_id} not found")
    usage = dict(body.usage)
    counts = {
        "input_tokens": body.input_tokens if body.input_tokens is not None else body.prompt_tokens,
        "output_tokens": next(
            (
                v
                for v in (body.output_tokens, body.completion_tokens, body.response_tokens)
                if v is not None
            ),
            None,
        ),
        "inference_time_ms": body.inference_time_ms,
    }
    usage.update({k: v for k, v in counts.items() if v is not None})
    output = body.response if body.response is not None else body.output
    report = Report(output=output, usage=usage)
    await hotpath.complete_task(db, deps.tasks, runner_id, task_id, body.claim_token, report)


async def fail_broken_stream(
    db: Database,
    deps: LlmDeps,
    runner_id: uuid.UUID,
    task_id: uuid.UUID,
    claim_token: str,
    delivered: str,
    deltas: int,
) -> None:
    """A runner's stream broke off (its connection was lost before the body's end) after it
    relayed ``delivered`` to the client: the runner was killed, or is cut off and cannot be
    relied on to report. Fail the attempt as its own ``fail`` report would, fenced by its claim
    token, with the relayed text as the partial output: the prompt ends ``failed`` (never
    re-run: the client saw part of an answer) and that text is billed once, its token counts
    estimated. A later report of the same claim is answered idempotently (``fail``) or refused
    (``complete``), so nothing posts twice."""
    reason = f"the runner's stream broke off after {deltas} token deltas (connection lost)"
    async with db.transaction() as session:
        await lifecycle.fail(
            session, deps.tasks, runner_id, task_id, claim_token,
            error=reason, exit_code=None, output=delivered, usage={},
        )  # fmt: skip


async def cancel_for_gone_client(
    session: AsyncSession,
    deps: LlmDeps,
    principal: Principal,
    prompt_id: uuid.UUID,
    delivered: str | None,
) -> None:
    """Cancel a prompt because its gateway client went away, and say so with the prompt
    (:func:`billing.mark_client_gone`, in the same transaction): the partial work its runner
    reports then is billed, for a stream at most ``delivered``, the text relayed to the client
    before it left (None: the prompt does not stream). The task row is locked first, as a
    runner's report locks it, then the prompt's."""
    await tasks_service.cancel_task(session, deps.tasks, principal, prompt_id)
    prompt = await repo.get(session, prompt_id, lock=True)
    if prompt is not None:
        mark_client_gone(prompt, delivered)
        await session.flush()


async def list_models(session: AsyncSession) -> list[ModelSummary]:
    """Every model reported by an online runner, aggregated (a model goes with its last
    runner)."""
    offers = []
    for runner_id, m in await repo.model_reports(session):
        details = m.details or {}
        price = dispatch.price_of(details)
        context = details.get("context_length")
        quantization = details.get("quantization")
        offers.append(
            ModelOffer(
                runner_id=str(runner_id),
                model=m.model_name,
                loaded=m.is_loaded,
                input_price_per_1k=price.input_per_1k,
                output_price_per_1k=price.output_per_1k,
                context_length=context if isinstance(context, int) else None,
                max_output_tokens=m.max_tokens,
                quantization=quantization if isinstance(quantization, str) else None,
            )
        )
    return aggregate_models(offers)


async def metrics_for(
    session: AsyncSession,
    principal: Principal,
    period: Period,
    since: datetime | None,
    until: datetime | None,
) -> BillingMetrics:
    """The caller's prompts in [since, until): every prompt is a request; tokens, cost and
    latency come from the completed ones."""
    usages = []
    for row in await repo.usage_rows(session, principal.address, since, until):
        billed = metered(row)
        usages.append(
            PromptUsage(
                model=row.prompt.model,
                created_at=row.prompt.created_at,
                input_tokens=0 if billed is None else billed[0]["input_tokens"],
                output_tokens=0 if billed is None else billed[0]["output_tokens"],
                cost=0 if billed is None else billed[1],
                latency_ms=None if billed is None else billed[2],
            )
        )
    return billing_metrics(usages, period)


# -- the prompts job ----------------------------------------------------------------------------


def deadline_reason(prompt: Prompt) -> str:
    seconds = (prompt.deadline_at - prompt.created_at).total_seconds()
    shown = f"{seconds:g}"
    reason = f"no runner with model {prompt.model} became available within {shown} s"
    if prompt.no_route_reason:
        try:
            why = NoRoute(NoRouteReason(prompt.no_route_reason), _NO_COUNTS).message
        except ValueError:
            why = prompt.no_route_reason
        reason += f" ({why})"
    elif prompt.routed_runner_id is not None:
        # Routed, never claimed: the runner was busy, or stopped without going offline (a
        # crashed runner counts as online until its heartbeats are overdue).
        reason += (
            f" (routed to runner {prompt.routed_runner_id}, which did not take it: busy, or"
            " not answering although not yet offline)"
        )
    return reason


async def expire_overdue(session: AsyncSession, deps: LlmDeps, now: datetime) -> int:
    """Queued prompts past their deadline fail with the reason (their escrow is released)."""
    n = 0
    for prompt in await repo.past_deadline(session, now, JOB_BATCH):
        if await internal.end_internal_task(
            session, deps.tasks, prompt.task_id, deadline_reason(prompt)
        ):
            n += 1
    return n


async def route_queued(
    session: AsyncSession, deps: LlmDeps, now: datetime, stalled: set[str] | None = None
) -> int:
    """Route queued prompts that no claiming runner holds (first routing, failover after a
    failure or a lost runner). One whose last attempt's backend refused the request ends with
    that failure instead (:func:`refusal`). ``stalled`` collects the models of prompts left
    queued because every runner serving them is at capacity."""
    n = 0
    offered_before = now - timedelta(seconds=deps.offer_seconds)
    for prompt, last_error, target in await repo.unrouted(session, now, offered_before, JOB_BATCH):
        if refusal(last_error) is not None:
            assert last_error is not None
            if await internal.end_internal_task(session, deps.tasks, prompt.task_id, last_error):
                n += 1
            continue
        request = parse_llm_config(prompt.request)
        if await dispatch.route_prompt(session, deps, prompt, request, avoid=target):
            n += 1
        elif stalled is not None and prompt.no_route_reason == NoRouteReason.AT_CAPACITY.value:
            stalled.add(prompt.model)
    return n


async def slot_holders(session: AsyncSession, models: set[str]) -> list[uuid.UUID]:
    """The tasks holding the slots of the claiming runners that serve ``models`` (their active
    claims, and prompts routed to them not claimed yet): when one of them ends, a slot frees
    for a prompt of those models left queued (at most ``SLOT_WATCH_LIMIT``)."""
    return await repo.slot_holders(session, sorted(models), SLOT_WATCH_LIMIT)


async def meter_completed(session: AsyncSession, deps: LlmDeps, now: datetime) -> int:
    """What no closer metered (pricing off): completions (usage, cost 0, latency, EWMA). What a
    stream that broke off delivered is metered in its failing transaction (``prompt.failed``)."""
    items = await repo.to_meter(session, JOB_BATCH)
    await record_completions(session, items, now, deps.tasks.events)
    return len(items)

"""/api/v1/llm (and the /api/llm mirror): the original API's LLM endpoints, working."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from parity.api.deps import (
    ContainerDep,
    CurrentPrincipal,
    CurrentRunner,
    ReadSession,
    WalletPrincipal,
    get_idempotency,
)
from parity.api.jsonbody import JsonRoute
from parity.api.pagination import BIGINT_MAX
from parity.core.llm.metrics import Period, UsageTotals
from parity.db.types import UtcDatetime
from parity.errors import InvalidInput
from parity.llm import service
from parity.llm.schemas import (
    BillingMetricsRead,
    ModelRead,
    ModelsRead,
    ModelTotalsRead,
    PeriodTotalsRead,
    PromptComplete,
    PromptCreate,
    PromptList,
    PromptRead,
    TotalsRead,
)
from parity.llm.views import FINISHED, prompt_read

router = APIRouter(route_class=JsonRoute, tags=["llm"])
MAX_WAIT_SECONDS = 30.0


@router.get("/llm/models", response_model=ModelsRead)
async def list_models(_: CurrentPrincipal, session: ReadSession) -> ModelsRead:
    """Models of the online runners: how many runners report each, whether one has it loaded
    (only those are routed to), the lowest price per 1,000 tokens, the largest context."""
    models = [
        ModelRead(
            model_name=m.model,
            is_loaded=m.loaded,
            max_tokens=m.max_output_tokens,
            runner_count=m.runner_count,
            loaded_runner_count=m.loaded_runner_count,
            lowest_price_per_1k_input=str(m.lowest_input_price_per_1k),
            lowest_price_per_1k_output=str(m.lowest_output_price_per_1k),
            max_context_length=m.max_context_length,
            quantizations=list(m.quantizations),
        )
        for m in await service.list_models(session)
    ]
    return ModelsRead(models=models, count=len(models))


@router.post(
    "/llm/prompts",
    status_code=202,
    response_model=PromptRead,
    responses={200: {"model": PromptRead, "description": "Finished within `wait` seconds"}},
)
async def submit_prompt(
    request: Request,
    body: PromptCreate,
    principal: WalletPrincipal,
    c: ContainerDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Any:
    """Submit a prompt: 202 with it (`queued`, or `processing` once a runner has it).
    `?wait=S` (30 max) waits up to S seconds for the result without holding a database
    connection: 200 when it finished by then, else 202."""
    dumped: dict[str, Any] | None = None  # `out` as JSON, while it is the submit's answer
    async with c.db.transaction() as session:
        guard = await get_idempotency(request, session, principal, idempotency_key)
        stored = await guard.replay()
        if stored is None:
            out = prompt_read(await service.submit(session, c.llm, principal, body))
            dumped = out.model_dump(mode="json")
            await guard.remember(202, dumped)
    if stored is not None:
        if wait <= 0:
            return JSONResponse(stored.body, status_code=stored.status_code)
        out = PromptRead.model_validate(stored.body)
    if wait > 0 and out.status not in FINISHED:
        row = await service.wait_for_prompt(
            c.db,
            c.event_hub,
            principal,
            out.id,
            wait,
            recheck_seconds=c.settings.long_poll_recheck_seconds,
            stopping=lambda: c.draining,
            unfinished=stored is None,  # just submitted here, as `out` shows it
            deps=c.llm,  # a request its backend refused ends at once, as at the gateways
        )
        out, dumped = prompt_read(row), None
    code = 200 if wait > 0 and out.status in FINISHED else 202
    return JSONResponse(out.model_dump(mode="json") if dumped is None else dumped, status_code=code)


@router.get("/llm/prompts", response_model=PromptList)
async def list_prompts(
    response: Response,
    principal: CurrentPrincipal,
    session: ReadSession,
    limit: Annotated[int, Query(ge=1, le=500)] = 10,
    offset: Annotated[int, Query(ge=0, le=BIGINT_MAX)] = 0,
) -> PromptList:
    """Your prompts, newest first: `{prompts, limit, offset}` as the original API answered,
    plus `total` (also in `X-Total-Count`)."""
    rows, total = await service.list_prompts(session, principal, limit, offset)
    response.headers["X-Total-Count"] = str(total)
    return PromptList(
        prompts=[prompt_read(r) for r in rows], limit=limit, offset=offset, total=total
    )


@router.get("/llm/prompts/{prompt_id}", response_model=PromptRead)
async def get_prompt(
    prompt_id: uuid.UUID, principal: CurrentPrincipal, c: ContainerDep
) -> PromptRead:
    """Your prompt (someone else's is 404; the runner holding it may read it)."""
    return prompt_read(await service.read_prompt_now(c.db, principal, prompt_id))


@router.post("/llm/prompts/{prompt_id}/complete", response_model=PromptRead)
async def complete_prompt(
    prompt_id: uuid.UUID,
    body: PromptComplete,
    runner_id: CurrentRunner,
    principal: CurrentPrincipal,
    c: ContainerDep,
) -> PromptRead:
    """The claiming runner reports the answer (the original runner's call): the same
    completion as `POST /runners/tasks/{id}/complete`, fenced by the claim token; repeating
    it with the same token answers again without billing twice."""
    await service.complete_prompt(c.db, c.llm, runner_id, prompt_id, body)
    return prompt_read(await service.read_prompt_now(c.db, principal, prompt_id))


def _totals(t: UsageTotals) -> dict[str, Any]:
    return {
        "requests": t.requests,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "total_tokens": t.input_tokens + t.output_tokens,
        "cost": str(t.cost),
        "average_latency_ms": t.average_latency_ms,
        "p95_latency_ms": t.p95_latency_ms,
    }


@router.get("/llm/billing/metrics", response_model=BillingMetricsRead)
async def billing_metrics(
    principal: CurrentPrincipal,
    session: ReadSession,
    period: Annotated[str, Query(description="hour | day | week | month")] = "day",
    since: Annotated[UtcDatetime | None, Query(description="Prompts created at or after")] = None,
    until: Annotated[UtcDatetime | None, Query(description="Prompts created before")] = None,
) -> BillingMetricsRead:
    """Your prompts: requests, input/output tokens, cost (base units), average and p95
    latency (submitted → completed), in total, by model and by UTC period."""
    try:
        bucket = Period(period)
    except ValueError:
        raise InvalidInput("period", "must be one of hour, day, week, month") from None
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(name, "must carry a timezone (UTC ISO-8601)")
    if since is not None and until is not None and until < since:
        raise InvalidInput("until", "must not be before since (the range is [since, until))")
    m = await service.metrics_for(session, principal, bucket, since, until)
    total = _totals(m.total)
    return BillingMetricsRead(
        period=bucket.value,
        total=TotalsRead(**total),
        by_model=[ModelTotalsRead(model=k, **_totals(v)) for k, v in m.by_model.items()],
        by_period=[PeriodTotalsRead(period_start=s, **_totals(v)) for s, v in m.by_period],
        total_requests=total["requests"],
        total_tokens=total["total_tokens"],
        total_cost=total["cost"],
        avg_inference_time_ms=total["average_latency_ms"],
    )

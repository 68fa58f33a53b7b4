"""Routing a queued prompt to a runner (ARCHITECTURE §4 "LLM routing"): the candidates as
``core.llm.routing`` sees them, its choice confirmed under the runner's row lock, and the
price snapshotted at dispatch. Used at submit and by the prompts job (re-routing after a
failure, or once a runner with the model comes)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.billing.units import AmountError, parse_base_units
from parity.core.llm.metering import LlmPrice, estimate_prompt_tokens
from parity.core.llm.request import LlmRequest
from parity.core.llm.routing import NoRoute, NoRouteReason, PriceCap, RunnerCandidate, route
from parity.llm import repository as repo
from parity.llm.deps import LlmDeps
from parity.llm.models import Prompt
from parity.llm.repository import Serving
from parity.runners import service as runners_service
from parity.tasks import internal

FREE = LlmPrice()


def price_of(details: dict[str, Any]) -> LlmPrice:
    """A runner's reported price for a model (validated at registration; 0 when absent)."""

    def amount(key: str) -> int:
        try:
            return parse_base_units(details.get(key) or "0")
        except (AmountError, TypeError):
            return 0

    return LlmPrice(amount("price_per_1k_input"), amount("price_per_1k_output"))


def runner_price(serving: Serving) -> LlmPrice:
    return price_of(serving.details)


def cap_of(snapshot: dict[str, Any] | None) -> PriceCap | None:
    """A stored ceiling (``{"input_per_1k"?, "output_per_1k"?}``) as routing's cap."""
    if not snapshot:
        return None

    def one(key: str) -> int | None:
        value = snapshot.get(key)
        return None if value is None else int(value)

    return PriceCap(one("input_per_1k"), one("output_per_1k"))


def reserve_price(servings: list[Serving], cap: PriceCap | None) -> LlmPrice:
    """The most a prompt may be billed per 1k tokens, held in escrow at submit and never
    exceeded by routing. Per direction: the highest price among the online runners that report
    the model (so any of them may serve it, failover included), lowered to the client's cap;
    the cap itself when no runner reports the model yet; 0 when neither is known."""
    prices = [runner_price(s) for s in servings]

    def one(highest: int | None, ceiling: int | None) -> int:
        if highest is None:
            return ceiling or 0
        return highest if ceiling is None else min(highest, ceiling)

    return LlmPrice(
        one(
            max((p.input_per_1k for p in prices), default=None),
            None if cap is None else cap.input_per_1k,
        ),
        one(
            max((p.output_per_1k for p in prices), default=None),
            None if cap is None else cap.output_per_1k,
        ),
    )


async def route_prompt(
    session: AsyncSession,
    deps: LlmDeps,
    prompt: Prompt,
    request: LlmRequest,
    servings: list[Serving] | None = None,
) -> bool:
    """Route a queued prompt: write the chosen runner as its task's target (and offer it), or
    remember why no runner fits (``no_route_reason``). True when routed."""
    if servings is None:
        servings = await repo.serving(session, prompt.model)
    by_id = {str(s.runner_id): s for s in servings}
    ids = [s.runner_id for s in servings]
    load = await repo.outstanding(session, ids)
    latency = await repo.latency(session, ids, prompt.model)
    excluded = await repo.exclusions(session, prompt.task_id)
    candidates = [
        RunnerCandidate(
            runner_id=str(s.runner_id),
            model_loaded=s.loaded,
            outstanding=load.get(s.runner_id, 0),
            max_concurrency=s.max_concurrent_tasks,
            latency_ewma_ms=latency.get(s.runner_id),
            input_price_per_1k=runner_price(s).input_per_1k,
            output_price_per_1k=runner_price(s).output_per_1k,
            excluded=s.runner_id in excluded,
        )
        for s in servings
    ]
    # Priced: never above what escrow holds; unpriced: only the client's own cap.
    cap = cap_of(prompt.reserved_price) if deps.priced else cap_of(prompt.max_price)
    routed = route(
        candidates,
        cap=cap,
        input_tokens=estimate_prompt_tokens(request),
        output_tokens=request.max_tokens,
    )
    if isinstance(routed, NoRoute):
        prompt.no_route_reason = routed.reason.value
        await session.flush()
        return False
    for candidate in routed.ranked:
        runner_id = uuid.UUID(candidate.runner_id)
        # Concurrent routings read the same load: confirm the pick under the runner's lock
        # (taken without waiting; a runner another transaction holds is passed over now).
        if not await runners_service.try_lock(session, runner_id):
            continue
        if (await repo.outstanding(session, [runner_id]))[runner_id] >= candidate.max_concurrency:
            continue
        serving = by_id[candidate.runner_id]
        if not await internal.target_internal_task(
            session, deps.tasks, prompt.task_id, runner_id, push=serving.push
        ):
            return False
        prompt.price = (runner_price(serving) if deps.priced else FREE).snapshot()
        prompt.routed_runner_id = runner_id
        prompt.routed_at = deps.clock.now()
        prompt.no_route_reason = None
        await session.flush()
        return True
    prompt.no_route_reason = NoRouteReason.AT_CAPACITY.value
    await session.flush()
    return False

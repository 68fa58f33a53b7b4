"""Routing a queued prompt to a runner (ARCHITECTURE §4 "LLM routing"): the candidates as
``core.llm.routing`` sees them, its choice confirmed under the runner's row lock, and the
price snapshotted at dispatch. Used at submit and by the prompts job (re-routing after a
failure, or once a runner with the model comes)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.billing.units import AmountError, parse_base_units
from parity.core.llm.metering import LlmPrice, estimate_prompt_tokens
from parity.core.llm.request import LlmRequest
from parity.core.llm.routing import NoRoute, PriceCap, RunnerCandidate, route
from parity.llm import repository as repo
from parity.llm.deps import LlmDeps
from parity.llm.models import Prompt
from parity.llm.repository import Loaded, Serving
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


@dataclass(frozen=True)
class Choice:
    """Routing's pick for a prompt: the runner serving it, or why none fits."""

    serving: Serving | None
    reason: str | None


def choose_runner(
    request: LlmRequest,
    cap: PriceCap | None,
    loaded: list[Loaded],
    excluded: set[uuid.UUID],
) -> Choice:
    """Routing over the runners serving the model as they were just read
    (:func:`repository.serving_with_load`). Not confirmed under a lock: concurrent routings may
    both pick a runner's last free slot; the claim is the gate (a runner never holds more than
    its ``max_concurrent_tasks``), so the second prompt waits for that runner's next free slot
    instead of being passed over."""
    candidates = [
        RunnerCandidate(
            runner_id=str(x.serving.runner_id),
            model_loaded=x.serving.loaded,
            outstanding=x.outstanding,
            max_concurrency=x.serving.max_concurrent_tasks,
            latency_ewma_ms=x.latency_ewma_ms,
            input_price_per_1k=runner_price(x.serving).input_per_1k,
            output_price_per_1k=runner_price(x.serving).output_per_1k,
            excluded=x.serving.runner_id in excluded,
        )
        for x in loaded
    ]
    routed = route(
        candidates,
        cap=cap,
        input_tokens=estimate_prompt_tokens(request),
        output_tokens=request.max_tokens,
    )
    if isinstance(routed, NoRoute):
        return Choice(None, routed.reason.value)
    # route() has already left out runners without a free slot (NoRoute at_capacity).
    chosen = next(x.serving for x in loaded if str(x.serving.runner_id) == routed.runner_id)
    return Choice(chosen, None)


def routing_cap(deps: LlmDeps, prompt: Prompt) -> PriceCap | None:
    """Priced: never above what escrow holds; unpriced: only the client's own cap."""
    return cap_of(prompt.reserved_price) if deps.priced else cap_of(prompt.max_price)


def note_route(deps: LlmDeps, prompt: Prompt, choice: Choice) -> None:
    """Write the choice on the prompt: the serving runner and its price snapshotted at
    dispatch, or why it stays queued."""
    if choice.serving is None:
        prompt.no_route_reason = choice.reason
        return
    prompt.price = (runner_price(choice.serving) if deps.priced else FREE).snapshot()
    prompt.routed_runner_id = choice.serving.runner_id
    prompt.routed_at = deps.clock.now()
    prompt.no_route_reason = None


async def route_prompt(
    session: AsyncSession,
    deps: LlmDeps,
    prompt: Prompt,
    request: LlmRequest,
    *,
    avoid: uuid.UUID | None = None,
) -> bool:
    """Route a queued prompt (the prompts job: after a failure, once a runner with the model
    comes, or when the runner it was routed to has not claimed it in time): write the chosen
    runner as its task's target (and offer it), or remember why no runner fits
    (``no_route_reason``). ``avoid`` (the runner that let its offer lapse) is offered it again
    only when no other runner fits: it may be alive and only slow to claim. True when
    routed."""
    loaded = await repo.serving_with_load(session, prompt.model)
    excluded = await repo.exclusions(session, prompt.task_id)
    cap = routing_cap(deps, prompt)
    choice = choose_runner(request, cap, loaded, excluded | {avoid} if avoid else excluded)
    if avoid is not None and choice.serving is None:
        # Offered to it again (the slot it would take is this prompt's own), if it still
        # serves the model; else routed as usual.
        again = next((x.serving for x in loaded if x.serving.runner_id == avoid), None)
        choice = Choice(again, None) if again else choose_runner(request, cap, loaded, excluded)
    if choice.serving is not None and not await internal.target_internal_task(
        session, deps.tasks, prompt.task_id, choice.serving.runner_id, push=choice.serving.push
    ):
        return False
    note_route(deps, prompt, choice)
    await session.flush()
    return choice.serving is not None

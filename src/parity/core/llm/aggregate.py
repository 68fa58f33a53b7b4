"""Model discovery across runners: what ``GET /api/llm/models`` lists.

Input is one plain record per (online runner, model) as the runners reported it at
registration or heartbeat; the caller passes only online runners, so a model disappears with
its last runner. Per model the summary gives:

- ``runner_count``: online runners reporting the model; ``loaded_runner_count``: of those,
  with it loaded; ``loaded``: at least one has it loaded (only those are routed to);
- ``lowest_input_price_per_1k`` / ``lowest_output_price_per_1k``: each the minimum over the
  runners that have it loaded (over all reporting runners when none has), so the two may come
  from different runners: "from X per 1k";
- ``max_context_length`` / ``max_output_tokens``: the largest any runner reports (None when none
  reports one); ``quantizations``: the distinct ones reported, sorted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ModelOffer", "ModelSummary", "aggregate_models"]


@dataclass(frozen=True, slots=True)
class ModelOffer:
    """One runner's report of one model."""

    runner_id: str
    model: str
    loaded: bool
    input_price_per_1k: int = 0
    output_price_per_1k: int = 0
    context_length: int | None = None
    max_output_tokens: int | None = None
    quantization: str | None = None


@dataclass(frozen=True, slots=True)
class ModelSummary:
    model: str
    runner_count: int
    loaded_runner_count: int
    lowest_input_price_per_1k: int
    lowest_output_price_per_1k: int
    max_context_length: int | None
    max_output_tokens: int | None
    quantizations: tuple[str, ...]

    @property
    def loaded(self) -> bool:
        return self.loaded_runner_count > 0


def aggregate_models(offers: Iterable[ModelOffer]) -> list[ModelSummary]:
    """One summary per model name, sorted by name. A runner reporting a model twice counts
    once (its loaded report wins)."""
    by_model: dict[str, dict[str, ModelOffer]] = {}
    for offer in offers:
        runners = by_model.setdefault(offer.model, {})
        seen = runners.get(offer.runner_id)
        if seen is None or (offer.loaded and not seen.loaded):
            runners[offer.runner_id] = offer
    return [_summary(model, list(runners.values())) for model, runners in sorted(by_model.items())]


def _summary(model: str, offers: list[ModelOffer]) -> ModelSummary:
    loaded = [o for o in offers if o.loaded]
    priced = loaded or offers
    contexts = [o.context_length for o in offers if o.context_length is not None]
    outputs = [o.max_output_tokens for o in offers if o.max_output_tokens is not None]
    return ModelSummary(
        model=model,
        runner_count=len(offers),
        loaded_runner_count=len(loaded),
        lowest_input_price_per_1k=min(o.input_price_per_1k for o in priced),
        lowest_output_price_per_1k=min(o.output_price_per_1k for o in priced),
        max_context_length=max(contexts, default=None),
        max_output_tokens=max(outputs, default=None),
        quantizations=tuple(sorted({o.quantization for o in offers if o.quantization})),
    )

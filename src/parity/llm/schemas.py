"""Wire shapes of /api/v1/llm. The original API's fields are kept (``model_name``,
``response``, ``status``, ``created_at``, ``completed_at``; ``{models, count}``; ``{prompts,
limit, offset}``); amounts are decimal strings of base units."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator

from parity.core.llm.request import (
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
    parse_seed,
    parse_stop,
    parse_top_p,
)
from parity.core.tasks.config import ConfigInvalid
from parity.runners.schemas import base_units_or_none
from parity.tasks.schemas import check_usage

_base_units = base_units_or_none


T = TypeVar("T")


def _core(parse: Callable[[object, str], T], raw: object, field: str) -> T:
    """``raw`` read by the core parser the runner also uses; its refusal as pydantic's
    ValueError, so the 422 names the field."""
    try:
        return parse(raw, field)
    except ConfigInvalid as exc:
        raise ValueError(exc.reason) from None


class PromptCreate(BaseModel):
    """``prompt`` (a completion) or ``messages`` (a chat); ``model_name`` or ``model``."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    messages: list[Any] | None = None
    model_name: str | None = None
    model: str | None = None
    max_tokens: int | None = Field(
        None, description="Output tokens at most (LLM_DEFAULT_MAX_TOKENS)"
    )
    temperature: float | None = None
    top_p: float | None = Field(None, description="Nucleus sampling mass, 0 to 1")
    seed: int | None = Field(None, description="Sampling seed (a signed 64-bit integer)")
    stop: list[str] | None = Field(
        None,
        description=f"Up to {MAX_STOP_SEQUENCES} stop sequences (a string or a list), each "
        f"non-empty and at most {MAX_STOP_CHARS} characters: the answer ends before the first",
    )
    stream: StrictBool | None = Field(None, description="Not on this endpoint (use ?wait=)")
    max_price_per_1k_input: str | None = Field(
        None, description="Most you pay per 1,000 input tokens (base units)"
    )
    max_price_per_1k_output: str | None = Field(
        None, description="Most you pay per 1,000 output tokens (base units)"
    )
    deadline_seconds: float | None = Field(
        None, gt=0, le=86400, description="Seconds to wait for a runner (LLM_QUEUE_TIMEOUT_SECONDS)"
    )
    max_attempts: int | None = Field(None, ge=1, le=10)
    # The original API's identity fields: accepted and ignored (identity is the token).
    creator_address: str | None = None
    client_id: str | None = None

    _prices = field_validator("max_price_per_1k_input", "max_price_per_1k_output", mode="before")(
        _base_units
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, raw: object) -> list[str] | None:
        return list(_core(parse_stop, raw, "stop")) or None

    @field_validator("top_p", mode="before")
    @classmethod
    def _top_p(cls, raw: object) -> float | None:
        return _core(parse_top_p, raw, "top_p")

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, raw: object) -> int | None:
        return _core(parse_seed, raw, "seed")


class PriceRead(BaseModel):
    input_per_1k: str
    output_per_1k: str


class UsageRead(BaseModel):
    """What the prompt is billed for, and how it was metered."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    reported_input_tokens: int | None
    reported_output_tokens: int | None
    input_estimate: int
    output_estimate: int
    flags: list[str] = Field(
        description="input/output_tokens_estimated (not reported), _disagree (far from the "
        "estimate: flagged for review), _capped (above max_tokens or the input bound)"
    )
    flagged: bool
    partial: bool = Field(
        False, description="billed for what a stream delivered before it broke off"
    )


class PromptRead(BaseModel):
    id: uuid.UUID
    task_id: uuid.UUID
    status: str = Field(description="queued | processing | completed | failed")
    model_name: str
    request: dict[str, Any]
    response: str = Field(
        description="The answer; a failed prompt billed for part of a streamed answer "
        "(`usage.partial`) shows that part (the text its client received, else the runner's "
        "partial output)"
    )
    error: str | None
    runner_id: uuid.UUID | None = Field(description="The runner holding it, else routed to")
    attempts: int
    max_attempts: int
    usage: UsageRead | None = Field(
        description="The tokens billed (metered alike when pricing is off): a completion's, "
        "or those of the part a stream delivered before it broke off (`partial`); null when "
        "none are"
    )
    cost: str | None = Field(description="What it is billed, token base units (decimal string)")
    price: PriceRead | None = Field(description="The serving runner's price at dispatch")
    max_price: dict[str, str] | None
    reserved: str | None
    latency_ms: float | None
    deadline_at: datetime
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class PromptList(BaseModel):
    prompts: list[PromptRead]
    limit: int
    offset: int
    total: int


class PromptComplete(BaseModel):
    """The original runner's body (``response``, ``prompt_tokens``, ``response_tokens``,
    ``inference_time_ms``) or the task API's (``output``, ``usage``), with the claim token."""

    model_config = ConfigDict(extra="ignore")
    claim_token: str = Field(min_length=10, max_length=200)
    response: str | None = Field(None, max_length=32 * 1024 * 1024)
    output: str | None = Field(None, max_length=32 * 1024 * 1024)
    usage: Annotated[dict[str, Any], AfterValidator(check_usage)] = Field(default_factory=dict)
    prompt_tokens: int | None = Field(None, ge=0)
    response_tokens: int | None = Field(None, ge=0)
    completion_tokens: int | None = Field(None, ge=0)
    input_tokens: int | None = Field(None, ge=0)
    output_tokens: int | None = Field(None, ge=0)
    inference_time_ms: float | None = Field(None, ge=0)


class ModelRead(BaseModel):
    model_name: str
    is_loaded: bool = Field(description="Loaded on at least one online runner (routable)")
    max_tokens: int | None = Field(description="The largest max_tokens a runner reports")
    runner_count: int
    loaded_runner_count: int
    lowest_price_per_1k_input: str
    lowest_price_per_1k_output: str
    max_context_length: int | None
    quantizations: list[str]


class ModelsRead(BaseModel):
    models: list[ModelRead]
    count: int


class TotalsRead(BaseModel):
    requests: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost: str
    average_latency_ms: float | None
    p95_latency_ms: float | None


class ModelTotalsRead(TotalsRead):
    model: str


class PeriodTotalsRead(TotalsRead):
    period_start: datetime


class BillingMetricsRead(BaseModel):
    period: str
    total: TotalsRead
    by_model: list[ModelTotalsRead]
    by_period: list[PeriodTotalsRead] = Field(description="Oldest first (UTC buckets)")
    # The original API's intended fields.
    total_requests: int
    total_tokens: int
    total_cost: str
    avg_inference_time_ms: float | None

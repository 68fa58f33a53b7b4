from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    field_validator,
)

from parity.core.billing.units import AmountError, parse_base_units


def base_units_or_none(v: object) -> str | None:
    """A token amount field: a decimal string (or int) of base units, normalised; floats are
    refused (amounts are exact)."""
    if v is None:
        return None
    if not isinstance(v, str | int):
        raise ValueError("must be a decimal string of base units")
    try:
        return str(parse_base_units(v))
    except AmountError as exc:
        raise ValueError(str(exc)) from None


class Capabilities(BaseModel):
    model_config = ConfigDict(extra="ignore")
    cpu_cores: float = Field(0, ge=0, le=4096)
    memory_mb: int = Field(0, ge=0, le=64 * 1024 * 1024)
    gpus: int = Field(0, ge=0, le=256)
    docker: StrictBool = False  # true or false, not "yes" or 1
    fl: StrictBool = False
    # Runner-local FL datasets by name (the data never leaves the runner).
    fl_datasets: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=64
    )


def _unset(value: object) -> bool:
    return value is None


class ModelInfo(BaseModel):
    """A model a runner reports. Prices are base units per 1,000 tokens as decimal strings
    (floats refused); other keys a runner sends are kept as they are."""

    model_config = ConfigDict(extra="allow")
    model_name: str = Field(min_length=1, max_length=200)
    is_loaded: bool = True
    max_tokens: int = Field(4096, ge=1, le=10_000_000)
    # Optional facts, shown only when reported (the shape is otherwise unchanged).
    context_length: int | None = Field(None, ge=1, le=100_000_000, exclude_if=_unset)
    quantization: str | None = Field(None, max_length=64, exclude_if=_unset)
    price_per_1k_input: str | None = Field(None, exclude_if=_unset)
    price_per_1k_output: str | None = Field(None, exclude_if=_unset)

    @field_validator("price_per_1k_input", "price_per_1k_output", mode="before")
    @classmethod
    def _base_units(cls, v: object) -> str | None:
        return base_units_or_none(v)


class RunnerRegister(BaseModel):
    # wallet_address and status of the old runner are accepted and ignored: identity is the token.
    model_config = ConfigDict(extra="ignore")
    device_id: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._:-]+$")
    webhook: str | None = Field(None, max_length=2048)
    capabilities: Capabilities = Field(default_factory=Capabilities)
    max_concurrent_tasks: int = Field(1, ge=1, le=256)
    labels: dict[str, str] = Field(default_factory=dict)
    models: list[ModelInfo] = Field(
        default_factory=list,
        validation_alias=AliasChoices("models", "model_capabilities"),
        max_length=500,
    )
    runner_version: str | None = Field(None, max_length=40)


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # "busy" from the old runner is read as online: busy is derived by the server.
    status: Literal["online", "draining", "offline", "busy"] = "online"
    cpu_usage: float | None = Field(None, ge=0, le=1)
    memory_usage: float | None = Field(None, ge=0, le=1)
    claims: list[str] = Field(default_factory=list, max_length=1000)
    models: list[ModelInfo] | None = Field(
        None, validation_alias=AliasChoices("models", "model_capabilities"), max_length=500
    )


class HeartbeatAnswer(BaseModel):
    revoked: list[str] = Field(description="Claim tokens that no longer hold any task")
    cancel: list[uuid.UUID] = Field(description="Tasks whose cancellation was requested")
    renewed: list[uuid.UUID]
    lease_seconds: float


class RunnerRead(BaseModel):
    id: uuid.UUID
    device_id: str
    owner_address: str
    wallet_address: str
    status: str
    reported_status: str
    webhook: str | None
    capabilities: Capabilities
    max_concurrent_tasks: int
    labels: dict[str, Any]
    models: list[ModelInfo]
    active_claims: int
    runner_version: str | None
    cpu_usage: float | None
    memory_usage: float | None
    last_heartbeat: datetime
    banned: bool
    created_at: datetime
    updated_at: datetime


class WebhookSet(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str = Field(min_length=1, max_length=2048)


class WebhookSetRead(BaseModel):
    id: uuid.UUID
    url: str
    webhook_secret: str


class RunnerStats(BaseModel):
    total: int
    online: int
    busy: int
    draining: int
    offline: int
    banned: int
    active_claims: int
    capacity: Capabilities
    pending_tasks: int
    running_tasks: int

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator

from parity.core.storage.multiformats import Cid, CidError
from parity.db.types import UtcDatetime


class ResourcesIn(BaseModel):
    """Requirements; the keys equal the runner capability keys."""

    model_config = ConfigDict(extra="forbid")
    cpu_cores: float = Field(0, ge=0, le=1024)
    memory_mb: int = Field(0, ge=0, le=16 * 1024 * 1024)
    gpus: int = Field(0, ge=0, le=64)
    docker: StrictBool = False  # true or false, not "yes" or 1


class TaskCreate(BaseModel):
    # Legacy fields of the original API (reward, creator_id, creator_address) are ignored.
    model_config = ConfigDict(extra="ignore")
    title: str = Field(min_length=1, max_length=255)
    description: str = Field("", max_length=10000)
    type: Literal["command", "docker"] = "command"
    config: dict[str, Any] | None = None
    environment: dict[str, Any] | None = Field(None, description="Legacy {type, config}")
    image: str | None = Field(None, max_length=512, description="Legacy: docker image name")
    resources: ResourcesIn | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="Required runner labels")
    max_attempts: int = Field(3, ge=1, le=20)
    priority: int = Field(0, ge=-1000, le=1000)
    not_before: UtcDatetime | None = None
    timeout_seconds: int | None = Field(None, ge=1, le=86400)


# The fields of a PUT whose null would mean nothing: a field left out keeps its value, and
# null is refused by name rather than read as "unchanged" (only `not_before: null` has a
# meaning: available now).
_NOT_NULL = (
    "title",
    "description",
    "config",
    "resources",
    "labels",
    "max_attempts",
    "priority",
    "timeout_seconds",
)


class TaskUpdate(BaseModel):
    """Fields to change on a pending task: a field left out keeps its value; null is refused
    except for ``not_before`` (null: available now)."""

    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(None, min_length=1, max_length=255)
    description: str | None = Field(None, max_length=10000)
    config: dict[str, Any] | None = None
    resources: ResourcesIn | None = None
    labels: dict[str, str] | None = None
    max_attempts: int | None = Field(None, ge=1, le=20)
    priority: int | None = Field(None, ge=-1000, le=1000)
    not_before: UtcDatetime | None = Field(None, description="null: available now")
    timeout_seconds: int | None = Field(None, ge=1, le=86400)

    @field_validator(*_NOT_NULL, mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must not be null (leave the field out to keep its value)")
        return value


class TaskRead(BaseModel):
    """The original API's task shape plus the fields it lacked."""

    id: uuid.UUID
    title: str
    description: str
    type: str
    status: str
    config: dict[str, Any]
    environment: dict[str, Any] | None
    creator_address: str
    creator_device_id: str | None = None
    runner_id: uuid.UUID | None
    nonce: str
    image_hash: str | None = None
    command_hash: str | None = None
    resources: ResourcesIn
    labels: dict[str, Any]
    priority: int
    timeout_seconds: int | None
    attempts: int
    releases: int = Field(0, description="Claims given back untouched (not counted as failures)")
    max_attempts: int
    available_at: datetime
    target_runner_id: uuid.UUID | None
    last_error: str | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    waiting_for: str | None = Field(
        None,
        description="On a pending task's own read (GET /tasks/{id}): why no runner can take it "
        "now, when no online runner is big enough for it (it stays pending until one is)",
    )


class TaskStatusRead(BaseModel):
    id: uuid.UUID
    status: str
    attempts: int
    max_attempts: int
    runner_id: uuid.UUID | None
    last_error: str | None
    updated_at: datetime


class ClaimRead(BaseModel):
    task: TaskRead
    claim_token: str
    attempt: int
    lease_seconds: float
    lease_expires_at: datetime


# An exit code as a process reports it (a POSIX status, a negative signal, a Windows NTSTATUS):
# any 32-bit integer, the width it is stored in.
ExitCode = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]


class ClaimBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    claim_token: str = Field(min_length=10, max_length=200)


USAGE_KEYS = 64
# How long an accepted completion waited on its runner to get through (not billed).
REPORT_DELAY = "report_delay_ms"
USAGE_TEXT = 256
USAGE_NUMBER = 1e15


def check_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """A run's usage as a runner reports it: a flat object of at most 64 figures (numbers,
    short texts, booleans, nulls). Token counts (``*_tokens``) are whole and not negative:
    prompts are billed by them; so is ``report_delay_ms`` (how long an accepted completion
    waited on its runner to get through: not billed)."""
    if len(usage) > USAGE_KEYS:
        raise ValueError(f"at most {USAGE_KEYS} entries")
    for key, value in usage.items():
        if len(key) > 64:
            raise ValueError(f"key {key[:64]!r}... is longer than 64 characters")
        if key == REPORT_DELAY and not (
            isinstance(value, int) and not isinstance(value, bool) and value >= 0
        ):
            raise ValueError(f"{key}: must be a whole number of milliseconds, not negative")
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, str):
            if len(value) > USAGE_TEXT:
                raise ValueError(f"{key}: text longer than {USAGE_TEXT} characters")
            continue
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{key}: must be a finite number, a short text, a boolean or null")
        if abs(value) > USAGE_NUMBER:
            raise ValueError(f"{key}: must be at most {USAGE_NUMBER:g} in size")
        if key.endswith("_tokens") and (value < 0 or value != int(value)):
            raise ValueError(f"{key}: must be a whole number of tokens, not negative")
    return usage


def _check_output_cid(text: str | None) -> str | None:
    """A CID of the content store (where the runner put the whole output), or null."""
    if text is None:
        return None
    try:
        Cid.parse(text)
    except CidError as exc:
        raise ValueError(f"not a CID: {exc}") from None
    return text


class CompleteBody(ClaimBody):
    output: str | None = Field(None, max_length=32 * 1024 * 1024)
    output_cid: Annotated[str | None, AfterValidator(_check_output_cid)] = Field(
        None, max_length=120
    )
    exit_code: ExitCode | None = None
    error: str | None = Field(None, max_length=65536)
    result_hash: str | None = Field(None, max_length=128)
    usage: Annotated[dict[str, Any], AfterValidator(check_usage)] = Field(default_factory=dict)


class FailBody(ClaimBody):
    error: str = Field(min_length=1, max_length=65536)
    exit_code: ExitCode | None = None
    # What the run delivered before it broke off (an llm task's partial text and token counts).
    output: str | None = Field(None, max_length=32 * 1024 * 1024)
    usage: Annotated[dict[str, Any], AfterValidator(check_usage)] = Field(default_factory=dict)


class LogBody(ClaimBody):
    seq: int = Field(ge=0, le=10_000_000)
    lines: list[str] = Field(max_length=10000)


class LogAppended(BaseModel):
    accepted: bool
    truncated: bool
    stored_bytes: int


class LeaseRead(BaseModel):
    lease_seconds: float
    lease_expires_at: datetime
    cancel_requested: bool


class LogLine(BaseModel):
    attempt: int
    seq: int
    lines: list[str]
    created_at: datetime


class LogsRead(BaseModel):
    task_id: uuid.UUID
    items: list[LogLine]
    next_after: int | None
    truncated: bool


class AttemptRead(BaseModel):
    attempt: int
    runner_id: uuid.UUID
    claimed_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    outcome: str | None
    exit_code: int | None
    error: str | None


class ResultRead(BaseModel):
    id: uuid.UUID
    task_id: uuid.UUID
    attempt: int
    runner_id: uuid.UUID
    output: str | None
    output_cid: str | None
    exit_code: int | None
    error: str | None
    result_hash: str | None
    usage: dict[str, Any]
    execution_time_seconds: float | None
    created_at: datetime


class RewardRead(BaseModel):
    task_id: uuid.UUID
    reward: str | None = Field(
        description="What the runner earns, in token base units (decimal string)"
    )
    price: str | None = Field(description="What the client pays (reward + fee), base units")
    fee: str | None = Field(description="The protocol's fee, base units")
    reserved: str | None = Field(description="The escrow held for the task, base units")
    paid: bool
    status: str = Field(
        description="not_priced | reserved | released | unsettled | settling | paid"
    )
    message: str
    settlements: list[dict[str, Any]] = Field(
        default_factory=list, description="The on-chain payments (payee, status, tx_hash)"
    )

"""Answers that combine the registry with the runner's work."""

from __future__ import annotations

from pydantic import BaseModel, Field

from parity.runners.schemas import RunnerRead
from parity.tasks.schemas import ClaimRead


class RunnerRegistered(BaseModel):
    runner: RunnerRead
    runner_token: str
    webhook_secret: str | None = Field(
        None, description="Verifies the server's pushes to this runner (shown at registration)"
    )
    claims: list[ClaimRead] = Field(
        description="Claims this runner still holds, with fresh claim tokens (same attempts)"
    )

"""What the LLM services need, built once from settings by the container."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from parity.tasks.deps import OnTaskRows, TaskDeps


@dataclass(frozen=True)
class LlmDeps(OnTaskRows):
    tasks: TaskDeps
    queue_timeout_seconds: float  # LLM_QUEUE_TIMEOUT_SECONDS: a prompt's default deadline
    default_max_tokens: int  # LLM_DEFAULT_MAX_TOKENS
    default_max_attempts: int = 3
    offer_seconds: float = 10.0  # LLM_OFFER_SECONDS: routed, not claimed by then → routed again
    # Set after a commit that left a prompt unrouted: the prompts job routes it at once instead
    # of at its next tick (a runner row another transaction held is usually free again).
    route_now: asyncio.Event = field(default_factory=asyncio.Event, compare=False)

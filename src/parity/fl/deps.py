"""What the federated-learning services need, built once from settings by the container."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from parity.storage.ports import ContentStore
from parity.tasks.deps import OnTaskRows, TaskDeps


@dataclass(frozen=True)
class FLDeps(OnTaskRows):
    tasks: TaskDeps
    store: ContentStore
    round_timeout_seconds: float  # FL_ROUND_TIMEOUT: a round's deadline unless the session sets one
    max_update_json_bytes: int = 8 * 1024 * 1024  # the README's JSON update form, per update
    max_krum_updates: int = 200  # Krum is O(n^2 * d): refuse sessions that could exceed it
    # Set after a commit that may let a round close (its last update arrived, a task ended): the
    # rounds job closes and aggregates it at once instead of at its next tick.
    rounds_now: asyncio.Event = field(default_factory=asyncio.Event, compare=False)

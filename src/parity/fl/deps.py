"""What the federated-learning services need, built once from settings by the container."""

from __future__ import annotations

import asyncio
import uuid
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
    # Rounds named by :meth:`wake`, which the job closes and aggregates before anything else;
    # and whether a wake asked for the job's whole pass (its sweeps) as well.
    due_rounds: set[uuid.UUID] = field(default_factory=set, compare=False)
    sweep_requested: asyncio.Event = field(default_factory=asyncio.Event, compare=False)

    def wake(self, round_id: uuid.UUID | None = None) -> None:
        """Wake the rounds job: for that round (its last update has committed), or, without
        one, for a whole pass (a SecAgg+ stage may have completed)."""
        if round_id is None:
            self.sweep_requested.set()
        else:
            self.due_rounds.add(round_id)
        self.rounds_now.set()

    def take_due(self) -> tuple[list[uuid.UUID], bool]:
        """The rounds woken for since the last call, and whether a whole pass was asked for."""
        due, sweep = sorted(self.due_rounds), self.sweep_requested.is_set()
        self.due_rounds.clear()
        self.sweep_requested.clear()
        return due, sweep

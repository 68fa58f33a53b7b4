"""The shape of ``GET /api/status`` (documented in the OpenAPI schema through these models).

The status page is public: it shows counts and backend names only, never an account, a runner
or a task."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from parity.llm.streams import BusKind


class RunnerCounts(BaseModel):
    """Runners by the status the runner list shows; ``busy`` is derived (online with a claim),
    a banned runner counts as ``offline``."""

    online: int
    busy: int
    draining: int
    offline: int


class TaskCounts(BaseModel):
    """Tasks by status; every status is present, zeros included."""

    pending: int
    assigned: int
    running: int
    completed: int
    failed: int
    cancelled: int
    cancel_requested: int


class Counts(BaseModel):
    accounts: int
    runners: RunnerCounts
    tasks: TaskCounts


class QueueDepth(BaseModel):
    pending: int = Field(description="tasks waiting for a runner")
    ready: int = Field(
        description="pending tasks claimable now (not held back by a retry back-off or not_before)"
    )
    oldest_pending_age_seconds: float | None = Field(
        description="seconds since the oldest pending task was created; null when none is pending"
    )


class Backends(BaseModel):
    database: str = Field(description="sqlite or postgresql")
    content_store: str
    chain: str = Field(description="off, ok, wrong_chain, no_contract or unreachable")
    wakeups: Literal["postgres-notify", "in-process"]
    wakeup_peers: int = Field(description="other replicas heard on the wake-up relay")
    streams: BusKind = Field(
        description="how LLM token deltas reach other replicas: redis or nats (STREAM_BUS_URL), "
        "or not"
    )


class ConnectionsRead(BaseModel):
    open: int = Field(description="client connections open on this server process now")
    max: int = Field(description="SERVER_MAX_CONNECTIONS in force (or derived at start)")
    refused: int = Field(
        description="requests answered 503 server_busy and connections closed unanswered "
        "since start"
    )


class StatusRead(BaseModel):
    service: str
    version: str
    uptime_seconds: float
    mode: Literal["embedded", "postgresql"]
    counts: Counts
    queue: QueueDepth
    backends: Backends
    storage: dict[str, Any]
    chain: dict[str, Any]
    billing: dict[str, Any]
    draining: bool
    connections: ConnectionsRead | None = Field(
        None,
        description="this process's client connections (null when not served by "
        "parity-server server)",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Settings that are wrong for how the server runs (e.g. replicas that do not "
        "share a content store, or a ledger holding unpaid priced work on a server whose "
        "settlement worker is off); empty when none",
    )

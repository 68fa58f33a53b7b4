"""Delivery of ``task.offered`` pushes from the outbox. Network I/O happens outside any
transaction (the embedded writer is never held during a POST); outcomes are recorded after.
A duplicated or lost push does no harm: the runner still has to claim."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from parity.clock import Clock, utc_iso
from parity.db.session import Database
from parity.jobs.locks import NoLock
from parity.jobs.loop import BackgroundLoop
from parity.runners.models import Runner
from parity.tasks.models import RunnerPush
from parity.webhooks import signing
from parity.webhooks.ssrf import UrlRefused, post_json

MAX_ATTEMPTS = 6


@dataclass
class PushTarget:
    push_id: uuid.UUID
    url: str
    secret: str
    payload: dict[str, object]
    attempts: int


async def _due(db: Database, now: datetime, limit: int) -> list[PushTarget]:
    async with db.read_session() as s:
        rows = await s.execute(
            select(RunnerPush, Runner.webhook_url, Runner.webhook_secret)
            .join(Runner, Runner.id == RunnerPush.runner_id)
            .where(
                RunnerPush.delivered_at.is_(None),
                RunnerPush.abandoned_at.is_(None),
                RunnerPush.next_attempt_at <= now,
            )
            .order_by(RunnerPush.next_attempt_at)
            .limit(limit)
        )
        out = []
        for push, url, secret in rows.all():
            if url and secret:
                out.append(PushTarget(push.id, url, secret, push.payload, push.attempts))
        return out


async def deliver_due(
    db: Database, clock: Clock, *, allow_private: bool, limit: int = 50, timeout: float = 5.0
) -> int:
    now = clock.now()
    targets = await _due(db, now, limit)
    sem = asyncio.Semaphore(16)

    async def send(t: PushTarget) -> tuple[PushTarget, int | None, str | None]:
        msg_id = f"msg_{t.push_id.hex}"
        body = json.dumps(
            {
                "id": msg_id,
                "type": "task.offered",
                "created_at": utc_iso(now),
                "data": t.payload,
            },
            separators=(",", ":"),
        ).encode()
        headers = signing.headers(t.secret, msg_id, int(now.timestamp()), body)
        headers["content-type"] = "application/json"
        async with sem:
            try:
                status = await post_json(
                    t.url, body, headers, allow_private=allow_private, timeout=timeout
                )
                return t, status, None if 200 <= status < 300 else f"HTTP {status}"
            except UrlRefused as exc:
                return t, None, f"refused: {exc}"
            except Exception as exc:  # network errors: retried with backoff
                return t, None, f"{type(exc).__name__}: {exc}"[:500]

    # Concurrently: one slow runner endpoint never holds up the others' offers.
    outcomes = await asyncio.gather(*(send(t) for t in targets))
    if outcomes:
        async with db.transaction() as s:
            done = clock.now()
            for t, _status, err in outcomes:
                if err is None:
                    values: dict[str, object] = {"delivered_at": done, "attempts": t.attempts + 1}
                elif t.attempts + 1 >= MAX_ATTEMPTS:
                    values = {"abandoned_at": done, "attempts": t.attempts + 1, "last_error": err}
                else:
                    delay = min(2 ** (t.attempts + 1), 60)
                    values = {
                        "attempts": t.attempts + 1,
                        "last_error": err,
                        "next_attempt_at": done + timedelta(seconds=delay),
                    }
                await s.execute(
                    update(RunnerPush)
                    .where(RunnerPush.id == t.push_id)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
    return len(outcomes)


class PushLoop:
    """Delivers pushes right after an offer is committed (woken by the hub) and retries due
    ones every ``interval`` seconds."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        event: asyncio.Event,
        *,
        interval: float,
        allow_private: bool,
    ) -> None:
        self.db = db
        self.clock = clock
        self.event = event
        self.interval = interval
        self.allow_private = allow_private
        self.loop: BackgroundLoop[bool, int] = BackgroundLoop(
            "push-delivery",
            self._deliver,
            NoLock(),
            interval=interval,
            clock=clock,
            wake=event,
            log_ticks=False,
        )

    async def _deliver(self, _held: bool) -> int:
        return await deliver_due(self.db, self.clock, allow_private=self.allow_private)

    def start(self) -> None:
        self.loop.start()

    async def stop(self, timeout: float = 10.0) -> None:
        await self.loop.stop(timeout)

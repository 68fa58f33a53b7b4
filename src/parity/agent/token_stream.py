"""The runner's half of the streaming leg: one ``POST /runners/tasks/{id}/stream`` request per
task attempt, opened when the task starts (before its first token, so the server can end it
on a cancel while the backend has produced nothing yet) and fed as tokens arrive (chunked
NDJSON). The backend is never held up by it: tokens queue in memory.

How the request ends decides what the runner does next (``on_end``):

- the server answers ``{"cancelled": true}`` before the runner closed the body: the prompt was
  cancelled (its client went away) or the claim is no longer this runner's, so generation stops
  at once, as a heartbeat's ``cancel`` would stop it (``"cancelled"``);
- the request fails (the server unreachable, the connection lost, a 5xx) after at least one
  delta went into its body: text already reached the client and cannot be re-sent elsewhere,
  so generation stops and the run is reported failed with what was streamed (``"broken"``);
- a refusal (4xx) or a failure before any delta was sent only costs the early delivery: the
  completion carries the whole text (before the first token the queue's failover applies)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from parity.agent.client import ServerClient, ServerError
from parity.logging import get_logger

log = get_logger("parity.runner")

CANCELLED = "cancelled"
BROKEN = "broken"


class TokenStream:
    def __init__(
        self,
        client: ServerClient,
        task_id: str,
        claim_token: str,
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.claim_token = claim_token
        self.on_end = on_end
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._job: asyncio.Task[None] | None = None
        self.closed = False
        # What went into the request body, in order (what the server may have relayed).
        self.sent_parts: list[str] = []
        self.ended: str | None = None  # CANCELLED or BROKEN when the leg ended that way
        self.error: str | None = None  # why it broke

    @property
    def sent_text(self) -> str:
        return "".join(self.sent_parts)

    def open(self) -> None:
        """Send the request now; its body's lines follow as tokens arrive."""
        if self._job is None and not self.closed:
            self._job = asyncio.create_task(self._post(), name=f"stream:{self.task_id}")

    def send(self, text: str) -> None:
        if self.closed:
            return
        self.open()
        self._queue.put_nowait(text)

    async def _deltas(self) -> AsyncIterator[str]:
        while (item := await self._queue.get()) is not None:
            self.sent_parts.append(item)
            yield item

    async def _post(self) -> None:
        try:
            answer = await self.client.stream(self.task_id, self.claim_token, self._deltas())
        except Exception as exc:
            self.closed = True
            log.warning("token_stream_failed", task_id=self.task_id, error=str(exc)[:200])
            refused = isinstance(exc, ServerError) and exc.status < 500
            if self.sent_parts and not refused:
                self.error = str(exc)[:500] or type(exc).__name__
                self._end(BROKEN)
            return
        if answer.get("cancelled") is True:
            self.closed = True
            log.info("token_stream_cancelled", task_id=self.task_id)
            self._end(CANCELLED)

    def _end(self, how: str) -> None:
        self.ended = how
        if self.on_end is not None:
            self.on_end(how)

    async def close(self, timeout: float) -> None:
        """End the request (its last deltas land before the caller reports the outcome)."""
        self.closed = True
        if self._job is None:
            return
        self._queue.put_nowait(None)
        done, _ = await asyncio.wait({self._job}, timeout=timeout)
        if not done:
            self._job.cancel()
            await asyncio.gather(self._job, return_exceptions=True)

"""The runner's half of the streaming leg: one ``POST /runners/tasks/{id}/stream`` request per
task attempt, opened at the first token and fed as tokens arrive (chunked NDJSON). The backend
is never held up by it: tokens queue in memory, and a stream the server refuses or drops only
costs the early delivery (the completion carries the whole text)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from parity.agent.client import ServerClient
from parity.logging import get_logger

log = get_logger("parity.runner")


class TokenStream:
    def __init__(self, client: ServerClient, task_id: str, claim_token: str) -> None:
        self.client = client
        self.task_id = task_id
        self.claim_token = claim_token
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._job: asyncio.Task[None] | None = None
        self.closed = False

    def send(self, text: str) -> None:
        if self.closed:
            return
        if self._job is None:
            self._job = asyncio.create_task(self._post(), name=f"stream:{self.task_id}")
        self._queue.put_nowait(text)

    async def _deltas(self) -> AsyncIterator[str]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def _post(self) -> None:
        try:
            await self.client.stream(self.task_id, self.claim_token, self._deltas())
        except Exception as exc:
            self.closed = True  # refused or cut off: the completion still carries the text
            log.warning("token_stream_failed", task_id=self.task_id, error=str(exc)[:200])

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

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
  completion carries the whole text (before the first token the queue's failover applies).

The server ends a cancelled stream by dropping the connection with the body unread, so its
``{"cancelled": true}`` answer is often lost to the connection's reset: the request then fails
like a lost connection. A request that fails that way after a delta went out is therefore
checked against the claim's lease (``POST .../lease`` says ``cancel_requested``) before it
counts as broken: a cancel is reported as a cancel, not as a stream that broke off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from parity.agent.client import ServerClient, ServerError
from parity.logging import get_logger

log = get_logger("parity.runner")

CANCELLED = "cancelled"
BROKEN = "broken"
# How long a failed stream's lease check may take (the backend generates meanwhile).
LEASE_CHECK_SECONDS = 5.0
# While the backend is silent (a long prompt before its first token), a blank line this often
# keeps the request alive: the server closes a request whose body stops arriving for
# BODY_IDLE_SECONDS (300 s, parity.api.coalesce).
STREAM_KEEPALIVE_SECONDS = 30.0
_KEEPALIVE = object()  # queued by the keep-alive timer: a blank line, not a delta


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
        self._queue: asyncio.Queue[str | object | None] = asyncio.Queue()
        self._job: asyncio.Task[None] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._last_line = 0.0  # the loop's time of the last line queued
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
            self._last_line = asyncio.get_running_loop().time()
            self._arm_keepalive(STREAM_KEEPALIVE_SECONDS)

    def send(self, text: str) -> None:
        if self.closed:
            return
        self.open()
        self._queue.put_nowait(text)
        self._last_line = asyncio.get_running_loop().time()

    def _arm_keepalive(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._keepalive = loop.call_later(delay, self._keep_alive)

    def _keep_alive(self) -> None:
        """A blank line when nothing was queued for STREAM_KEEPALIVE_SECONDS; checked again
        when that much time has passed since the last line (no timer per delta)."""
        self._keepalive = None
        if self.closed:
            return
        now = asyncio.get_running_loop().time()
        idle = now - self._last_line
        if idle >= STREAM_KEEPALIVE_SECONDS:
            self._queue.put_nowait(_KEEPALIVE)
            self._last_line, idle = now, 0.0
        self._arm_keepalive(STREAM_KEEPALIVE_SECONDS - idle)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    async def _deltas(self) -> AsyncIterator[str | None]:
        while (item := await self._queue.get()) is not None:
            if item is _KEEPALIVE:
                yield None  # a blank line
                continue
            text = str(item)
            self.sent_parts.append(text)
            yield text

    async def _post(self) -> None:
        try:
            answer = await self.client.stream(self.task_id, self.claim_token, self._deltas())
        except Exception as exc:
            self.closed = True
            self._stop_keepalive()
            refused = isinstance(exc, ServerError) and exc.status < 500
            if self.sent_parts and not refused:
                if not isinstance(exc, ServerError) and await self._cancel_requested():
                    log.info("token_stream_cancelled", task_id=self.task_id)
                    self._end(CANCELLED)
                    return
                self.error = str(exc)[:500] or type(exc).__name__
                self._end(BROKEN)
            log.warning(
                "token_stream_failed",
                task_id=self.task_id,
                error=_why(exc),
                deltas_sent=bool(self.sent_parts),
            )
            return
        if answer.get("cancelled") is True:
            self.closed = True
            self._stop_keepalive()
            log.info("token_stream_cancelled", task_id=self.task_id)
            self._end(CANCELLED)

    async def _cancel_requested(self) -> bool:
        """Whether the claim's task was cancelled (the server's answer to that effect may have
        been lost with the connection); False when that cannot be told."""
        try:
            lease = await asyncio.wait_for(
                self.client.transition(self.task_id, "lease", {"claim_token": self.claim_token}),
                LEASE_CHECK_SECONDS,
            )
        except Exception as exc:
            log.info("token_stream_lease_check_failed", task_id=self.task_id, error=_why(exc))
            return False
        return lease.get("cancel_requested") is True

    def _end(self, how: str) -> None:
        self.ended = how
        if self.on_end is not None:
            self.on_end(how)

    async def close(self, timeout: float) -> None:
        """End the request (its last deltas land before the caller reports the outcome)."""
        self.closed = True
        self._stop_keepalive()
        if self._job is None:
            return
        self._queue.put_nowait(None)
        done, _ = await asyncio.wait({self._job}, timeout=timeout)
        if not done:
            self._job.cancel()
            await asyncio.gather(self._job, return_exceptions=True)


def _why(exc: BaseException) -> str:
    """An exception's message, or its type's name where it has none (httpx's ReadError)."""
    return (str(exc) or type(exc).__name__)[:200]

"""Calls to the server that outlast its restart: a broken connection or a server error (5xx)
is tried again, with backoff, for a while; a refusal (4xx) is final. Safe because every FL
request is idempotent (content by CID, updates and stage messages fenced by the claim token)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from parity.agent.client import ServerError

T = TypeVar("T")
FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 2.0


async def until_reachable(
    call: Callable[[], Awaitable[T]],
    seconds: float,
    *,
    check: Callable[[ServerError], None] | None = None,
) -> T:
    """``call()``, tried again for up to ``seconds`` while the server does not answer or answers
    5xx (0.25 s, doubling to 2 s between tries); ``check`` sees every refusal first and may raise
    its own error instead."""
    give_up = time.monotonic() + seconds
    attempt = 0
    while True:
        last = time.monotonic() >= give_up
        try:
            return await call()
        except ServerError as exc:
            if check is not None:
                check(exc)
            if exc.status < 500 or last:
                raise
        except httpx.TransportError:
            if last:
                raise
        await asyncio.sleep(min(FIRST_DELAY_SECONDS * 2**attempt, MAX_DELAY_SECONDS))
        attempt += 1

"""Executors turn a claimed task into a process (or container) run and an outcome."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

LogSink = Callable[[list[str]], Awaitable[None]]


@dataclass
class Outcome:
    ok: bool
    exit_code: int | None
    output: str
    error: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False
    # The whole output when it did not fit inline (the runner stores it and reports a CID).
    full_output: bytes | None = None
    # The executor's own request already ended the task on the server (an accepted FL update
    # completes its task): the runner reports nothing more.
    reported: bool = False


class Executor(Protocol):
    async def run(self, task: dict[str, Any], logs: LogSink, cancel: CancelToken) -> Outcome:
        """Run a task to completion, streaming log lines; honour ``cancel``."""
        ...


class CancelToken:
    """Set when the server asks to cancel (lease/heartbeat answer) or the claim is revoked."""

    def __init__(self) -> None:
        import asyncio

        self._event = asyncio.Event()
        self.reason = ""

    def cancel(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

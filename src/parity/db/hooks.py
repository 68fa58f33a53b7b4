"""After-commit callbacks: wake-ups and pushes must only happen once the data is visible.
After-rollback callbacks (synchronous) undo in-process reservations a unit of work made."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from parity.logging import get_logger

log = get_logger("parity.db")

Callback = Callable[[], Awaitable[None] | None]


def after_commit(session: AsyncSession, fn: Callback) -> None:
    session.info.setdefault("after_commit", []).append(fn)


async def run_after_commit(session: AsyncSession) -> None:
    session.info.pop("after_rollback", None)
    callbacks: list[Callback] = session.info.pop("after_commit", [])
    for fn in callbacks:
        try:
            res = fn()
            if inspect.isawaitable(res):
                await res
        except Exception as exc:  # a failed wake-up must not fail a committed request
            log.warning("after_commit_failed", error=type(exc).__name__, detail=str(exc))


def after_rollback(session: AsyncSession, fn: Callable[[], None]) -> None:
    session.info.setdefault("after_rollback", []).append(fn)


def discard_after_commit(session: AsyncSession) -> None:
    """The unit of work failed: its after-commit callbacks are dropped and its after-rollback
    callbacks run."""
    session.info.pop("after_commit", None)
    for fn in session.info.pop("after_rollback", []):
        try:
            fn()
        except Exception as exc:
            log.warning("after_rollback_failed", error=type(exc).__name__, detail=str(exc))

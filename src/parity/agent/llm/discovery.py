"""The models a runner reports at registration and in heartbeats, with its prices.

Registration waits for one full discovery (each backend bounded by its ``list_models``
timeout). A heartbeat asks again but waits only briefly: when the backends answer in time the
beat carries the fresh list, otherwise the last one, and the listing goes on in the background
for the next beat. So a backend that hangs never delays a heartbeat, and one that is down at
start is found again on a later beat.

A backend that cannot be listed reports no models and logs one line when it goes down (not one
per beat); another line says when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from parity.agent.llm.executor import LlmExecutor
from parity.core.llm.metering import LlmPrice
from parity.logging import get_logger

__all__ = ["ModelDiscovery"]

log = get_logger("parity.runner")


class ModelDiscovery:
    def __init__(self, executor: LlmExecutor, prices: Mapping[str, LlmPrice] | None = None):
        self.executor = executor
        self.prices = dict(prices or {})
        self.latest: list[dict[str, Any]] = []
        self._down: set[str] = set()
        self._job: asyncio.Task[list[dict[str, Any]]] | None = None

    async def discover(self) -> list[dict[str, Any]]:
        """List every backend now; the report (also kept as ``latest``). Never raises: a
        failure keeps the previous report."""
        try:
            report = await self.executor.models_report(self.prices)
        except Exception as exc:  # a bug or an unexpected answer must not stop the heartbeats
            log.warning("llm_discovery_failed", error=(str(exc) or type(exc).__name__)[:300])
            return self.latest
        self._log_changes()
        self.latest = report
        return report

    async def current(self, wait: float) -> list[dict[str, Any]]:
        """The report for a heartbeat: a fresh one if the backends answer within ``wait``
        seconds, else the last one (the listing started here finishes in the background)."""
        if self._job is None or self._job.done():
            self._job = asyncio.create_task(self.discover(), name="llm-discovery")
        with contextlib.suppress(TimeoutError):
            # shield: running out of time here must not cancel the listing itself.
            return await asyncio.wait_for(asyncio.shield(self._job), wait)
        return self.latest

    async def aclose(self) -> None:
        """Stop a listing in flight and close the backends' connections."""
        if self._job is not None and not self._job.done():
            self._job.cancel()
            await asyncio.gather(self._job, return_exceptions=True)
        await self.executor.aclose()

    def _log_changes(self) -> None:
        down = self.executor.unreachable
        for label in sorted(down.keys() - self._down):
            log.warning(
                "llm_backend_unreachable",
                backend=label,
                error=str(down[label])[:300],
                message="reporting no models from this backend; retrying at each heartbeat",
            )
        served = self.executor.served_by()
        for label in sorted(self._down - down.keys()):
            log.info("llm_backend_reachable", backend=label, models=served.get(label, []))
        self._down = set(down)

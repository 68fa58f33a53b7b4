"""Health and status reporting."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity import __version__
from parity.auth import service as auth_service
from parity.container import Container


async def check_health(container: Container) -> dict[str, Any]:
    """Raises the database's own error when it is down (mapped to 503)."""
    await container.db.ping()
    return {"status": "healthy", "database": "ok"}


async def describe_status(container: Container, session: AsyncSession) -> dict[str, Any]:
    s = container.settings
    uptime = container.clock.monotonic() - container.started_monotonic
    return {
        "service": "parity-server",
        "version": __version__,
        "uptime_seconds": round(max(uptime, 0.0), 3),
        "mode": "embedded" if s.embedded else "postgresql",
        "counts": {"accounts": await auth_service.count_accounts(session)},
        "backends": {
            "database": container.db.dialect,
            "content_store": "kubo" if s.filecoin_ipfs_endpoint else "local",
            "chain": "configured" if s.filecoin_rpc else "off",
            "wakeups": "in-process",
        },
        "draining": container.draining,
    }

"""`parity-server server`: run the API and its background loops under uvicorn."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from parity.app import create_app
from parity.chain.factory import open_chain_client
from parity.chain.startup import ChainStatus, check_at_start
from parity.config import Settings
from parity.container import Container
from parity.db import migrate
from parity.db.lockfile import ProcessLock
from parity.db.session import Database
from parity.logging import get_logger

log = get_logger("parity.server")


class DrainingServer(uvicorn.Server):
    """Marks the container as draining at the first SIGTERM/SIGINT so long-polls and new work
    can be refused with ``Retry-After`` while in-flight requests finish."""

    def __init__(self, config: uvicorn.Config, container: Container) -> None:
        super().__init__(config)
        self.container = container

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.container.draining = True
        super().handle_exit(sig, frame)
        # A requested stop that completed gracefully exits 0 instead of re-raising the signal.
        self._captured_signals.clear()


async def _check_chain_once(settings: Settings) -> ChainStatus:
    """The chain start-up check on a client of its own (its connections belong to this
    short-lived event loop); ConfigError when the node serves another chain."""
    client = open_chain_client(settings)
    try:
        return await check_at_start(client, settings)
    finally:
        if client is not None:
            await client.aclose()


def run_server(settings: Settings) -> None:
    lock: ProcessLock | None = None
    if settings.embedded:
        settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = ProcessLock(settings.home / "server.lock")
        lock.acquire()
    try:
        # Migrate before binding the port, so a refused schema never serves a request.
        status = asyncio.run(migrate.upgrade(settings.resolved_database_url))
        log.info("schema_ready", revision=status.current)
        db = Database(
            settings.resolved_database_url,
            pool_size=settings.database_pool_size,
            busy_timeout_ms=settings.database_busy_timeout_ms,
        )
        container = Container(settings=settings, db=db)
        # Like migrations: a node on the wrong chain stops start-up before the port is bound.
        container.chain_status = asyncio.run(_check_chain_once(settings))
        container.chain_checked_monotonic = container.clock.monotonic()
        app = create_app(container, run_migrations=False)
        config = uvicorn.Config(
            app,
            host=settings.server_host,
            port=settings.server_port,
            log_config=None,
            access_log=False,
            # Longer than clients keep idle connections (httpx: 5 s), so the server never closes
            # one at the moment a client reuses it ("disconnected without a response").
            timeout_keep_alive=int(settings.server_keepalive_seconds),
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
            lifespan="on",
        )
        DrainingServer(config, container).run()
    finally:
        if lock is not None:
            lock.release()

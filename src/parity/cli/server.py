"""`parity-server server`: run the API and its background loops under uvicorn."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn

from parity.api.coalesce import CoalescingHttpToolsProtocol
from parity.api.connlimit import limits_for, raise_open_file_limit
from parity.app import create_app
from parity.chain.factory import open_chain_client
from parity.chain.startup import ChainStatus, check_at_start
from parity.cli.home import acquire_lock, blocks_key, make_home
from parity.config import Settings
from parity.container import Container
from parity.db import migrate
from parity.db.lockfile import ProcessLock
from parity.db.session import Database
from parity.heap import settle_heap
from parity.logging import get_logger
from parity.storage.factory import blockstore_lock

log = get_logger("parity.server")


class ListenError(OSError):
    """The configured address cannot be bound (in use, not local, no permission)."""


def listen_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind the server's socket before anything else starts, so a busy port stops start-up
    before migrations, loops or the ``server_started`` announcement. uvicorn listens on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(
            f"cannot listen on {listen_url(host, port)}: {exc.strerror or exc}; another "
            "process may hold the port: stop it or set SERVER_PORT / SERVER_HOST"
        ) from None
    sock.set_inheritable(True)
    return sock


class DrainingServer(uvicorn.Server):
    """Marks the container as draining at the first SIGTERM/SIGINT so long-polls and new work
    can be refused with ``Retry-After`` while in-flight requests finish."""

    def __init__(self, config: uvicorn.Config, container: Container) -> None:
        super().__init__(config)
        self.container = container

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and sockets:
            # Start-up is done: what it built stays out of later garbage collections (the
            # one full collection now, before anyone is told the server is up).
            settle_heap()
            # Announced only now: the lifespan (migrations, chain check, loops) is done and the
            # socket listens, so whoever reads the line can connect.
            _announce(self.container.settings, sockets[0])

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.container.draining = True
        super().handle_exit(sig, frame)
        # A requested stop that completed gracefully exits 0 instead of re-raising the signal.
        self._captured_signals.clear()


WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - compared against, never bound


def _announce(settings: Settings, sock: socket.socket) -> None:
    host, port = settings.server_host, int(sock.getsockname()[1])
    url = listen_url(host, port)
    # A wildcard address is not one a browser can open: point at loopback (or the public URL).
    local = listen_url("127.0.0.1" if host in WILDCARDS else host, port)
    browse = settings.server_public_url.rstrip("/") or local
    log.info(
        "server_started",
        mode="embedded" if settings.embedded else "postgresql",
        url=url,
        api_url=f"{browse}{settings.server_endpoint}/v1",
        docs_url=f"{browse}/docs",
    )


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
    locks: list[ProcessLock] = []
    sock: socket.socket | None = None
    try:
        if settings.embedded:
            make_home(settings)
            locks.append(acquire_lock(ProcessLock(settings.home / "server.lock"), "PARITY_HOME"))
        store_lock = blockstore_lock(settings)
        if store_lock is not None:
            locks.append(acquire_lock(store_lock, blocks_key(settings)))
        # Bound (not yet listening: a connection is refused, never half-served) before the
        # slow steps, so a busy port fails at once and nothing claims the server started.
        sock = bind_listener(settings.server_host, settings.server_port)
        # Migrate before listening, so a refused schema never serves a request.
        status = asyncio.run(migrate.upgrade(settings.resolved_database_url))
        log.info("schema_ready", revision=status.current)
        db = Database(
            settings.resolved_database_url,
            pool_size=settings.database_pool_size,
            busy_timeout_ms=settings.database_busy_timeout_ms,
        )
        container = Container(settings=settings, db=db)
        # Like migrations: a node on the wrong chain stops start-up before the port listens.
        container.chain_status = asyncio.run(_check_chain_once(settings))
        container.chain_checked_monotonic = container.clock.monotonic()
        app = create_app(container, run_migrations=False)
        limits = limits_for(
            settings.server_max_connections, raise_open_file_limit(), settings.database_pool_size
        )
        log.info("connection_limit", max_connections=limits.soft, closed_past=limits.hard)
        container.connection_limits = limits
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
            # One send per response, bounded heads and bodies, bounded connections.
            http=CoalescingHttpToolsProtocol.limited(limits),
        )
        DrainingServer(config, container).run(sockets=[sock])
    finally:
        if sock is not None:
            sock.close()
        for lock in reversed(locks):
            lock.release()

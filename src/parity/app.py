"""The FastAPI application: routes under /api/v1 and their /api mirror, one error envelope,
offline docs, request context, lifespan with migrations and background loops."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline

from parity import __version__
from parity.api.errors import install_error_handlers
from parity.api.middleware import RequestContextMiddleware
from parity.auth.router import router as auth_router
from parity.container import Container
from parity.db import migrate
from parity.jobs.retention import retention_job
from parity.jobs.runner import JobRunner, PeriodicJob
from parity.logging import get_logger
from parity.system.router import root_router
from parity.system.router import router as system_router

log = get_logger("parity.app")


def api_router() -> APIRouter:
    """Every domain's router; mounted twice (canonical /api/v1 and the /api mirror)."""
    api = APIRouter()
    api.include_router(system_router)
    api.include_router(auth_router)
    return api


def build_jobs(container: Container) -> list[PeriodicJob]:
    return [retention_job(container.settings.retention_interval_seconds)]


def create_app(
    container: Container, *, run_migrations: bool = True, start_jobs: bool = True
) -> FastAPI:
    settings = container.settings
    jobs = JobRunner(container.db, container.clock, build_jobs(container))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if run_migrations:
            status = await migrate.upgrade(container.db.url)
            log.info("schema_ready", revision=status.current)
        if start_jobs:
            jobs.start()
        log.info("server_started", mode="embedded" if settings.embedded else "postgresql")
        try:
            yield
        finally:
            await jobs.stop(timeout=settings.shutdown_grace_seconds / 2)
            await container.db.dispose()
            log.info("server_stopped")

    app = FastAPIOffline(
        title="Parity Server",
        version=__version__,
        description="Coordination server for a decentralized AI and compute network.",
        lifespan=lifespan,
    )
    app.state.container = container
    app.state.jobs = jobs
    install_error_handlers(app)
    api = api_router()
    prefix = settings.server_endpoint
    app.include_router(api, prefix=f"{prefix}/v1")
    app.include_router(api, prefix=prefix, include_in_schema=False)
    app.include_router(root_router)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_request_body_bytes,
        quiet_paths=frozenset({f"{prefix}/v1/runners/heartbeat", f"{prefix}/health"}),
    )
    return app

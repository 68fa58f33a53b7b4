"""The FastAPI application: routes under /api/v1 and their /api mirror, one error envelope,
offline docs, request context, lifespan with migrations and background loops."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline

from parity import __version__
from parity.api.errors import install_error_handlers
from parity.api.middleware import RequestContextMiddleware
from parity.api.openapi import install_error_responses
from parity.api.routeindex import install_prefix_filters
from parity.auth.router import router as auth_router
from parity.chain.startup import check_at_start
from parity.container import Container
from parity.db import migrate
from parity.events.delivery import DeliveryLoop
from parity.events.router import router as events_router
from parity.fl import tasks_glue as fl_tasks
from parity.fl.jobs import RoundsLoop, rounds_job
from parity.fl.router import router as fl_router
from parity.gateway.ollama import router as ollama_router
from parity.gateway.openai import router as openai_router
from parity.gateway.runner_stream import router as runner_stream_router
from parity.jobs.runner import JobRunner, PeriodicJob
from parity.ledger import service as ledger_service
from parity.ledger.router import router as ledger_router
from parity.ledger.settlement import settlement_worker
from parity.llm import billing as llm_billing
from parity.llm.jobs import prompts_job
from parity.llm.router import router as llm_router
from parity.logging import get_logger
from parity.network.router import router as runners_router
from parity.relay import WakeRelay, asyncpg_dsn
from parity.retention import retention_job
from parity.storage.router import UPLOAD_PATH
from parity.storage.router import router as storage_router
from parity.system.router import root_router
from parity.system.router import router as system_router
from parity.system.service import UNSHARED_STORE, replica_setup
from parity.system.unpaid import warn_unpaid_at_start
from parity.tasks import handoff
from parity.tasks.jobs import lease_expiry_job, liveness_job, offer_expiry_job, reoffer_job
from parity.tasks.pushes import PushLoop
from parity.tasks.router import router as tasks_router
from parity.tasks.runner_router import OUTPUT_PATH_PATTERN
from parity.tasks.runner_router import router as runner_tasks_router

log = get_logger("parity.app")


def api_routers() -> list[APIRouter]:
    """Every domain's router, in the order routes are matched; each is included twice
    (canonical /api/v1 and the /api mirror), directly into the app: FastAPI matches a request
    against an included router's routes again at every level of inclusion it passes through,
    so one level is cheaper per request than a router of routers."""
    # Routes are matched in order, one pattern after another: the runners' per-task and
    # per-round calls come first, the rare ones last. Runner-side task routes stay before
    # runners_router: /runners/tasks/... must not be read as /runners/{id}.
    return [
        runner_tasks_router,
        fl_router,
        storage_router,
        runner_stream_router,
        llm_router,
        runners_router,
        tasks_router,
        events_router,
        ledger_router,
        auth_router,
        system_router,
    ]


def build_jobs(container: Container) -> list[PeriodicJob]:
    s = container.settings
    deps = container.tasks
    tick = s.scheduler_interval_seconds
    return [
        retention_job(
            s.retention_interval_seconds, s.events_retention_days, s.task_log_retention_days
        ),
        # After a restart, runners get one lease / offline period to reach the server again.
        lease_expiry_job(
            deps, tick, startup_grace_seconds=s.lease_seconds, paused=lambda: container.draining
        ),
        liveness_job(
            deps,
            container.runners,
            tick,
            s.offline_timeout_seconds,
            startup_grace_seconds=s.offline_timeout_seconds,
            paused=lambda: container.draining,
        ),
        offer_expiry_job(deps, tick),
        reoffer_job(deps, tick),
        prompts_job(container.llm, tick),
    ]


def _warn_unshared_store(container: Container) -> None:
    if container.content_store.kind == "local":
        log.warning("content_store_not_shared", detail=UNSHARED_STORE)


async def _check_chain(container: Container) -> None:
    """Run the chain start-up check unless run_server already did; a node on the wrong chain
    stops start-up (ConfigError), an unreachable one only warns."""
    if container.chain_status is not None:
        return
    try:
        container.chain_status = await check_at_start(container.chain, container.settings)
    except BaseException:
        await container.close_chain()
        raise
    container.chain_checked_monotonic = container.clock.monotonic()


def create_app(
    container: Container, *, run_migrations: bool = True, start_jobs: bool = True
) -> FastAPI:
    settings = container.settings
    llm_billing.register()  # prompts close their escrow by tokens
    fl_tasks.register()  # FL training tasks are paid from their session's pool
    # A claim handed to a long-poll whose runner hung up before the commit is given back.
    container.wakeups.release_orphan = functools.partial(
        handoff.release_later, container.db, container.tasks
    )
    jobs = JobRunner(container.db, container.clock, build_jobs(container))
    pushes = PushLoop(
        container.db,
        container.clock,
        container.wakeups.push_event,
        interval=settings.push_interval_seconds,
        allow_private=settings.allow_private_webhooks,
    )
    deliveries = DeliveryLoop(
        container.db,
        container.deliveries,
        container.event_hub.delivery_event,
        interval=settings.webhook_delivery_interval_seconds,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if run_migrations:
            status = await migrate.upgrade(container.db.url)
            log.info("schema_ready", revision=status.current)
        await _check_chain(container)
        async with container.db.read_session() as session:
            await ledger_service.check_escrow_possible(session, container.ledger)
        if not container.db.is_sqlite and settings.wakeup_relay == "auto":
            container.relay = WakeRelay(
                asyncpg_dsn(container.db.url),
                container.wakeups,
                container.event_hub,
                tokens=container.token_cache,
                setup=replica_setup(settings.stream_bus_url),
            )
            container.relay.on_new_peer = lambda: _warn_unshared_store(container)
            await container.relay.start()
        # The settlement worker runs only with a chain and a signer (SETTLEMENT_*); a bad key or
        # keystore stops start-up here (ConfigError).
        settlement = (
            settlement_worker(
                settings, container.db, container.chain, container.clock, container.events
            )
            if start_jobs
            else None
        )
        container.settlement = settlement
        await warn_unpaid_at_start(container)  # a priced ledger that nothing here settles
        # Built here, not with the app: it holds the content store, which tests may replace.
        fl_rounds: RoundsLoop | None = None
        if start_jobs:
            fl_rounds = rounds_job(container.db, container.fl, settings.scheduler_interval_seconds)
            jobs.start()
            pushes.start()
            deliveries.start()
            fl_rounds.start()
            if settlement is not None:
                settlement.start()
        # No announcement here: `parity-server server` logs `server_started` with its URLs once
        # the socket listens (a lifespan runs before uvicorn listens, and may yet fail to bind).
        try:
            yield
        finally:
            container.draining = True
            container.wakeups.wake_all()
            container.event_hub.wake_all()
            await pushes.stop()
            if fl_rounds is not None:
                await fl_rounds.stop(timeout=settings.shutdown_grace_seconds / 4)
            await deliveries.stop(timeout=settings.shutdown_grace_seconds / 4)
            await jobs.stop(timeout=settings.shutdown_grace_seconds / 2)
            if settlement is not None:
                await settlement.stop(timeout=settings.shutdown_grace_seconds / 4)
            if container.relay is not None:
                await container.relay.stop()
                container.relay = None
            await container.close_streams()
            await container.close_content_store()
            await container.close_chain()
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
    install_error_responses(app)  # the errors each operation answers, in /openapi.json
    prefix = settings.server_endpoint
    routers = api_routers()
    for router in routers:
        app.include_router(router, prefix=f"{prefix}/v1")
    for router in routers:
        app.include_router(router, prefix=prefix, include_in_schema=False)
    app.include_router(root_router)
    # The compatible gateways live at the root (/v1/..., /ollama/api/...), beside /api.
    app.include_router(openai_router)
    app.include_router(ollama_router)
    install_prefix_filters(app)  # after the last include_router
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_request_body_bytes,
        quiet_paths=frozenset({f"{prefix}/v1/runners/heartbeat", f"{prefix}/health"}),
        # Storage uploads and runners' outputs stream and enforce STORAGE_MAX_UPLOAD_BYTES
        # themselves.
        unlimited_paths=re.compile(
            rf"{re.escape(prefix)}(?:/v1)?(?:{re.escape(UPLOAD_PATH)}|{OUTPUT_PATH_PATTERN})"
        ),
    )
    return app

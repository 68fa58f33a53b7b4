"""Helpers shared by the runner and task-queue integration tests."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx

from parity.app import create_app
from parity.container import Container
from parity.db.session import Database
from parity.tasks import lifecycle
from parity.tasks import queue_repository as tasks_queue_repo
from parity.tasks.jobs import liveness_job
from tests.conftest import bearer, make_settings

V1 = "/api/v1"


async def register_runner(
    client: httpx.AsyncClient,
    owner_token: str,
    device_id: str,
    *,
    max_concurrent_tasks: int = 1,
    labels: dict[str, str] | None = None,
    webhook: str | None = None,
    path: str = "/api/v1/runners",
    **caps: Any,
) -> tuple[str, dict[str, Any]]:
    """Register (or re-register) a runner; returns (runner_token, response body)."""
    body: dict[str, Any] = {
        "device_id": device_id,
        "capabilities": {"cpu_cores": 4, "memory_mb": 8192, "gpus": 0, "docker": False} | caps,
        "max_concurrent_tasks": max_concurrent_tasks,
        "labels": labels or {},
    }
    if webhook is not None:
        body["webhook"] = webhook
    r = await client.post(path, json=body, headers=bearer(owner_token))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return str(out["runner_token"]), out


async def create_task(client: httpx.AsyncClient, token: str, **fields: Any) -> dict[str, Any]:
    """Create a command task (``echo hi`` unless ``config`` is given); asserts 201."""
    body: dict[str, Any] = {"title": "t", "type": "command", "config": {"command": ["echo", "hi"]}}
    body.update(fields)
    r = await client.post(f"{V1}/tasks", json=body, headers=bearer(token))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def claim(
    client: httpx.AsyncClient,
    runner_token: str,
    task_id: str | None = None,
    **params: Any,
) -> httpx.Response:
    """Claim the next task (``wait=0`` unless given) or, with ``task_id``, that task."""
    if task_id is None:
        path = f"{V1}/runners/tasks/claim"
        params.setdefault("wait", 0)
    else:
        path = f"{V1}/runners/tasks/{task_id}/claim"
    q = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
    return await client.post(path, params=q, headers=bearer(runner_token))


async def claimed(client: httpx.AsyncClient, runner_token: str, **params: Any) -> dict[str, Any]:
    """Claim the next task and assert that one came."""
    r = await claim(client, runner_token, **params)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def act(
    client: httpx.AsyncClient,
    runner_token: str,
    task_id: str,
    action: str,
    claim_token: str,
    **body: Any,
) -> httpx.Response:
    """POST a runner transition (start, complete, fail, release, lease, logs)."""
    return await client.post(
        f"{V1}/runners/tasks/{task_id}/{action}",
        json={"claim_token": claim_token, **body},
        headers=bearer(runner_token),
    )


async def heartbeat(client: httpx.AsyncClient, runner_token: str, **body: Any) -> httpx.Response:
    body.setdefault("status", "online")
    return await client.post(f"{V1}/runners/heartbeat", json=body, headers=bearer(runner_token))


async def get_task(client: httpx.AsyncClient, token: str, task_id: str) -> dict[str, Any]:
    r = await client.get(f"{V1}/tasks/{task_id}", headers=bearer(token))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def attempts(client: httpx.AsyncClient, token: str, task_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"{V1}/tasks/{task_id}/attempts", headers=bearer(token))
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()
    return out


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def expire_leases(container: Container) -> int:
    async with container.db.transaction() as s:
        return await lifecycle.expire_leases(s, container.tasks, container.clock.now())


async def sweep_liveness(container: Container, timeout_seconds: float) -> int:
    job = liveness_job(container.tasks, container.runners, 1.0, timeout_seconds)
    async with container.db.transaction() as s:
        return await job.tick(s, container.clock.now())


async def expire_offers(container: Container) -> int:
    async with container.db.transaction() as s:
        return await tasks_queue_repo.expire_offers(s, container.clock.now())


@contextlib.asynccontextmanager
async def started(c: Container) -> AsyncIterator[httpx.ASGITransport]:
    """An app on ``c``, started (its lifespan run, no background jobs), and a transport to it;
    the container's stream bus and database closed after (also when start-up failed)."""
    app = create_app(c, run_migrations=False, start_jobs=False)
    try:
        async with app.router.lifespan_context(app):
            yield httpx.ASGITransport(app=app, raise_app_exceptions=False)
    finally:
        await c.close_streams()
        await c.db.dispose()


@contextlib.asynccontextmanager
async def served(c: Container) -> AsyncIterator[httpx.AsyncClient]:
    """:func:`started`, with a client of the app."""
    async with (
        started(c) as transport,
        httpx.AsyncClient(transport=transport, base_url="http://parity.test") as http,
    ):
        yield http


def _beside(container: Container, **settings: Any) -> Container:
    """A container on the same database and clock as ``container`` with extra settings."""
    s = make_settings(container.settings.resolved_database_url, container.settings.home, **settings)
    return Container(settings=s, db=Database(s.resolved_database_url), clock=container.clock)


@contextlib.asynccontextmanager
async def asgi_app(
    container: Container, **settings: Any
) -> AsyncIterator[tuple[httpx.ASGITransport, Container]]:
    """An app on the same database and clock as ``container`` with extra settings, started
    (no background jobs), and a transport to it; its database closed after."""
    c = _beside(container, **settings)
    async with started(c) as transport:
        yield transport, c


@contextlib.asynccontextmanager
async def custom_client(
    container: Container, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Container]]:
    """An app on the same database and clock as ``container`` with extra settings."""
    c = _beside(container, **settings)
    async with served(c) as http:
        yield http, c


def device() -> str:
    return f"dev-{uuid.uuid4().hex[:10]}"

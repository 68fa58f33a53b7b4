"""GET /api/status shows the network at a glance: runners and tasks by status, queue depth."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import httpx

from parity.clock import FrozenClock
from parity.core.tasks.states import RunnerStatus, TaskStatus
from parity.system.schemas import RunnerCounts, TaskCounts
from tests.conftest import ADMIN, ALICE, bearer, sign_in
from tests.integration.queue_helpers import (
    V1,
    act,
    claim,
    create_task,
    device,
    heartbeat,
    register_runner,
)


async def _status(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/api/status")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def _runner(client: httpx.AsyncClient, owner: str, **kw: Any) -> tuple[str, str]:
    rt, body = await register_runner(client, owner, device(), **kw)
    return rt, str(body["runner"]["id"])


async def _claim(client: httpx.AsyncClient, runner: str, task: dict[str, Any], **kw: Any) -> str:
    """Claim that task; returns the claim token."""
    r = await claim(client, runner, task["id"], **kw)
    assert r.status_code == 200, r.text
    return str(r.json()["claim_token"])


def test_the_count_models_name_every_status():
    assert set(TaskCounts.model_fields) == {s.value for s in TaskStatus}
    assert set(RunnerCounts.model_fields) == {s.value for s in RunnerStatus}


async def test_an_empty_network_reports_every_status_as_zero_and_no_queue_age(
    client: httpx.AsyncClient,
):
    s = await _status(client)
    assert s["counts"]["runners"] == {"online": 0, "busy": 0, "draining": 0, "offline": 0}
    assert s["counts"]["tasks"] == {status.value: 0 for status in TaskStatus}
    assert s["queue"] == {"pending": 0, "ready": 0, "oldest_pending_age_seconds": None}


async def test_status_counts_runners_tasks_and_the_queue_exactly(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    admin = await sign_in(client, ADMIN)
    idle, _ = await _runner(client, alice)
    busy, _ = await _runner(client, alice)
    busy_twice, _ = await _runner(client, alice, max_concurrent_tasks=2)
    drained, drained_id = await _runner(client, alice)
    gone, _ = await _runner(client, alice)
    _, banned_id = await _runner(client, alice)

    oldest = await create_task(client, alice)
    clock.advance(30)
    assigned = await create_task(client, alice)
    running = await create_task(client, alice)
    to_cancel_running = await create_task(client, alice)
    held_by_drained = await create_task(client, alice)
    to_complete = await create_task(client, alice)
    to_fail = await create_task(client, alice, max_attempts=1)
    to_cancel = await create_task(client, alice)
    later = await create_task(
        client, alice, not_before=(clock.now() + timedelta(seconds=600)).isoformat()
    )
    await create_task(client, alice)  # pending and ready

    await _claim(client, busy, assigned)
    await _claim(client, busy_twice, running, start=True)
    await _claim(client, busy_twice, to_cancel_running, start=True)
    await _claim(client, drained, held_by_drained)
    token = await _claim(client, idle, to_complete)
    assert (await act(client, idle, to_complete["id"], "complete", token)).status_code == 200
    token = await _claim(client, idle, to_fail)
    r = await act(client, idle, to_fail["id"], "fail", token, error="boom")
    assert r.status_code == 200 and r.json()["status"] == "failed"
    for t in (to_cancel, to_cancel_running):
        assert (await client.delete(f"{V1}/tasks/{t['id']}", headers=bearer(alice))).is_success
    # A drain outranks the claim the runner still holds; a ban outranks everything.
    assert (await client.post(f"{V1}/runners/{drained_id}/drain", headers=bearer(alice))).is_success
    assert (await client.post(f"{V1}/runners/{banned_id}/ban", headers=bearer(admin))).is_success
    assert (await heartbeat(client, gone, status="offline")).status_code == 200
    clock.advance(15)

    s = await _status(client)
    assert s["counts"]["runners"] == {"online": 1, "busy": 2, "draining": 1, "offline": 2}
    assert s["counts"]["tasks"] == {
        "pending": 3,
        "assigned": 2,
        "running": 1,
        "completed": 1,
        "failed": 1,
        "cancelled": 1,
        "cancel_requested": 1,
    }
    assert s["queue"] == {"pending": 3, "ready": 2, "oldest_pending_age_seconds": 45.0}
    assert s["counts"]["accounts"] == 2
    assert s["backends"]["chain"] == "off" and "storage" in s and "billing" in s

    # The runner list derives the same statuses the status page counts.
    listed = await client.get(f"{V1}/runners", headers=bearer(admin), params={"limit": 100})
    assert listed.status_code == 200, listed.text
    body = listed.json()
    items = body["items"] if isinstance(body, dict) else body
    assert Counter(r["status"] for r in items) == {
        k: n for k, n in s["counts"]["runners"].items() if n
    }

    # Ready follows the injected clock: the delayed task becomes claimable at its not_before.
    clock.advance(600)
    assert (await _status(client))["queue"]["ready"] == 3
    # The oldest pending task leaving the queue makes the next one the oldest.
    assert (await client.delete(f"{V1}/tasks/{oldest['id']}", headers=bearer(alice))).is_success
    q = (await _status(client))["queue"]
    assert q == {"pending": 2, "ready": 2, "oldest_pending_age_seconds": 615.0}
    assert later["status"] == "pending"


async def test_the_status_page_is_public_and_names_no_account(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    await _runner(client, alice)
    await create_task(client, alice)
    r = await client.get("/api/v1/status")
    assert r.status_code == 200
    assert ALICE.address.lower()[2:] not in r.text.lower()
    assert r.json()["counts"]["runners"]["online"] == 1


async def test_the_openapi_schema_documents_the_status_fields(client: httpx.AsyncClient):
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    assert set(schemas["StatusRead"]["properties"]) >= {"counts", "queue", "backends"}
    assert set(schemas["QueueDepth"]["properties"]) == {
        "pending",
        "ready",
        "oldest_pending_age_seconds",
    }
    assert set(schemas["TaskCounts"]["properties"]) == {s.value for s in TaskStatus}

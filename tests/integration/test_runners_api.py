"""The runner registry over HTTP: registration, token rotation, heartbeats, listing, stats,
drain, ban, the liveness sweep, version floor and the push-URL setter."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from parity.clock import FrozenClock
from parity.container import Container
from parity.tasks.models import Task
from tests.conftest import ADMIN, ALICE, BOB, TEST_DB, bearer, sign_in
from tests.integration.queue_helpers import (
    V1,
    act,
    claimed,
    create_task,
    custom_client,
    device,
    error_code,
    expire_leases,
    get_task,
    heartbeat,
    register_runner,
    sweep_liveness,
)


async def _runner(client: httpx.AsyncClient, account: Any = ALICE, **kw: Any) -> tuple[str, str]:
    """(runner_token, runner_id) of a fresh runner owned by ``account``."""
    token = await sign_in(client, account)
    rt, body = await register_runner(client, token, device(), **kw)
    return rt, body["runner"]["id"]


@pytest.mark.parametrize("path", ["/api/v1/runners", "/api/runners/register"])
async def test_register_returns_the_runner_a_runner_token_and_no_claims(
    client: httpx.AsyncClient, path: str
):
    alice = await sign_in(client, ALICE)
    dev = device()
    rt, body = await register_runner(client, alice, dev, path=path, cpu_cores=2, docker=True)
    assert rt.startswith("ps_run_") and body["claims"] == []
    runner = body["runner"]
    assert runner["device_id"] == dev and runner["owner_address"] == ALICE.address.lower()
    assert runner["status"] == "online" and runner["active_claims"] == 0
    assert runner["capabilities"] == {
        "cpu_cores": 2.0,
        "memory_mb": 8192,
        "gpus": 0,
        "docker": True,
        "fl": False,
        "fl_datasets": [],
    }
    uuid.UUID(runner["id"])


async def test_legacy_registration_body_is_accepted_and_identity_comes_from_the_token(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    body = {
        "device_id": "legacy-device-1",
        "wallet_address": BOB.address,
        "status": "busy",
        "model_capabilities": [{"model_name": "llama3", "is_loaded": True, "max_tokens": 8192}],
    }
    r = await client.post("/api/runners/register", json=body, headers=bearer(alice))
    assert r.status_code == 201, r.text
    runner = r.json()["runner"]
    assert runner["owner_address"] == ALICE.address.lower()
    assert runner["wallet_address"] == ALICE.address.lower()
    assert runner["status"] == "online"
    assert runner["models"] == [{"model_name": "llama3", "is_loaded": True, "max_tokens": 8192}]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"device_id": "bad id!"}, "device_id"),
        ({"capabilities": {"cpu_cores": -1}}, "capabilities.cpu_cores"),
        ({"max_concurrent_tasks": 0}, "max_concurrent_tasks"),
        ({"capabilities": {"docker": "yes"}}, "capabilities.docker"),
        ({"capabilities": {"fl": 1}}, "capabilities.fl"),
    ],
)
async def test_registration_refuses_bad_fields_by_name(
    client: httpx.AsyncClient, patch: dict[str, Any], field: str
):
    alice = await sign_in(client, ALICE)
    body = {"device_id": device()} | patch
    r = await client.post(f"{V1}/runners", json=body, headers=bearer(alice))
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["error"]["details"]["errors"]] == [field]


async def test_a_device_registered_by_another_wallet_is_409(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    bob = await sign_in(client, BOB)
    await register_runner(client, alice, "shared-device")
    r = await client.post(f"{V1}/runners", json={"device_id": "shared-device"}, headers=bearer(bob))
    assert r.status_code == 409 and error_code(r) == "device_owned_by_other_wallet"
    assert r.json()["error"]["details"] == {"device_id": "shared-device"}


async def test_reregistration_rotates_the_token_and_hands_back_claims(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    old_rt, first = await register_runner(client, alice, "restarting-device")
    task = await create_task(client, alice)
    old = await claimed(client, old_rt)
    new_rt, again = await register_runner(client, alice, "restarting-device")
    assert new_rt != old_rt and again["runner"]["id"] == first["runner"]["id"]
    r = await heartbeat(client, old_rt)
    assert r.status_code == 401
    [handed] = again["claims"]
    assert handed["task"]["id"] == task["id"] and handed["attempt"] == 1
    assert handed["claim_token"] != old["claim_token"]
    r = await act(client, new_rt, task["id"], "start", old["claim_token"])
    assert r.status_code == 409 and error_code(r) == "claim_invalid"
    r = await act(client, new_rt, task["id"], "complete", handed["claim_token"], output="ok")
    assert r.status_code == 200 and r.json()["status"] == "completed"


async def test_a_runner_token_cannot_register(client: httpx.AsyncClient):
    rt, _ = await _runner(client)
    r = await client.post(f"{V1}/runners", json={"device_id": device()}, headers=bearer(rt))
    assert r.status_code == 403 and error_code(r) == "runner_token_required"


async def test_heartbeat_needs_a_runner_token(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    r = await heartbeat(client, alice)
    assert r.status_code == 403 and error_code(r) == "runner_token_required"


async def test_heartbeat_records_usage_and_models(client: httpx.AsyncClient):
    rt, rid = await _runner(client)
    models = [{"model_name": "mistral", "is_loaded": False, "max_tokens": 2048}]
    r = await heartbeat(client, rt, cpu_usage=0.25, memory_usage=0.5, models=models)
    assert r.status_code == 200
    assert r.json() | {"lease_seconds": 0} == {
        "revoked": [],
        "cancel": [],
        "renewed": [],
        "lease_seconds": 0,
    }
    runner = (await client.get(f"{V1}/runners/{rid}", headers=bearer(rt))).json()
    assert (runner["cpu_usage"], runner["memory_usage"]) == (0.25, 0.5)
    assert runner["models"] == models


async def test_heartbeat_lists_unknown_claim_tokens_as_revoked(client: httpx.AsyncClient):
    rt, _ = await _runner(client)
    r = await heartbeat(client, rt, claims=["ps_claim_" + "0" * 64])
    assert r.json()["revoked"] == ["ps_claim_" + "0" * 64] and r.json()["renewed"] == []


async def test_heartbeat_renews_the_leases_of_listed_claims(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    rt, _ = await _runner(client)
    alice = await sign_in(client, ALICE)
    task = await create_task(client, alice)
    c = await claimed(client, rt)
    clock.advance(60)
    r = await heartbeat(client, rt, claims=[c["claim_token"]])
    assert r.json()["renewed"] == [task["id"]] and r.json()["revoked"] == []
    async with container.db.read_session() as s:
        row = await s.get(Task, uuid.UUID(task["id"]))
        assert row is not None and row.lease_expires_at == clock.now() + timedelta(seconds=90)
    clock.advance(60)  # past the original lease, inside the renewed one
    assert await expire_leases(container) == 0
    assert (await get_task(client, alice, task["id"]))["status"] == "assigned"


async def test_heartbeat_offline_releases_the_runners_claims(client: httpx.AsyncClient):
    rt, rid = await _runner(client)
    alice = await sign_in(client, ALICE)
    task = await create_task(client, alice)
    c = await claimed(client, rt)
    r = await heartbeat(client, rt, status="offline", claims=[c["claim_token"]])
    assert r.status_code == 200 and r.json()["revoked"] == [c["claim_token"]]
    t = await get_task(client, alice, task["id"])
    assert (t["status"], t["runner_id"], t["attempts"], t["releases"]) == ("pending", None, 1, 1)
    runner = (await client.get(f"{V1}/runners/{rid}", headers=bearer(alice))).json()
    assert runner["status"] == "offline"


@pytest.mark.parametrize("field", ["cpu_usage", "memory_usage"])
async def test_heartbeat_usage_above_one_is_422(client: httpx.AsyncClient, field: str):
    rt, _ = await _runner(client)
    r = await heartbeat(client, rt, **{field: 1.5})
    assert r.status_code == 422
    assert r.json()["error"]["details"]["errors"][0]["field"] == field


async def test_runner_list_shows_own_runners_admin_sees_all_and_pages(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    bob = await sign_in(client, BOB)
    admin = await sign_in(client, ADMIN)
    mine = {(await register_runner(client, alice, device()))[1]["runner"]["id"] for _ in range(3)}
    await register_runner(client, bob, device())
    r = await client.get(f"{V1}/runners", headers=bearer(alice))
    assert {x["id"] for x in r.json()["items"]} == mine and r.json()["next_cursor"] is None
    everyone = (await client.get(f"{V1}/runners", headers=bearer(admin))).json()["items"]
    assert len(everyone) == 4
    page1 = (await client.get(f"{V1}/runners?limit=2", headers=bearer(alice))).json()
    assert len(page1["items"]) == 2 and page1["limit"] == 2 and page1["next_cursor"]
    page2 = (
        await client.get(
            f"{V1}/runners",
            params={"limit": 2, "cursor": page1["next_cursor"]},
            headers=bearer(alice),
        )
    ).json()
    assert len(page2["items"]) == 1 and page2["next_cursor"] is None
    assert {x["id"] for x in page1["items"] + page2["items"]} == mine


async def test_reading_another_owners_runner_or_an_unknown_id_is_404(client: httpx.AsyncClient):
    _, rid = await _runner(client, ALICE)
    bob = await sign_in(client, BOB)
    r = await client.get(f"{V1}/runners/{rid}", headers=bearer(bob))
    assert r.status_code == 404 and error_code(r) == "runner_not_found"
    r = await client.get(f"{V1}/runners/{uuid.uuid4()}", headers=bearer(bob))
    assert r.status_code == 404 and error_code(r) == "runner_not_found"


async def test_stats_count_runners_by_derived_status(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    await _runner(client)
    busy, _ = await _runner(client)
    gone, _ = await _runner(client)
    await create_task(client, alice)
    await create_task(client, alice)
    await claimed(client, busy)
    await heartbeat(client, gone, status="offline")
    s = (await client.get(f"{V1}/runners/stats", headers=bearer(alice))).json()
    assert (s["total"], s["online"], s["busy"], s["offline"]) == (3, 1, 1, 1)
    assert (s["active_claims"], s["pending_tasks"], s["running_tasks"]) == (1, 1, 1)
    assert s["capacity"]["cpu_cores"] == 8.0


async def test_a_drained_runner_claims_nothing_until_resumed(client: httpx.AsyncClient):
    rt, rid = await _runner(client)
    alice = await sign_in(client, ALICE)
    await create_task(client, alice)
    r = await client.post(f"{V1}/runners/{rid}/drain", headers=bearer(alice))
    assert r.status_code == 200 and r.json()["status"] == "draining"
    assert (await client.post(f"{V1}/runners/tasks/claim", headers=bearer(rt))).status_code == 204
    r = await client.post(f"{V1}/runners/{rid}/resume", headers=bearer(alice))
    assert r.status_code == 200 and r.json()["status"] == "online"
    assert (await client.post(f"{V1}/runners/tasks/claim", headers=bearer(rt))).status_code == 200


async def test_a_drain_survives_the_runners_next_heartbeat(client: httpx.AsyncClient):
    rt, rid = await _runner(client)
    alice = await sign_in(client, ALICE)
    await create_task(client, alice)
    await client.post(f"{V1}/runners/{rid}/drain", headers=bearer(alice))
    await heartbeat(client, rt, status="online")
    runner = (await client.get(f"{V1}/runners/{rid}", headers=bearer(alice))).json()
    assert runner["status"] == "draining"
    assert (await client.post(f"{V1}/runners/tasks/claim", headers=bearer(rt))).status_code == 204


async def test_ban_needs_the_operator_and_revokes_the_runner_token(client: httpx.AsyncClient):
    rt, rid = await _runner(client)
    alice = await sign_in(client, ALICE)
    r = await client.post(f"{V1}/runners/{rid}/ban", headers=bearer(alice))
    assert r.status_code == 403 and error_code(r) == "admin_required"
    admin = await sign_in(client, ADMIN)
    r = await client.post(f"{V1}/runners/{rid}/ban", headers=bearer(admin))
    assert r.status_code == 200 and r.json()["banned"] is True and r.json()["status"] == "offline"
    r = await heartbeat(client, rt)
    assert r.status_code == 401 and r.json()["error"]["message"] == "token revoked"


async def test_liveness_sweep_takes_silent_runners_offline_and_requeues_their_tasks(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    rt, rid = await _runner(client)
    alive, _ = await _runner(client)
    alice = await sign_in(client, ALICE)
    task = await create_task(client, alice, max_attempts=3)
    await claimed(client, rt)
    clock.advance(250)
    await heartbeat(client, alive)
    clock.advance(51)  # the first runner is silent for 301 s > RUNNER_OFFLINE_TIMEOUT 300 s
    assert await sweep_liveness(container, container.settings.offline_timeout_seconds) == 1
    runner = (await client.get(f"{V1}/runners/{rid}", headers=bearer(alice))).json()
    assert runner["status"] == "offline"
    clock.advance(1)  # the next lease-expiry tick
    await expire_leases(container)
    t = await get_task(client, alice, task["id"])
    assert (t["status"], t["attempts"], t["runner_id"]) == ("pending", 1, None)
    assert "lease expired" in t["last_error"]


async def test_liveness_sweep_requeues_tasks_in_the_same_tick(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    rt, _ = await _runner(client)
    alice = await sign_in(client, ALICE)
    task = await create_task(client, alice)
    await claimed(client, rt)
    clock.advance(301)
    assert await sweep_liveness(container, 300) == 1
    assert (await get_task(client, alice, task["id"]))["status"] == "pending"


async def test_a_runner_below_the_minimum_version_is_426(container: Container):
    async with custom_client(container, runner_min_version="1.0.0") as (http, _):
        alice = await sign_in(http, ALICE)
        old = {"device_id": device(), "runner_version": "0.9.5"}
        r = await http.post(f"{V1}/runners", json=old, headers=bearer(alice))
        assert r.status_code == 426 and error_code(r) == "runner_version_too_old"
        assert r.json()["error"]["details"] == {"minimum": "1.0.0"}
        new = {"device_id": device(), "runner_version": "1.2.0"}
        r = await http.post(f"{V1}/runners", json=new, headers=bearer(alice))
        assert r.status_code == 201 and r.json()["runner"]["runner_version"] == "1.2.0"


async def test_push_url_default_follows_embedded_mode(client: httpx.AsyncClient):
    rt, _ = await _runner(client)
    r = await client.put(
        f"{V1}/runners/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=bearer(rt)
    )
    if TEST_DB == "postgres":
        assert r.status_code == 422 and error_code(r) == "webhook_url_refused"
    else:
        assert r.status_code == 200 and r.json()["url"] == "http://127.0.0.1:9/hook"


@pytest.mark.parametrize("allow", [True, False])
async def test_loopback_push_url_follows_webhook_allow_private(container: Container, allow: bool):
    async with custom_client(container, webhook_allow_private=allow) as (http, _):
        rt, rid = await _runner(http)
        url = "http://127.0.0.1:9/hook"
        r = await http.put(f"{V1}/runners/webhooks", json={"url": url}, headers=bearer(rt))
        if allow:
            assert r.status_code == 200
            assert r.json()["id"] == rid and r.json()["webhook_secret"]
            runner = (await http.get(f"{V1}/runners/{rid}", headers=bearer(rt))).json()
            assert runner["webhook"] == url
        else:
            assert r.status_code == 422 and error_code(r) == "webhook_url_refused"
            assert r.json()["error"]["details"]["field"] == "url"


async def test_a_non_http_push_url_is_422(container: Container):
    async with custom_client(container, webhook_allow_private=True) as (http, _):
        rt, _ = await _runner(http)
        r = await http.put(
            f"{V1}/runners/webhooks", json={"url": "ftp://example.com/x"}, headers=bearer(rt)
        )
        assert r.status_code == 422 and error_code(r) == "webhook_url_refused"
        assert "scheme" in r.json()["error"]["message"]

"""Webhook subscriptions over HTTP (/api/v1/webhooks): create (secret shown once), read, list
(paginated), update, delete, rotate, who may see what, and what is refused by name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from tests.conftest import ADMIN, ALICE, BOB, bearer, make_settings, sign_in
from tests.integration.queue_helpers import V1, custom_client, device, error_code, register_runner

HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture
async def container(
    database_url: str, tmp_path: Path, clock: FrozenClock
) -> AsyncIterator[Container]:
    # Test receivers live on 127.0.0.1: allowed here (the refusal has its own test).
    settings = make_settings(database_url, tmp_path / "home", webhook_allow_private="true")
    c = Container(settings=settings, db=Database(settings.resolved_database_url), clock=clock)
    yield c
    await c.db.dispose()


async def _create(
    client: httpx.AsyncClient, token: str, *, url: str = HOOK, **body: Any
) -> dict[str, Any]:
    body.setdefault("events", ["task.created", "task.completed"])
    r = await client.post(f"{V1}/webhooks", json={"url": url, **body}, headers=bearer(token))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_create_returns_the_secret_once_and_reads_never_show_it(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    created = await _create(client, alice, description="ci hook")
    assert created["secret"].startswith("whsec_")
    assert created["owner_address"] == ALICE.address.lower()
    assert created["events"] == ["task.created", "task.completed"]
    assert created["enabled"] is True and created["consecutive_failures"] == 0
    assert created["description"] == "ci hook"
    got = await client.get(f"{V1}/webhooks/{created['id']}", headers=bearer(alice))
    assert got.status_code == 200
    assert "secret" not in got.json()
    assert got.json() == {k: v for k, v in created.items() if k != "secret"}
    listed = await client.get(f"{V1}/webhooks", headers=bearer(alice))
    assert [w["id"] for w in listed.json()["items"]] == [created["id"]]
    assert all("secret" not in w for w in listed.json()["items"])


async def test_unknown_event_type_is_422_naming_events(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    r = await client.post(
        f"{V1}/webhooks",
        json={"url": HOOK, "events": ["task.created", "task.exploded"]},
        headers=bearer(alice),
    )
    assert r.status_code == 422
    assert error_code(r) == "unknown_event_type"
    assert r.json()["error"]["details"]["field"] == "events"
    assert "task.exploded" in r.json()["error"]["message"]


async def test_future_feature_event_types_are_accepted_as_subscriptions(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    kinds = ["prompt.completed", "fl.round.completed", "fl.session.completed", "runner.offline"]
    assert (await _create(client, alice, events=kinds))["events"] == kinds


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/hook", "http://user:pw@127.0.0.1:9/hook", "not a url", "http:///nohost"],
)
async def test_a_bad_url_is_422_naming_url(client: httpx.AsyncClient, url: str):
    alice = await sign_in(client, ALICE)
    r = await client.post(
        f"{V1}/webhooks", json={"url": url, "events": ["task.created"]}, headers=bearer(alice)
    )
    assert r.status_code == 422, r.text
    assert error_code(r) == "webhook_url_refused"
    assert r.json()["error"]["details"]["field"] == "url"


async def test_metadata_and_link_local_urls_are_refused_even_when_private_ones_are_allowed(
    container: Container,
):
    async with custom_client(container, webhook_allow_private="true") as (http, _):
        alice = await sign_in(http, ALICE)
        for url in ("http://169.254.169.254/latest", "http://[fe80::1]/hook"):
            r = await http.post(
                f"{V1}/webhooks",
                json={"url": url, "events": ["task.created"]},
                headers=bearer(alice),
            )
            assert r.status_code == 422, (url, r.text)
            assert r.json()["error"]["details"]["field"] == "url"
        await _create(http, alice, url="http://10.0.0.5/hook")  # private: allowed here


async def test_a_private_url_is_refused_when_private_targets_are_not_allowed(
    container: Container,
):
    async with custom_client(container, webhook_allow_private="false") as (http, _):
        alice = await sign_in(http, ALICE)
        for url in (HOOK, "http://10.0.0.5/hook", "http://169.254.169.254/latest"):
            r = await http.post(
                f"{V1}/webhooks",
                json={"url": url, "events": ["task.created"]},
                headers=bearer(alice),
            )
            assert r.status_code == 422, url
            assert r.json()["error"]["details"]["field"] == "url"
        # An IP-literal public address needs no lookup and passes the guard.
        await _create(http, alice, url="https://93.184.216.34/hook")


async def test_empty_events_and_unknown_fields_are_refused(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    empty = await client.post(
        f"{V1}/webhooks", json={"url": HOOK, "events": []}, headers=bearer(alice)
    )
    assert empty.status_code == 422
    extra = await client.post(
        f"{V1}/webhooks",
        json={"url": HOOK, "events": ["task.created"], "secret": "whsec_mine"},
        headers=bearer(alice),
    )
    assert extra.status_code == 422


async def test_update_changes_url_events_and_description(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    hook = await _create(client, alice)
    r = await client.put(
        f"{V1}/webhooks/{hook['id']}",
        json={"url": "http://127.0.0.1:10/other", "events": ["task.failed"], "description": "x"},
        headers=bearer(alice),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["url"] == "http://127.0.0.1:10/other"
    assert body["events"] == ["task.failed"] and body["description"] == "x"
    bad = await client.put(
        f"{V1}/webhooks/{hook['id']}", json={"events": ["nope"]}, headers=bearer(alice)
    )
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "events"
    bad_url = await client.put(
        f"{V1}/webhooks/{hook['id']}", json={"url": "gopher://x"}, headers=bearer(alice)
    )
    assert bad_url.status_code == 422 and bad_url.json()["error"]["details"]["field"] == "url"


async def test_disabling_and_re_enabling_resets_the_breaker(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    hook = await _create(client, alice)
    off = await client.put(
        f"{V1}/webhooks/{hook['id']}", json={"enabled": False}, headers=bearer(alice)
    )
    assert off.json()["enabled"] is False and off.json()["disabled_reason"]
    on = await client.put(
        f"{V1}/webhooks/{hook['id']}", json={"enabled": True}, headers=bearer(alice)
    )
    assert on.json()["enabled"] is True
    assert on.json()["disabled_reason"] is None and on.json()["consecutive_failures"] == 0


async def test_delete_removes_the_endpoint(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    hook = await _create(client, alice)
    r = await client.delete(f"{V1}/webhooks/{hook['id']}", headers=bearer(alice))
    assert r.status_code == 204
    gone = await client.get(f"{V1}/webhooks/{hook['id']}", headers=bearer(alice))
    assert gone.status_code == 404 and error_code(gone) == "webhook_not_found"
    again = await client.delete(f"{V1}/webhooks/{hook['id']}", headers=bearer(alice))
    assert again.status_code == 404


async def test_another_users_endpoint_answers_404_everywhere(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    bob = await sign_in(client, BOB)
    hook = await _create(client, alice)
    wid = hook["id"]
    calls = [
        client.get(f"{V1}/webhooks/{wid}", headers=bearer(bob)),
        client.put(f"{V1}/webhooks/{wid}", json={"enabled": False}, headers=bearer(bob)),
        client.post(f"{V1}/webhooks/{wid}/rotate-secret", headers=bearer(bob)),
        client.get(f"{V1}/webhooks/{wid}/deliveries", headers=bearer(bob)),
        client.delete(f"{V1}/webhooks/{wid}", headers=bearer(bob)),
    ]
    for call in calls:
        r = await call
        assert r.status_code == 404, r.text
        assert error_code(r) == "webhook_not_found"
    listed = await client.get(f"{V1}/webhooks", headers=bearer(bob))
    assert listed.json()["items"] == []
    still = await client.get(f"{V1}/webhooks/{wid}", headers=bearer(alice))
    assert still.status_code == 200 and still.json()["enabled"] is True


async def test_an_admin_sees_and_manages_every_endpoint(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    bob = await sign_in(client, BOB)
    admin = await sign_in(client, ADMIN)
    a = await _create(client, alice)
    b = await _create(client, bob)
    listed = await client.get(f"{V1}/webhooks", headers=bearer(admin))
    assert {w["id"] for w in listed.json()["items"]} == {a["id"], b["id"]}
    got = await client.get(f"{V1}/webhooks/{a['id']}", headers=bearer(admin))
    assert got.status_code == 200 and got.json()["owner_address"] == ALICE.address.lower()
    off = await client.put(
        f"{V1}/webhooks/{b['id']}", json={"enabled": False}, headers=bearer(admin)
    )
    assert off.status_code == 200 and off.json()["enabled"] is False


async def test_the_list_is_paginated_newest_first(client: httpx.AsyncClient, clock: FrozenClock):
    alice = await sign_in(client, ALICE)
    ids = []
    for _ in range(5):
        ids.append((await _create(client, alice))["id"])
        clock.advance(1)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await client.get(f"{V1}/webhooks", params=params, headers=bearer(alice))
        assert r.status_code == 200
        page = r.json()
        assert page["limit"] == 2 and len(page["items"]) <= 2
        seen += [w["id"] for w in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))


async def test_rotate_secret_shows_a_new_secret_once_and_keeps_the_old_one_for_a_day(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    hook = await _create(client, alice)
    r = await client.post(f"{V1}/webhooks/{hook['id']}/rotate-secret", headers=bearer(alice))
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != hook["secret"]
    ends = rotated["previous_secret_expires_at"]
    assert datetime.fromisoformat(ends) == clock.now() + timedelta(hours=24)
    got = await client.get(f"{V1}/webhooks/{hook['id']}", headers=bearer(alice))
    assert "secret" not in got.json()
    assert got.json()["previous_secret_expires_at"] == ends


async def test_an_account_may_have_at_most_25_endpoints(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    for _ in range(25):
        await _create(client, alice)
    r = await client.post(
        f"{V1}/webhooks", json={"url": HOOK, "events": ["task.created"]}, headers=bearer(alice)
    )
    assert r.status_code == 409 and error_code(r) == "too_many_webhooks"
    bob = await sign_in(client, BOB)
    await _create(client, bob)  # a per-account limit


async def test_idempotency_key_replays_the_created_webhook(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    body = {"url": HOOK, "events": ["task.created"]}
    headers = {**bearer(alice), "Idempotency-Key": "hook-1"}
    first = await client.post(f"{V1}/webhooks", json=body, headers=headers)
    second = await client.post(f"{V1}/webhooks", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    listed = await client.get(f"{V1}/webhooks", headers=bearer(alice))
    assert len(listed.json()["items"]) == 1
    other = await client.post(
        f"{V1}/webhooks", json={**body, "events": ["task.failed"]}, headers=headers
    )
    assert other.status_code == 422


async def test_an_idempotent_replay_answers_the_current_secret_and_stores_none(
    client: httpx.AsyncClient, container: Container
):
    """The secret is not kept in the stored answer: a replay after a rotation answers the
    secret that signs now, not the one the rotation replaced."""
    from sqlalchemy import select

    from parity.idempotency.models import IdempotencyRecord

    alice = await sign_in(client, ALICE)
    body = {"url": HOOK, "events": ["task.created"]}
    headers = {**bearer(alice), "Idempotency-Key": "hook-rotated"}
    first = await client.post(f"{V1}/webhooks", json=body, headers=headers)
    assert first.status_code == 201, first.text
    hook = first.json()
    rotated = await client.post(f"{V1}/webhooks/{hook['id']}/rotate-secret", headers=bearer(alice))
    assert rotated.status_code == 200, rotated.text

    again = await client.post(f"{V1}/webhooks", json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert again.json()["id"] == hook["id"]
    assert again.json()["secret"] == rotated.json()["secret"] != hook["secret"]
    async with container.db.read_session() as session:
        stored = (await session.scalars(select(IdempotencyRecord.response_body))).all()
    assert stored and all("whsec_" not in text for text in stored)


@pytest.mark.parametrize("value", ["yes", 1, "true"])
async def test_enabled_must_be_a_json_boolean(client: httpx.AsyncClient, value: Any):
    alice = await sign_in(client, ALICE)
    hook = await _create(client, alice)
    r = await client.put(
        f"{V1}/webhooks/{hook['id']}", json={"enabled": value}, headers=bearer(alice)
    )
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["error"]["details"]["errors"]] == ["enabled"]


async def test_every_route_needs_a_token(client: httpx.AsyncClient):
    wid = "00000000-0000-0000-0000-000000000001"
    for method, path in [
        ("POST", "/webhooks"),
        ("GET", "/webhooks"),
        ("GET", f"/webhooks/{wid}"),
        ("PUT", f"/webhooks/{wid}"),
        ("DELETE", f"/webhooks/{wid}"),
        ("POST", f"/webhooks/{wid}/rotate-secret"),
        ("GET", f"/webhooks/{wid}/deliveries"),
        ("POST", f"/webhooks/deliveries/{wid}/redeliver"),
        ("GET", "/events"),
    ]:
        r = await client.request(method, f"{V1}{path}")
        assert r.status_code == 401, (method, path)


async def test_a_runner_token_subscribes_for_the_runners_owner(client: httpx.AsyncClient):
    bob = await sign_in(client, BOB)
    runner_token, _ = await register_runner(client, bob, device())
    hook = await _create(client, runner_token, events=["runner.offline"])
    assert hook["owner_address"] == BOB.address.lower()
    mine = await client.get(f"{V1}/webhooks", headers=bearer(bob))
    assert [w["id"] for w in mine.json()["items"]] == [hook["id"]]


async def test_the_legacy_api_prefix_serves_the_same_routes(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    hook = await _create(client, alice)
    r = await client.get(f"/api/webhooks/{hook['id']}", headers=bearer(alice))
    assert r.status_code == 200 and r.json()["id"] == hook["id"]


async def test_unknown_delivery_and_bad_event_filters_are_refused(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    missing = await client.post(
        f"{V1}/webhooks/deliveries/00000000-0000-0000-0000-000000000001/redeliver",
        headers=bearer(alice),
    )
    assert missing.status_code == 404 and error_code(missing) == "webhook_delivery_not_found"
    bad = await client.get(f"{V1}/events", params={"types": "task.nope"}, headers=bearer(alice))
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "types"

"""A runner stores an output too large to report inline with ``PUT
/runners/tasks/{id}/output``: fenced by the task's claim token, pinned for the task's creator
(their quota, named after the task), never for the runner, so a runner's own pins do not fill
up with what it produced; limited by STORAGE_MAX_UPLOAD_BYTES, not MAX_REQUEST_BODY_BYTES.
SQLite and PostgreSQL."""

from __future__ import annotations

import httpx

from parity.container import Container
from tests.conftest import ALICE, BOB, bearer, sign_in
from tests.integration.queue_helpers import (
    act,
    claimed,
    create_task,
    custom_client,
    device,
    error_code,
    register_runner,
)

V1 = "/api/v1"
OUTPUT = b"x" * 100_000 + b"\nthe end\n"


async def _store(
    http: httpx.AsyncClient, runner: str, task_id: str, token: str | None, data: bytes = OUTPUT
) -> httpx.Response:
    headers = {**bearer(runner), "content-type": "application/octet-stream"}
    if token is not None:
        headers["X-Claim-Token"] = token
    return await http.put(f"{V1}/runners/tasks/{task_id}/output", content=data, headers=headers)


async def _pins(http: httpx.AsyncClient, token: str) -> list[dict[str, object]]:
    r = await http.get(f"{V1}/storage/pins", headers=bearer(token))
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def _usage(http: httpx.AsyncClient, token: str) -> tuple[int, int]:
    r = await http.get(f"{V1}/storage/usage", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()["pinned_bytes"], r.json()["pin_count"]


async def _held(http: httpx.AsyncClient) -> tuple[str, str, str, str, str]:
    """Alice's task claimed by Bob's runner: (alice, bob, runner token, task id, claim)."""
    alice, bob = await sign_in(http, ALICE), await sign_in(http, BOB)
    runner, _ = await register_runner(http, bob, device())
    task = await create_task(http, alice)
    got = await claimed(http, runner)
    assert got["task"]["id"] == task["id"]
    return alice, bob, runner, task["id"], got["claim_token"]


async def test_the_output_is_pinned_for_the_tasks_creator_not_the_runner(
    client: httpx.AsyncClient,
):
    alice, bob, runner, task_id, token = await _held(client)
    r = await _store(client, runner, task_id, token)
    assert r.status_code == 201, r.text
    cid = r.json()["cid"]
    assert r.json()["size"] == len(OUTPUT)
    [pin] = await _pins(client, alice)
    assert (pin["cid"], pin["size"], pin["name"]) == (cid, len(OUTPUT), f"output of task {task_id}")
    assert await _usage(client, alice) == (len(OUTPUT), 1)
    assert await _pins(client, bob) == [] and await _usage(client, bob) == (0, 0)
    again = await _store(client, runner, task_id, token)  # a retried upload: the same pin
    assert again.status_code == 201 and again.json()["cid"] == cid
    assert await _usage(client, alice) == (len(OUTPUT), 1)

    done = await act(client, runner, task_id, "complete", token, output="x…", output_cid=cid)
    assert done.status_code == 200, done.text
    result = (await client.get(f"{V1}/tasks/{task_id}/result", headers=bearer(alice))).json()
    assert result["output_cid"] == cid
    got = await client.get(f"{V1}/storage/download/{cid}", headers=bearer(alice))
    assert got.content == OUTPUT
    # Theirs to unpin.
    gone = await client.delete(f"{V1}/storage/pin/{cid}", headers=bearer(alice))
    assert gone.status_code == 204
    assert await _usage(client, alice) == (0, 0)


async def test_only_the_current_claim_stores_and_a_refusal_pins_nothing(
    client: httpx.AsyncClient,
):
    alice, bob, runner, task_id, token = await _held(client)
    missing = await _store(client, runner, task_id, None)
    assert missing.status_code == 422
    assert missing.json()["error"]["details"]["field"] == "X-Claim-Token"
    wrong = await _store(client, runner, task_id, "not-the-claim")
    assert wrong.status_code == 409, wrong.text
    other, _ = await register_runner(client, bob, device())
    foreign = await _store(client, other, task_id, token)  # another runner, the same token
    assert foreign.status_code in (403, 409), foreign.text
    session = await _store(client, alice, task_id, token)  # not a runner token
    assert session.status_code in (401, 403), session.text
    done = await act(client, runner, task_id, "complete", token, output="hi")
    assert done.status_code == 200, done.text
    late = await _store(client, runner, task_id, token)  # the task has ended
    assert late.status_code == 409 and error_code(late) == "invalid_transition", late.text
    assert "cannot store its output" in late.json()["error"]["message"]
    assert await _pins(client, alice) == [] and await _pins(client, bob) == []


async def test_the_creators_quota_limits_it_and_the_upload_limit_not_the_body_limit(
    container: Container,
):
    async with custom_client(
        container, storage_quota_bytes=150_000, max_request_body_bytes=50_000
    ) as (http, _):
        alice, _bob, runner, task_id, token = await _held(http)
        # Over MAX_REQUEST_BODY_BYTES, under STORAGE_MAX_UPLOAD_BYTES: stored.
        first = await _store(http, runner, task_id, token)
        assert first.status_code == 201, first.text
        # Another 100 KB would pass the creator's 150,000 bytes: refused, naming them.
        over = await _store(http, runner, task_id, token, b"y" * 100_000)
        assert over.status_code == 409, over.text
        assert error_code(over) == "storage_quota_exceeded"
        assert ALICE.address.lower() in over.json()["error"]["message"].lower()
        assert await _usage(http, alice) == (len(OUTPUT), 1)


async def test_the_api_mirror_is_routed_and_only_the_output_path_escapes_the_body_limit(
    container: Container,
):
    async with custom_client(
        container, max_request_body_bytes=50_000, storage_max_upload_bytes=150_000
    ) as (http, _):
        alice, _bob, runner, task_id, token = await _held(http)
        headers = {**bearer(runner), "content-type": "application/octet-stream"}
        mirror = await http.put(
            f"/api/runners/tasks/{task_id}/output",
            content=OUTPUT,
            headers={**headers, "X-Claim-Token": token},
        )
        assert mirror.status_code == 201, mirror.text
        [pin] = await _pins(http, alice)
        assert pin["cid"] == mirror.json()["cid"]
        # Past STORAGE_MAX_UPLOAD_BYTES the route's own 413, never the body limit's (which
        # parity-runner reads as a server without the route).
        big = await _store(http, runner, task_id, token, b"z" * 200_000)
        assert big.status_code == 413 and error_code(big) == "upload_too_large", big.text
        # Neighbouring paths keep MAX_REQUEST_BODY_BYTES.
        for path in (
            f"{V1}/runners/tasks/{task_id}/output/x",
            f"{V1}/runners/tasks/{task_id}/complete",
            f"/api/v2/runners/tasks/{task_id}/output",
            f"{V1}/tasks/{task_id}/output",
        ):
            r = await http.put(path, content=OUTPUT, headers=headers)
            assert r.status_code == 413 and error_code(r) == "payload_too_large", (path, r.text)

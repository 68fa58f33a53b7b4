"""The client side of compute tasks over HTTP: create, list, read, update, cancel, results,
attempts, logs, idempotency, scheduling order and hidden internal types."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from parity.api import errors as api_errors
from parity.clock import FrozenClock
from parity.container import Container
from parity.tasks.models import Task
from tests.conftest import ADMIN, ALICE, BOB, bearer, sign_in
from tests.integration.queue_helpers import (
    V1,
    act,
    attempts,
    claim,
    claimed,
    create_task,
    device,
    error_code,
    get_task,
    heartbeat,
    register_runner,
)


def _field(r: httpx.Response) -> str:
    details = r.json()["error"]["details"]
    return str(details["field"] if "field" in details else details["errors"][0]["field"])


async def _runner(client: httpx.AsyncClient, token: str, **kw: Any) -> str:
    return (await register_runner(client, token, device(), **kw))[0]


async def test_create_command_task_splits_a_string_command(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    t = await create_task(client, alice, config={"command": "echo 'hello world'"})
    assert t["status"] == "pending" and t["type"] == "command"
    assert t["config"]["command"] == ["echo", "hello world"]
    assert t["config"]["command_string"] == "echo 'hello world'"
    assert (t["config"]["env"], t["config"]["network"]) == ({}, False)
    assert t["creator_address"] == ALICE.address.lower()
    assert (t["attempts"], t["max_attempts"], t["runner_id"]) == (0, 3, None)


async def test_create_docker_task_from_config_image(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    t = await create_task(client, alice, type="docker", config={"image": "alpine:3.19"})
    assert t["type"] == "docker" and t["config"]["image"] == "alpine:3.19"
    assert t["config"]["command"] is None and t["resources"]["docker"] is True


async def test_legacy_top_level_image_makes_a_docker_task(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    r = await client.post(
        "/api/tasks", json={"title": "legacy", "image": "python:3.12-slim"}, headers=bearer(alice)
    )
    assert r.status_code == 201, r.text
    assert r.json()["type"] == "docker" and r.json()["config"]["image"] == "python:3.12-slim"


async def test_legacy_environment_carries_the_type_when_type_is_not_given(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    legacy = {"type": "docker", "config": {"image_name": "alpine"}}
    r = await client.post(
        "/api/tasks", json={"title": "d", "environment": legacy}, headers=bearer(alice)
    )
    assert r.status_code == 201, r.text
    assert r.json()["type"] == "docker" and r.json()["config"]["image"] == "alpine"
    # A type given at the top level is the type.
    r = await client.post(
        "/api/tasks",
        json={
            "title": "c",
            "type": "command",
            "config": {"command": ["true"]},
            "environment": legacy,
        },
        headers=bearer(alice),
    )
    assert r.status_code == 201, r.text
    assert r.json()["type"] == "command"


async def test_create_refuses_a_bad_config_by_its_field(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    for config, field in (({}, "config.command"), ({"command": [1]}, "config.command[0]")):
        r = await client.post(
            f"{V1}/tasks", json={"title": "t", "config": config}, headers=bearer(alice)
        )
        assert r.status_code == 422 and error_code(r) == "invalid_input"
        assert _field(r) == field


class _QuietLog:
    """Stands in for the API error logger: rendering a 500's traceback takes ~30 s."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"config": {"command": ["true"]}}, "title"),
        ({"title": "t", "type": "gpu", "config": {"command": ["true"]}}, "type"),
        ({"title": "t", "config": {"command": ["true"]}, "max_attempts": 2.5}, "max_attempts"),
        ({"title": "t", "config": {"command": ["true"]}, "max_attempts": 99}, "max_attempts"),
        # Booleans are true or false, not "yes" or 1 (README, API conventions).
        (
            {"title": "t", "config": {"command": ["true"]}, "resources": {"docker": "yes"}},
            "resources.docker",
        ),
        (
            {"title": "t", "config": {"command": ["true"]}, "resources": {"docker": 1}},
            "resources.docker",
        ),
    ],
)
async def test_create_refuses_bad_fields_by_name(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, body: dict[str, Any], field: str
):
    monkeypatch.setattr(api_errors, "log", _QuietLog())
    alice = await sign_in(client, ALICE)
    r = await client.post(f"{V1}/tasks", json=body, headers=bearer(alice))
    assert r.status_code == 422, r.text
    assert _field(r) == field


async def test_multipart_with_an_image_file_makes_a_docker_task_from_its_cid(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    image = b"not really a tar, but bytes are bytes" * 1000
    task_json = json.dumps({"title": "legacy", "description": "d", "config": {"command": ["run"]}})
    r = await client.post(
        f"{V1}/tasks",
        data={"task": task_json},
        files={"image": ("myimage.tar", image, "application/x-tar")},
        headers=bearer(alice),
    )
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["type"] == "docker"
    cid = task["config"]["image_cid"]
    assert task["config"]["command"] == ["run"]
    stored = await client.get(f"{V1}/storage/download/{cid}", headers=bearer(alice))
    assert stored.status_code == 200 and stored.content == image
    info = (await client.get(f"{V1}/storage/info/{cid}", headers=bearer(alice))).json()
    assert info["size"] == len(image) and info["pinned"] is True


async def test_multipart_without_a_task_field_is_422(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    r = await client.post(
        f"{V1}/tasks", data={"title": "t"}, files={"image": b"x"}, headers=bearer(alice)
    )
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "task"


async def test_malformed_json_body_is_422(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    headers = bearer(alice) | {"content-type": "application/json"}
    r = await client.post(f"{V1}/tasks", content=b"{not json", headers=headers)
    assert r.status_code == 422 and _field(r) == "body"


async def test_task_list_is_a_bare_array_with_total_count_filters_and_offset(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    ids = []
    for i in range(3):
        ids.append((await create_task(client, alice, title=f"c{i}"))["id"])
        clock.advance(1)
    docker = await create_task(client, alice, type="docker", config={"image": "alpine:3"})
    runner = await _runner(client, alice)
    clock.advance(1)
    first = await claimed(client, runner)  # the oldest command task
    assert first["task"]["id"] == ids[0]
    r = await client.get(f"{V1}/tasks", headers=bearer(alice))
    assert isinstance(r.json(), list) and r.headers["X-Total-Count"] == "4"
    assert [t["id"] for t in r.json()] == [docker["id"], ids[2], ids[1], ids[0]]
    pending = await client.get(f"{V1}/tasks?status=pending", headers=bearer(alice))
    assert {t["id"] for t in pending.json()} == {docker["id"], ids[1], ids[2]}
    by_type = await client.get(f"{V1}/tasks?type=docker", headers=bearer(alice))
    assert [t["id"] for t in by_type.json()] == [docker["id"]]
    assert by_type.headers["X-Total-Count"] == "1"
    page = await client.get(f"{V1}/tasks?limit=2&offset=1", headers=bearer(alice))
    assert [t["id"] for t in page.json()] == [ids[2], ids[1]]
    assert page.headers["X-Total-Count"] == "4"


async def test_other_users_tasks_are_invisible_and_admin_sees_all(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    bob = await sign_in(client, BOB)
    admin = await sign_in(client, ADMIN)
    t = await create_task(client, alice)
    r = await client.get(f"{V1}/tasks", headers=bearer(bob))
    assert r.json() == [] and r.headers["X-Total-Count"] == "0"
    for suffix in ("", "/status", "/attempts", "/logs"):
        r = await client.get(f"{V1}/tasks/{t['id']}{suffix}", headers=bearer(bob))
        assert r.status_code == 404 and error_code(r) == "task_not_found", suffix
    r = await client.delete(f"{V1}/tasks/{t['id']}", headers=bearer(bob))
    assert r.status_code == 404
    assert [x["id"] for x in (await client.get(f"{V1}/tasks", headers=bearer(admin))).json()] == [
        t["id"]
    ]
    assert (await get_task(client, admin, t["id"]))["title"] == "t"


async def test_unknown_task_is_404_and_a_non_uuid_id_is_422(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    r = await client.get(f"{V1}/tasks/{uuid.uuid4()}", headers=bearer(alice))
    assert r.status_code == 404 and error_code(r) == "task_not_found"
    r = await client.get(f"{V1}/tasks/not-a-uuid", headers=bearer(alice))
    assert r.status_code == 422 and _field(r) == "task_id"


async def test_update_merges_fields_into_a_pending_task(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    t = await create_task(client, alice, config={"command": ["echo", "hi"]}, priority=1)
    r = await client.put(
        f"{V1}/tasks/{t['id']}",
        json={"title": "renamed", "config": {"env": {"A": "1"}}, "priority": 7},
        headers=bearer(alice),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["title"], body["priority"], body["description"]) == ("renamed", 7, "")
    assert body["config"]["command"] == ["echo", "hi"] and body["config"]["env"] == {"A": "1"}
    assert (await get_task(client, alice, t["id"]))["title"] == "renamed"


async def test_update_of_a_task_created_with_a_string_command_keeps_it(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    t = await create_task(client, alice, config={"command": "echo hi"})
    r = await client.put(
        f"{V1}/tasks/{t['id']}", json={"config": {"env": {"A": "1"}}}, headers=bearer(alice)
    )
    assert r.status_code == 200, r.text
    assert r.json()["config"]["command"] == ["echo", "hi"]


async def test_update_of_a_running_task_is_409(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    t = await create_task(client, alice)
    await claimed(client, await _runner(client, alice), start=True)
    r = await client.put(f"{V1}/tasks/{t['id']}", json={"title": "x"}, headers=bearer(alice))
    assert r.status_code == 409 and error_code(r) == "task_not_pending"
    assert r.json()["error"]["details"]["status"] == "running"


async def test_cancelling_a_pending_task_is_final_and_repeatable(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    t = await create_task(client, alice)
    runner = await _runner(client, alice)
    first = await client.delete(f"{V1}/tasks/{t['id']}", headers=bearer(alice))
    again = await client.delete(f"{V1}/tasks/{t['id']}", headers=bearer(alice))
    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == again.json()["status"] == "cancelled"
    assert first.json()["updated_at"] == again.json()["updated_at"]
    assert (await claim(client, runner)).status_code == 204


async def test_cancelling_a_running_task_goes_through_the_runner(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    t = await create_task(client, alice)
    runner = await _runner(client, alice)
    c = await claimed(client, runner, start=True)
    r = await client.delete(f"{V1}/tasks/{t['id']}", headers=bearer(alice))
    assert r.json()["status"] == "cancel_requested" and r.json()["cancel_requested"] is True
    hb = await heartbeat(client, runner, claims=[c["claim_token"]])
    assert hb.json()["cancel"] == [t["id"]] and hb.json()["renewed"] == [t["id"]]
    lease = await act(client, runner, t["id"], "lease", c["claim_token"])
    assert lease.status_code == 200 and lease.json()["cancel_requested"] is True
    done = await act(client, runner, t["id"], "fail", c["claim_token"], error="cancelled")
    assert done.status_code == 200 and done.json()["status"] == "cancelled"
    assert (await get_task(client, alice, t["id"]))["completed_at"] is not None
    [attempt] = await attempts(client, alice, t["id"])
    assert (attempt["outcome"], attempt["error"]) == ("cancelled", "cancelled")


async def test_cancelling_a_completed_task_is_409(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    t = await create_task(client, alice)
    runner = await _runner(client, alice)
    c = await claimed(client, runner)
    await act(client, runner, t["id"], "complete", c["claim_token"], output="done")
    r = await client.delete(f"{V1}/tasks/{t['id']}", headers=bearer(alice))
    assert r.status_code == 409 and error_code(r) == "task_not_cancellable"
    assert r.json()["error"]["details"]["status"] == "completed"


async def test_a_failed_tasks_missing_result_is_not_said_to_come_later(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    t = await create_task(client, alice, max_attempts=1)
    runner = await _runner(client, alice)
    c = await claimed(client, runner, start=True)
    await act(client, runner, t["id"], "fail", c["claim_token"], error="exit code 3")
    r = await client.get(f"{V1}/tasks/{t['id']}/result", headers=bearer(alice))
    assert r.status_code == 404 and error_code(r) == "result_not_found"
    assert r.json()["error"]["details"]["status"] == "failed"
    message = r.json()["error"]["message"]
    assert "yet" not in message and "failed" in message and "exit code 3" in message


async def test_a_pending_task_no_online_runner_fits_says_what_it_waits_for(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    await _runner(client, alice, cpu_cores=4, memory_mb=4096)
    small = await create_task(client, alice, resources={"cpu_cores": 2})
    assert (await get_task(client, alice, small["id"]))["waiting_for"] is None
    big = await create_task(client, alice, resources={"gpus": 1, "docker": True, "cpu_cores": 2})
    waiting = (await get_task(client, alice, big["id"]))["waiting_for"]
    assert waiting == (
        "no online runner is big enough for it: it needs cpu_cores >= 2, gpus >= 1, a docker engine"
    )
    # Lists do not compute it; a runner that fits ends the wait's reason.
    listed = (await client.get(f"{V1}/tasks", headers=bearer(alice))).json()
    assert all(t["waiting_for"] is None for t in listed)
    await _runner(client, alice, cpu_cores=8, gpus=2, docker=True)
    assert (await get_task(client, alice, big["id"]))["waiting_for"] is None


async def test_status_result_attempts_and_reward(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    t = await create_task(client, alice)
    runner = await _runner(client, alice)
    url = f"{V1}/tasks/{t['id']}"
    r = await client.get(f"{url}/result", headers=bearer(alice))
    assert r.status_code == 404 and error_code(r) == "result_not_found"
    assert r.json()["error"]["details"]["status"] == "pending"
    c = await claimed(client, runner, start=True)
    done = {"output": "hi\n", "exit_code": 0, "result_hash": "abc123"}
    await act(client, runner, t["id"], "complete", c["claim_token"], **done)
    status = (await client.get(f"{url}/status", headers=bearer(alice))).json()
    assert (status["status"], status["attempts"]) == ("completed", 1)
    assert status["runner_id"] == c["task"]["runner_id"]
    result = (await client.get(f"{url}/result", headers=bearer(alice))).json()
    assert (result["output"], result["exit_code"], result["result_hash"]) == ("hi\n", 0, "abc123")
    assert result["attempt"] == 1 and result["task_id"] == t["id"]
    [a] = (await client.get(f"{url}/attempts", headers=bearer(alice))).json()
    assert (a["attempt"], a["outcome"], a["exit_code"]) == (1, "completed", 0)
    reward = (await client.get(f"{url}/reward", headers=bearer(alice))).json()
    assert (reward["status"], reward["reward"], reward["paid"]) == ("not_priced", None, False)


async def test_logs_read_with_an_after_cursor_and_an_attempt_filter(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    t = await create_task(client, alice)
    first, second = await _runner(client, alice), await _runner(client, alice)
    c1 = await claimed(client, first, start=True)
    for seq in (0, 1):
        await act(client, first, t["id"], "logs", c1["claim_token"], seq=seq, lines=[f"a{seq}"])
    await act(client, first, t["id"], "fail", c1["claim_token"], error="boom")
    clock.advance(10)
    c2 = await claimed(client, second, start=True)
    await act(client, second, t["id"], "logs", c2["claim_token"], seq=0, lines=["b0"])
    url = f"{V1}/tasks/{t['id']}/logs"
    page = (await client.get(url, params={"limit": 2}, headers=bearer(alice))).json()
    assert [(i["attempt"], i["seq"], i["lines"]) for i in page["items"]] == [
        (1, 0, ["a0"]),
        (1, 1, ["a1"]),
    ]
    assert page["next_after"] == 1 * 10**8 + 1 and page["truncated"] is False
    rest = (
        await client.get(url, params={"after": page["next_after"]}, headers=bearer(alice))
    ).json()
    assert [(i["attempt"], i["lines"]) for i in rest["items"]] == [(2, ["b0"])]
    only2 = (await client.get(url, params={"attempt": 2}, headers=bearer(alice))).json()
    assert [i["lines"] for i in only2["items"]] == [["b0"]]


async def test_idempotency_key_replays_task_creation(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    h = bearer(alice) | {"Idempotency-Key": "task-1"}
    body = {"title": "once", "config": {"command": ["true"]}}
    first = await client.post(f"{V1}/tasks", json=body, headers=h)
    second = await client.post(f"{V1}/tasks", json=body, headers=h)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    listing = await client.get(f"{V1}/tasks", headers=bearer(alice))
    assert listing.headers["X-Total-Count"] == "1"
    other = await client.post(f"{V1}/tasks", json=body | {"title": "other"}, headers=h)
    assert other.status_code == 422


async def test_not_before_in_the_future_delays_the_claim(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    runner = await _runner(client, alice)
    later = (clock.now() + timedelta(seconds=60)).isoformat()
    t = await create_task(client, alice, not_before=later)
    assert (await claim(client, runner)).status_code == 204
    r = await claim(client, runner, t["id"])
    assert r.status_code == 409 and "available_at" in r.json()["error"]["details"]
    assert r.json()["error"]["details"]["available_at"].endswith("Z")
    clock.advance(61)
    assert (await claimed(client, runner))["task"]["id"] == t["id"]


async def test_higher_priority_is_claimed_first(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    runner = await _runner(client, alice, max_concurrent_tasks=3)
    low = await create_task(client, alice, title="low", priority=-5)
    high = await create_task(client, alice, title="high", priority=10)
    mid = await create_task(client, alice, title="mid")
    order = [(await claimed(client, runner))["task"]["id"] for _ in range(3)]
    assert order == [high["id"], mid["id"], low["id"]]


async def test_internal_task_types_are_hidden_unless_asked_for(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    visible = await create_task(client, alice)
    now = clock.now()
    hidden = uuid.uuid4()
    async with container.db.transaction() as s:
        s.add(
            Task(
                id=hidden, title="prompt", description="", type="llm", status="pending",
                config={}, environment=None, req_cpu_cores=0.0, req_memory_mb=0, req_gpus=0,
                req_docker=False, required_labels={}, priority=0, timeout_seconds=None,
                creator_address=ALICE.address.lower(), nonce="00" * 32, max_attempts=1,
                attempts=0, available_at=now, log_bytes=0, created_at=now, updated_at=now,
            )
        )  # fmt: skip
    plain = await client.get(f"{V1}/tasks", headers=bearer(alice))
    assert [t["id"] for t in plain.json()] == [visible["id"]]
    assert plain.headers["X-Total-Count"] == "1"
    every = await client.get(f"{V1}/tasks?include_internal=true", headers=bearer(alice))
    assert {t["id"] for t in every.json()} == {visible["id"], str(hidden)}
    asked = await client.get(f"{V1}/tasks?type=llm", headers=bearer(alice))
    assert [t["id"] for t in asked.json()] == [str(hidden)]


async def test_pending_limits_answer_429_per_client_and_503_overall(container: Container):
    from tests.integration.queue_helpers import custom_client

    body = {"title": "t", "type": "command", "config": {"command": ["true"]}}
    async with custom_client(
        container, task_max_pending_per_client=2, task_max_pending_total=3
    ) as (http, _):
        alice = bearer(await sign_in(http, ALICE))
        bob = bearer(await sign_in(http, BOB))
        assert [
            (await http.post(f"{V1}/tasks", json=body, headers=alice)).status_code for _ in range(3)
        ] == [201, 201, 429]
        assert (await http.post(f"{V1}/tasks", json=body, headers=bob)).status_code == 201
        full = await http.post(f"{V1}/tasks", json=body, headers=bob)
        assert full.status_code == 503 and error_code(full) == "queue_full"
        assert full.headers["retry-after"] == "10"


async def test_query_flags_are_true_or_false_in_any_case_and_nothing_else(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    t = await create_task(client, alice)
    runner = await _runner(client, alice)
    for path, flag in (
        (f"{V1}/tasks", "include_internal"),
        (f"{V1}/tasks/{t['id']}/logs", "follow"),
    ):
        for bad in ("yes", "1", "on", "ture"):
            r = await client.get(path, params={flag: bad}, headers=bearer(alice))
            assert r.status_code == 422 and _field(r) == flag, r.text
        r = await client.get(path, params={flag: "FALSE"}, headers=bearer(alice))
        assert r.status_code == 200, r.text
    r = await claim(client, runner, wait=0, start="1")
    assert r.status_code == 422 and _field(r) == "start", r.text
    r = await claim(client, runner, t["id"], start="True")
    assert r.status_code == 200 and r.json()["task"]["status"] == "running", r.text

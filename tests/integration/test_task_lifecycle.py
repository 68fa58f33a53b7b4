"""The runner side of the queue: claim, start, complete, fail, release, leases, logs, fit,
long-poll, labels, offers, and (on PostgreSQL) concurrent claims."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text

from parity.clock import FrozenClock
from parity.container import Container
from parity.tasks.models import RunnerPush, TaskResult
from tests.conftest import ALICE, BOB, TEST_DB, bearer, sign_in, until
from tests.integration.queue_helpers import (
    V1,
    act,
    attempts,
    claim,
    claimed,
    create_task,
    custom_client,
    device,
    error_code,
    expire_leases,
    expire_offers,
    get_task,
    register_runner,
    when,
)

BACKOFF_PAST = 10  # retry base is 5 s with ±10 % jitter


async def _setup(client: httpx.AsyncClient, **caps: Any) -> tuple[str, str]:
    alice = await sign_in(client, ALICE)
    runner, _ = await register_runner(client, alice, device(), **caps)
    return alice, runner


async def test_claim_next_is_204_when_nothing_is_pending(client: httpx.AsyncClient):
    _, runner = await _setup(client)
    r = await claim(client, runner, wait=0)
    assert r.status_code == 204 and r.content == b""


@pytest.mark.skipif(TEST_DB != "sqlite", reason="SQLite's serialized write path")
async def test_an_empty_claim_on_sqlite_takes_no_write_transaction(
    client: httpx.AsyncClient, container: Container
):
    # A runner long-polling right after its last result finds nothing: answered from a read,
    # without queueing behind every other write for the write lock.
    alice, runner = await _setup(client)
    other, _ = await register_runner(client, alice, device())
    await create_task(client, alice)
    r = await claim(client, other, wait=0)  # the only task goes to the other runner
    assert r.status_code == 200, r.text
    writes: list[str] = []
    listen = container.db.write_engine.sync_engine
    record = lambda *a, **k: writes.append(a[2])  # noqa: E731
    event.listen(listen, "before_cursor_execute", record)
    try:
        r = await claim(client, runner, wait=0)
    finally:
        event.remove(listen, "before_cursor_execute", record)
    assert r.status_code == 204 and writes == []
    await create_task(client, alice)
    writes.clear()
    event.listen(listen, "before_cursor_execute", record)
    try:
        assert (await claim(client, runner, wait=0)).status_code == 200
    finally:
        event.remove(listen, "before_cursor_execute", record)
    # Work there: the claim took a write transaction (its statements run on the connection
    # itself, queue.executors.SqliteExecutor, so only the BEGIN passes through the engine).
    assert any(w.startswith("BEGIN IMMEDIATE") for w in writes)


@pytest.mark.skipif(TEST_DB != "postgres", reason="PostgreSQL's row locks")
async def test_an_empty_claim_on_postgres_answers_from_a_read_without_the_runner_lock(
    client: httpx.AsyncClient, container: Container
):
    # Nothing for this runner: a read answers, no transaction that locks the runner's row
    # (a claim would wait here for the lock another transaction holds).
    alice = await sign_in(client, ALICE)
    runner, body = await register_runner(client, alice, device())
    async with container.db.write_engine.connect() as conn:
        await conn.execute(
            text("SELECT id FROM runners WHERE id = :id FOR UPDATE"), {"id": body["runner"]["id"]}
        )
        r = await asyncio.wait_for(claim(client, runner, wait=0), 10)
        assert r.status_code == 204
        await conn.rollback()
    task = await create_task(client, alice)  # work there: the claim proper takes it
    assert (await claimed(client, runner))["task"]["id"] == task["id"]


async def test_claim_start_complete_records_one_result(client: httpx.AsyncClient):
    alice, runner = await _setup(client)
    task = await create_task(client, alice)
    c = await claimed(client, runner)
    assert c["task"]["id"] == task["id"] and c["task"]["status"] == "assigned"
    assert c["attempt"] == 1 and c["claim_token"].startswith("ps_claim_")
    assert c["lease_seconds"] == 90.0
    assert when(c["lease_expires_at"]) - when(c["task"]["updated_at"]) == timedelta(seconds=90)
    started = await act(client, runner, task["id"], "start", c["claim_token"])
    assert started.status_code == 200 and started.json()["status"] == "running"
    done = await act(client, runner, task["id"], "complete", c["claim_token"], output="hi\n")
    assert done.status_code == 200 and done.json()["status"] == "completed"
    result = (await client.get(f"{V1}/tasks/{task['id']}/result", headers=bearer(alice))).json()
    assert result["output"] == "hi\n" and result["attempt"] == 1
    [a] = await attempts(client, alice, task["id"])
    assert a["outcome"] == "completed" and a["runner_id"] == c["task"]["runner_id"]


async def test_claim_with_start_true_returns_a_running_task(client: httpx.AsyncClient):
    alice, runner = await _setup(client)
    task = await create_task(client, alice)
    c = await claimed(client, runner, start=True)
    assert c["task"]["status"] == "running" and c["task"]["started_at"] is not None
    assert (await get_task(client, alice, task["id"]))["status"] == "running"


async def test_max_tasks_claims_a_batch_up_to_max_concurrent_tasks(client: httpx.AsyncClient):
    alice, runner = await _setup(client, max_concurrent_tasks=2)
    for i in range(3):
        await create_task(client, alice, title=f"t{i}")
    body = await claimed(client, runner, max_tasks=3)
    assert len(body["claims"]) == 2
    assert len({c["task"]["id"] for c in body["claims"]}) == 2
    assert all(c["task"]["status"] == "assigned" for c in body["claims"])
    assert (await claim(client, runner, max_tasks=3)).status_code == 204


async def test_claiming_an_unknown_task_is_404(client: httpx.AsyncClient):
    _, runner = await _setup(client)
    r = await claim(client, runner, "00000000-0000-0000-0000-000000000001")
    assert r.status_code == 404 and error_code(r) == "task_not_found"


async def test_claiming_a_completed_task_is_409_with_its_status(client: httpx.AsyncClient):
    alice, runner = await _setup(client)
    task = await create_task(client, alice)
    c = await claimed(client, runner)
    await act(client, runner, task["id"], "complete", c["claim_token"], output="x")
    r = await claim(client, runner, task["id"])
    assert r.status_code == 409 and error_code(r) == "task_not_claimable"
    assert r.json()["error"]["details"]["status"] == "completed"


async def test_claiming_a_task_that_needs_more_cpu_is_403(client: httpx.AsyncClient):
    alice, runner = await _setup(client, cpu_cores=2)
    task = await create_task(client, alice, resources={"cpu_cores": 8})
    r = await claim(client, runner, task["id"])
    assert r.status_code == 403 and error_code(r) == "runner_not_eligible"
    assert r.json()["error"]["details"]["required"]["cpu_cores"] == 8
    assert (await claim(client, runner)).status_code == 204


async def test_claiming_a_docker_task_without_docker_is_403(client: httpx.AsyncClient):
    alice, runner = await _setup(client, docker=False)
    task = await create_task(client, alice, type="docker", config={"image": "alpine:3"})
    r = await claim(client, runner, task["id"])
    assert r.status_code == 403 and error_code(r) == "runner_not_eligible"
    assert r.json()["error"]["details"]["required"]["docker"] is True


async def test_repeating_a_transition_with_the_same_token_answers_200(client: httpx.AsyncClient):
    alice, runner = await _setup(client, max_concurrent_tasks=2)
    a = await create_task(client, alice, title="a")
    b = await create_task(client, alice, title="b", max_attempts=1)
    body = await claimed(client, runner, max_tasks=2)
    tokens = {c["task"]["id"]: c["claim_token"] for c in body["claims"]}
    ca, cb = {"claim_token": tokens[a["id"]]}, {"claim_token": tokens[b["id"]]}
    for _ in range(2):
        r = await act(client, runner, a["id"], "start", ca["claim_token"])
        assert r.status_code == 200 and r.json()["status"] == "running"
    for _ in range(2):
        r = await act(client, runner, a["id"], "complete", ca["claim_token"], output="ok")
        assert r.status_code == 200 and r.json()["status"] == "completed"
    for _ in range(2):
        r = await act(client, runner, b["id"], "fail", cb["claim_token"], error="boom")
        assert r.status_code == 200 and r.json()["status"] == "failed"
    assert len(await attempts(client, alice, a["id"])) == 1


async def test_a_different_transition_after_complete_is_409(client: httpx.AsyncClient):
    alice, runner = await _setup(client)
    task = await create_task(client, alice)
    c = await claimed(client, runner)
    await act(client, runner, task["id"], "complete", c["claim_token"], output="ok")
    for action, extra in (("fail", {"error": "late"}), ("start", {}), ("release", {})):
        r = await act(client, runner, task["id"], action, c["claim_token"], **extra)
        assert r.status_code == 409, action
        assert error_code(r) == "invalid_transition"
        assert r.json()["error"]["details"]["status"] == "completed"


async def test_token_of_an_older_attempt_is_a_stale_claim(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice, first = await _setup(client)
    second, _ = await register_runner(client, alice, device())
    task = await create_task(client, alice)
    old = await claimed(client, first)
    r = await act(client, first, task["id"], "fail", old["claim_token"], error="flaky")
    assert r.json()["status"] == "pending"
    clock.advance(BACKOFF_PAST)
    new = await claimed(client, second)
    assert new["task"]["id"] == task["id"] and new["attempt"] == 2
    for action in ("start", "complete"):
        r = await act(client, first, task["id"], action, old["claim_token"])
        assert r.status_code == 409 and error_code(r) == "stale_claim"
        assert r.json()["error"]["details"]["attempt"] == 2
    # Nor may it log: its lines would spend the task's log budget on a run that is over.
    r = await act(client, first, task["id"], "logs", old["claim_token"], seq=5, lines=["stale"])
    assert r.status_code == 409 and error_code(r) == "stale_claim"
    r = await act(client, second, task["id"], "logs", new["claim_token"], seq=0, lines=["cur"])
    assert r.status_code == 200 and r.json()["accepted"] is True
    r = await act(client, second, task["id"], "complete", new["claim_token"], output="ok")
    assert r.json()["status"] == "completed"
    # The attempt that ended the task may still send its last lines.
    r = await act(client, second, task["id"], "logs", new["claim_token"], seq=1, lines=["last"])
    assert r.status_code == 200 and r.json()["accepted"] is True
    r = await client.get(f"/api/v1/tasks/{task['id']}/logs", headers=bearer(alice))
    assert [line for chunk in r.json()["items"] for line in chunk["lines"]] == ["cur", "last"]


async def test_complete_from_assigned_is_an_implicit_start(client: httpx.AsyncClient):
    alice, runner = await _setup(client)
    task = await create_task(client, alice)
    c = await claimed(client, runner)
    r = await act(client, runner, task["id"], "complete", c["claim_token"], output="ok")
    assert r.status_code == 200 and r.json()["status"] == "completed"
    assert r.json()["started_at"] is not None
    [a] = await attempts(client, alice, task["id"])
    assert a["started_at"] is not None and a["outcome"] == "completed"


async def test_complete_with_a_nonzero_exit_code_is_422(client: httpx.AsyncClient):
    alice, runner = await _setup(client)
    task = await create_task(client, alice)
    c = await claimed(client, runner)
    r = await act(client, runner, task["id"], "complete", c["claim_token"], exit_code=1)
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "exit_code"
    assert (await get_task(client, alice, task["id"]))["status"] == "assigned"


async def test_fail_with_attempts_left_retries_on_another_runner_after_backoff(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice, first = await _setup(client)
    second, _ = await register_runner(client, alice, device())
    task = await create_task(client, alice, max_attempts=3)
    c = await claimed(client, first)
    r = await act(client, first, task["id"], "fail", c["claim_token"], error="exit 2", exit_code=2)
    body = r.json()
    assert body["status"] == "pending" and body["attempts"] == 1
    assert body["last_error"] == "exit 2" and body["runner_id"] is None
    wait = (when(body["available_at"]) - clock.now()).total_seconds()
    assert 4.5 <= wait <= 5.5
    assert (await claim(client, second)).status_code == 204  # backing off
    clock.advance(BACKOFF_PAST)
    assert (await claim(client, first)).status_code == 204  # excluded
    r = await claim(client, first, task["id"])
    assert r.status_code == 403 and error_code(r) == "runner_not_eligible"
    again = await claimed(client, second)
    assert again["task"]["id"] == task["id"] and again["attempt"] == 2
    [a1, a2] = await attempts(client, alice, task["id"])
    assert (a1["outcome"], a1["exit_code"], a1["error"]) == ("failed", 2, "exit 2")
    assert a2["outcome"] is None and a2["runner_id"] != a1["runner_id"]


async def test_fail_on_the_last_attempt_is_terminal(client: httpx.AsyncClient, clock: FrozenClock):
    alice, runner = await _setup(client)
    other, _ = await register_runner(client, alice, device())
    task = await create_task(client, alice, max_attempts=1)
    c = await claimed(client, runner)
    r = await act(client, runner, task["id"], "fail", c["claim_token"], error="boom")
    assert r.json()["status"] == "failed" and r.json()["completed_at"] is not None
    clock.advance(3600)
    assert (await claim(client, other)).status_code == 204
    r = await claim(client, other, task["id"])
    assert r.status_code == 409 and r.json()["error"]["details"]["status"] == "failed"


async def test_lease_expiry_returns_the_task_to_pending_and_counts_the_attempt(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    alice, runner = await _setup(client)
    task = await create_task(client, alice, max_attempts=3)
    c = await claimed(client, runner)
    clock.advance(89)
    assert await expire_leases(container) == 0
    clock.advance(2)
    assert await expire_leases(container) == 1
    t = await get_task(client, alice, task["id"])
    assert t["status"] == "pending" and t["attempts"] == 1
    assert "lease expired" in t["last_error"]
    [a] = await attempts(client, alice, task["id"])
    assert a["outcome"] == "lease_expired" and "lease expired" in a["error"]
    r = await act(client, runner, task["id"], "complete", c["claim_token"], output="late")
    assert r.status_code == 409


async def test_a_run_past_its_time_limit_loses_its_lease_though_the_runner_renews_it(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    # timeout_seconds 30 and a 90 s lease: renewals never reach past start + 30 + 90 s, by the
    # lease endpoint or the heartbeat; then the expiry says the run timed out.
    alice, runner = await _setup(client)
    task = await create_task(client, alice, max_attempts=2, timeout_seconds=30)
    c = await claimed(client, runner, start="true")
    started = when(c["lease_expires_at"]) - timedelta(seconds=90)
    clock.advance(60)
    r = await act(client, runner, task["id"], "lease", c["claim_token"])
    assert r.status_code == 200, r.text
    assert when(r.json()["lease_expires_at"]) == started + timedelta(seconds=120)
    clock.advance(30)
    hb = await client.post(
        f"{V1}/runners/heartbeat",
        json={"status": "online", "claims": [c["claim_token"]]},
        headers=bearer(runner),
    )
    assert hb.status_code == 200 and hb.json()["renewed"] == [task["id"]]
    clock.advance(29)
    assert await expire_leases(container) == 0  # 119 s after the start
    clock.advance(2)
    assert await expire_leases(container) == 1
    t = await get_task(client, alice, task["id"])
    assert t["status"] == "pending" and t["attempts"] == 1
    assert t["last_error"].startswith("timed out after 30 s on runner ")
    [a] = await attempts(client, alice, task["id"])
    assert a["outcome"] == "lease_expired" and a["error"].startswith("timed out")


async def test_lease_expiry_of_the_final_attempt_fails_the_task(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    alice, runner = await _setup(client)
    task = await create_task(client, alice, max_attempts=1)
    await claimed(client, runner)
    clock.advance(91)
    assert await expire_leases(container) == 1
    t = await get_task(client, alice, task["id"])
    assert t["status"] == "failed" and t["attempts"] == 1
    assert "lease expired" in t["last_error"]


async def test_release_returns_the_task_without_consuming_an_attempt(client: httpx.AsyncClient):
    alice, runner = await _setup(client)
    task = await create_task(client, alice, max_attempts=2)
    c = await claimed(client, runner)
    r = await act(client, runner, task["id"], "release", c["claim_token"])
    assert r.status_code == 200
    body = r.json()
    assert (body["status"], body["attempts"], body["releases"], body["runner_id"]) == (
        "pending",
        1,
        1,
        None,
    )
    [a] = await attempts(client, alice, task["id"])
    assert a["outcome"] == "released"
    # One real failure after the release still leaves a retry: the release did not count.
    c2 = await claimed(client, runner)
    failed = await act(client, runner, task["id"], "fail", c2["claim_token"], error="boom")
    assert failed.json()["status"] == "pending"


async def test_a_released_task_can_be_claimed_again(client: httpx.AsyncClient):
    alice, runner = await _setup(client)
    task = await create_task(client, alice)
    c = await claimed(client, runner)
    await act(client, runner, task["id"], "release", c["claim_token"])
    r = await claim(client, runner)
    assert r.status_code == 200, r.text
    assert r.json()["task"]["id"] == task["id"]


async def test_log_append_is_idempotent_on_seq(client: httpx.AsyncClient):
    alice, runner = await _setup(client)
    task = await create_task(client, alice)
    c = await claimed(client, runner, start=True)
    for _ in range(2):
        r = await act(client, runner, task["id"], "logs", c["claim_token"], seq=0, lines=["a", "b"])
        assert r.status_code == 200 and r.json()["accepted"] is True
        assert r.json()["stored_bytes"] == 4
    logs = (await client.get(f"{V1}/tasks/{task['id']}/logs", headers=bearer(alice))).json()
    assert [(i["seq"], i["lines"]) for i in logs["items"]] == [(0, ["a", "b"])]


async def test_logs_past_the_budget_are_truncated_with_a_marker(container: Container):
    async with custom_client(container, task_log_max_bytes=2048) as (http, _):
        alice, runner = await _setup(http)
        task = await create_task(http, alice)
        c = await claimed(http, runner, start=True)
        line = "x" * 99  # 100 bytes with its newline
        r = await act(http, runner, task["id"], "logs", c["claim_token"], seq=0, lines=[line] * 15)
        assert r.json() == {"accepted": True, "truncated": False, "stored_bytes": 1500}
        r = await act(http, runner, task["id"], "logs", c["claim_token"], seq=1, lines=[line] * 15)
        assert r.json() == {"accepted": True, "truncated": True, "stored_bytes": 2048}
        r = await act(http, runner, task["id"], "logs", c["claim_token"], seq=2, lines=["more"])
        assert r.json() == {"accepted": False, "truncated": True, "stored_bytes": 2048}
        logs = (await http.get(f"{V1}/tasks/{task['id']}/logs", headers=bearer(alice))).json()
        assert logs["truncated"] is True and len(logs["items"]) == 2
        second = logs["items"][1]["lines"]
        assert second[:5] == [line] * 5 and second[-1].startswith("[log truncated: 2048")


async def test_a_runner_never_exceeds_max_concurrent_tasks(client: httpx.AsyncClient):
    alice, runner = await _setup(client, max_concurrent_tasks=2)
    for i in range(5):
        await create_task(client, alice, title=f"t{i}")
    assert (await claim(client, runner)).status_code == 200
    assert (await claim(client, runner)).status_code == 200
    assert (await claim(client, runner)).status_code == 204
    r = await client.get(f"{V1}/tasks", params={"status": "pending"}, headers=bearer(alice))
    assert r.headers["X-Total-Count"] == "3"


async def test_claims_account_for_the_resources_already_held(client: httpx.AsyncClient):
    alice, runner = await _setup(client, cpu_cores=4, max_concurrent_tasks=10)
    for i in range(3):
        await create_task(client, alice, title=f"t{i}", resources={"cpu_cores": 2})
    assert (await claim(client, runner)).status_code == 200
    assert (await claim(client, runner)).status_code == 200
    assert (await claim(client, runner)).status_code == 204


async def test_long_poll_claim_answers_when_a_task_arrives(
    client: httpx.AsyncClient, container: Container
):
    alice, runner = await _setup(client)
    waiting = asyncio.create_task(claim(client, runner, wait=5))
    await until(lambda: container.wakeups.waiting == 1)  # the claim is parked, not answered
    assert not waiting.done()
    task = await create_task(client, alice)
    r = await asyncio.wait_for(waiting, timeout=4)
    assert r.status_code == 200 and r.json()["task"]["id"] == task["id"]


async def test_wait_above_30_seconds_is_422(client: httpx.AsyncClient):
    _, runner = await _setup(client)
    r = await claim(client, runner, wait=31)
    assert r.status_code == 422
    assert r.json()["error"]["details"]["errors"][0]["field"] == "wait"


async def test_required_labels_pick_the_runner_that_has_them(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    plain, _ = await register_runner(client, alice, device())
    a100, _ = await register_runner(client, alice, device(), labels={"gpu": "a100"})
    task = await create_task(client, alice, labels={"gpu": "a100"})
    assert (await claim(client, plain)).status_code == 204
    r = await claim(client, plain, task["id"])
    assert r.status_code == 403 and r.json()["error"]["details"]["required"]["labels"] == {
        "gpu": "a100"
    }
    assert (await claimed(client, a100))["task"]["id"] == task["id"]


async def test_an_offer_reserves_the_task_for_the_push_runner_until_it_expires(
    container: Container, clock: FrozenClock
):
    async with custom_client(container, webhook_allow_private=True) as (http, c):
        alice = await sign_in(http, ALICE)
        bob = await sign_in(http, BOB)
        _, pushed = await register_runner(http, alice, device(), webhook="http://127.0.0.1:9/hook")
        pull, _ = await register_runner(http, bob, device())
        task = await create_task(http, alice)
        assert task["target_runner_id"] == pushed["runner"]["id"]
        async with c.db.read_session() as s:
            pushes = (await s.scalars(select(RunnerPush))).all()
        assert [(str(p.runner_id), str(p.task_id)) for p in pushes] == [
            (pushed["runner"]["id"], task["id"])
        ]
        assert pushes[0].payload["type"] == "task.offered"
        assert (await claim(http, pull)).status_code == 204
        r = await claim(http, pull, task["id"])
        assert r.status_code == 409 and error_code(r) == "task_not_claimable"
        assert r.json()["error"]["details"]["target_runner_id"] == pushed["runner"]["id"]
        clock.advance(11)
        assert await expire_offers(c) == 1
        assert (await get_task(http, alice, task["id"]))["target_runner_id"] is None
        assert (await claimed(http, pull))["task"]["id"] == task["id"]


async def test_offers_never_exceed_what_the_push_runner_could_claim(container: Container):
    """Outstanding offers count in slots and in resources: a 2-core runner with 4 slots is
    offered two 1-core tasks; the third waits untargeted (claimable by anyone, offered again
    when a slot frees)."""
    async with custom_client(container, webhook_allow_private=True) as (http, _c):
        alice = await sign_in(http, ALICE)
        _, pushed = await register_runner(
            http,
            alice,
            device(),
            webhook="http://127.0.0.1:9/hook",
            max_concurrent_tasks=4,
            cpu_cores=2,
        )
        one_core = {"cpu_cores": 1}
        tasks = [await create_task(http, alice, resources=one_core) for _ in range(3)]
        targets = [t["target_runner_id"] for t in tasks]
        assert targets == [pushed["runner"]["id"], pushed["runner"]["id"], None]


@pytest.mark.postgres_only
async def test_concurrent_creations_never_offer_a_push_runner_more_than_it_could_claim(
    container: Container,
):
    """Placement locks the runner it picked and re-reads its committed offers: ten tasks
    created at once never offer a 2-slot push runner more than two."""
    async with custom_client(container, webhook_allow_private=True) as (http, _c):
        alice = await sign_in(http, ALICE)
        _, pushed = await register_runner(
            http, alice, device(), webhook="http://127.0.0.1:9/hook", max_concurrent_tasks=2
        )
        tasks = await asyncio.gather(*(create_task(http, alice, title=f"t{i}") for i in range(10)))
        targets = [t["target_runner_id"] for t in tasks]
        # A placement that finds the runner locked by another passes it over: at most its two
        # slots are offered (10 were, before the lock), the rest wait untargeted.
        assert 1 <= targets.count(pushed["runner"]["id"]) <= 2
        assert targets.count(None) == 10 - targets.count(pushed["runner"]["id"])


@pytest.mark.postgres_only
async def test_placement_passes_over_a_runner_whose_row_another_transaction_holds(
    container: Container,
):
    """Placement never waits for a runner's row lock (waiting there, with two placements
    holding one runner each and wanting the other's, deadlocked): while another transaction
    holds the only push runner, a creation answers at once, offered to nobody."""
    from sqlalchemy import text

    async with custom_client(container, webhook_allow_private=True) as (http, _c):
        alice = await sign_in(http, ALICE)
        _, pushed = await register_runner(
            http, alice, device(), webhook="http://127.0.0.1:9/hook", max_concurrent_tasks=4
        )
        runner_id = pushed["runner"]["id"]
        async with container.db.write_engine.connect() as holder:
            await holder.execute(
                text("SELECT id FROM runners WHERE id = :id FOR UPDATE"), {"id": runner_id}
            )
            # Bounded: a placement that waited would hang here until the holder lets go.
            held = await asyncio.wait_for(create_task(http, alice, title="held"), timeout=10)
            assert held["target_runner_id"] is None
            await holder.rollback()
        free = await create_task(http, alice, title="free")
        assert free["target_runner_id"] == runner_id  # once free, placement offers it again


@pytest.mark.postgres_only
async def test_a_burst_of_creations_over_several_push_runners_never_fails_or_overoffers(
    container: Container,
):
    """Placement passes over a runner another placement holds (no waiting): many creations at
    once over three push runners neither deadlock nor offer any runner beyond its slots."""
    async with custom_client(container, webhook_allow_private=True) as (http, _c):
        alice = await sign_in(http, ALICE)
        ids = []
        for _ in range(3):
            _, r = await register_runner(
                http, alice, device(), webhook="http://127.0.0.1:9/hook", max_concurrent_tasks=2
            )
            ids.append(r["runner"]["id"])
        for _ in range(3):
            bodies = [
                {"title": f"t{i}", "type": "command", "config": {"command": ["true"]}}
                for i in range(15)
            ]
            results = await asyncio.gather(
                *(http.post("/api/v1/tasks", json=b, headers=bearer(alice)) for b in bodies)
            )
            assert [r.status_code for r in results] == [201] * 15
        r = await http.get("/api/v1/tasks", params={"limit": 100}, headers=bearer(alice))
        targets = [t["target_runner_id"] for t in r.json()]
        assert len(targets) == 45
        assert all(targets.count(rid) <= 2 for rid in ids)
        assert sum(targets.count(rid) for rid in ids) >= 1  # placement still offers


@pytest.mark.postgres_only
async def test_a_failed_reoffer_after_a_committed_completion_does_not_fail_the_completion(
    container: Container, monkeypatch: pytest.MonkeyPatch
):
    """On PostgreSQL the completion commits on its own; the re-offer after it is best effort."""
    from sqlalchemy.exc import OperationalError

    from parity.tasks import service as tasks_service

    async def broken(*_a: Any, **_k: Any) -> int:
        raise OperationalError("SELECT", {}, Exception("injected"))

    async with custom_client(container, webhook_allow_private=True) as (http, _c):
        alice = await sign_in(http, ALICE)
        rt, _ = await register_runner(
            http, alice, device(), webhook="http://127.0.0.1:9/hook", max_concurrent_tasks=1
        )
        first = await create_task(http, alice, title="first", priority=10)  # claimed first
        await create_task(http, alice, title="due")  # untargeted: the runner is full
        c = await claimed(http, rt)
        assert c["task"]["id"] == first["id"]
        monkeypatch.setattr(tasks_service, "reoffer_pending", broken)
        r = await act(http, rt, first["id"], "complete", c["claim_token"], output="ok", exit_code=0)
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text
        assert (await get_task(http, alice, first["id"]))["status"] == "completed"


@pytest.mark.postgres_only
async def test_concurrent_claims_by_one_runner_never_overcommit(client: httpx.AsyncClient):
    alice, runner = await _setup(client, max_concurrent_tasks=3)
    for i in range(10):
        await create_task(client, alice, title=f"t{i}")
    results = await asyncio.gather(*(claim(client, runner) for _ in range(10)))
    codes = sorted(r.status_code for r in results)
    assert codes == [200] * 3 + [204] * 7
    claimed_ids = {r.json()["task"]["id"] for r in results if r.status_code == 200}
    assert len(claimed_ids) == 3


@pytest.mark.postgres_only
async def test_concurrent_runners_never_claim_the_same_task(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    runners = [
        (await register_runner(client, alice, device(), max_concurrent_tasks=3))[0]
        for _ in range(10)
    ]
    tasks = [await create_task(client, alice, title=f"t{i}") for i in range(30)]
    seen: list[str] = []
    for _ in range(10):  # SKIP LOCKED may hand a claimer fewer rows; go round until drained
        results = await asyncio.gather(*(claim(client, r, max_tasks=3) for r in runners))
        for r in results:
            assert r.status_code in (200, 204), r.text
            if r.status_code == 200:
                seen += [c["task"]["id"] for c in r.json()["claims"]]
        if len(seen) >= 30:
            break
    assert len(seen) == 30 and set(seen) == {t["id"] for t in tasks}
    for t in tasks:
        assert len(await attempts(client, alice, t["id"])) == 1


async def test_another_runners_claim_token_is_refused_while_the_claim_is_held(
    client: httpx.AsyncClient,
):
    alice, runner = await _setup(client)
    other, _ = await register_runner(client, alice, device())
    task = await create_task(client, alice)
    c = await claimed(client, runner)
    for action in ("start", "complete"):
        r = await act(client, other, task["id"], action, c["claim_token"], output="ok")
        assert r.status_code == 409 and error_code(r) == "claim_invalid", action
    assert (await get_task(client, alice, task["id"]))["status"] == "assigned"


@pytest.mark.postgres_only
async def test_concurrent_repeats_of_one_completion_all_answer_200_and_complete_once(
    client: httpx.AsyncClient, container: Container
):
    alice, runner = await _setup(client)
    task = await create_task(client, alice)
    c = await claimed(client, runner)
    token = c["claim_token"]
    results = await asyncio.gather(
        *(act(client, runner, task["id"], "complete", token, output="ok") for _ in range(6))
    )
    assert [r.status_code for r in results] == [200] * 6, [r.text for r in results]
    assert {r.json()["status"] for r in results} == {"completed"}
    [a] = await attempts(client, alice, task["id"])
    assert a["outcome"] == "completed"
    async with container.db.read_session() as s:
        rows = (await s.scalars(select(TaskResult).where(TaskResult.task_id == task["id"]))).all()
    assert len(rows) == 1


@pytest.mark.postgres_only
async def test_concurrent_complete_and_fail_of_one_claim_accept_exactly_one(
    client: httpx.AsyncClient,
):
    alice, runner = await _setup(client)
    task = await create_task(client, alice, max_attempts=1)
    c = await claimed(client, runner)
    token = c["claim_token"]
    done, failed = await asyncio.gather(
        act(client, runner, task["id"], "complete", token, output="ok"),
        act(client, runner, task["id"], "fail", token, error="boom"),
    )
    assert sorted([done.status_code, failed.status_code]) == [200, 409]
    final = (await get_task(client, alice, task["id"]))["status"]
    assert final == ("completed" if done.status_code == 200 else "failed")


@pytest.mark.parametrize("runner_labels", [{}, {"zone": "a", "tier": "x"}])
async def test_tasks_no_runner_of_these_labels_can_take_never_block_those_it_can(
    client: httpx.AsyncClient, runner_labels: dict[str, str]
):
    # More unmatched tasks, at a higher priority, than a claim reads candidates in one batch:
    # labels are matched in the candidates statement, so the task behind them is still found.
    alice = await sign_in(client, ALICE)
    runner, _ = await register_runner(client, alice, device(), labels=runner_labels)
    for labels in ({"gpu": "h100"}, {"zone": "b"}, {"zone": "a", "tier": "y"}):
        for _ in range(5):
            await create_task(client, alice, labels=labels, priority=10)
    wanted = await create_task(client, alice, labels={"zone": "a"} if runner_labels else {})
    listed = await client.get(f"{V1}/runners/tasks/available", headers=bearer(runner))
    assert [t["id"] for t in listed.json()] == [wanted["id"]]
    assert (await claimed(client, runner))["task"]["id"] == wanted["id"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"output_cid": "../../etc/passwd"}, "output_cid"),
        ({"output_cid": "notacid"}, "output_cid"),
        ({"usage": {"input_tokens": -5}}, "usage"),
        ({"usage": {"output_tokens": 1e300}}, "usage"),
        ({"usage": {"output_tokens": 2.5}}, "usage"),
        ({"usage": {"nested": {"a": 1}}}, "usage"),
        ({"usage": {f"k{i}": i for i in range(65)}}, "usage"),
    ],
)
async def test_a_completion_names_what_it_reports_wrongly_and_changes_nothing(
    client: httpx.AsyncClient, extra: dict[str, Any], field: str
):
    # What a runner reports reaches the client (the result, the bill): a path for a CID or a
    # negative token count was stored as sent.
    alice, runner = await _setup(client)
    task = await create_task(client, alice)
    c = await claimed(client, runner)
    r = await act(client, runner, task["id"], "complete", c["claim_token"], output="ok", **extra)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert (await get_task(client, alice, task["id"]))["status"] == "assigned"
    cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    r = await act(client, runner, task["id"], "complete", c["claim_token"], output_cid=cid)
    assert r.status_code == 200 and r.json()["status"] == "completed"


async def test_a_draining_server_expires_no_lease_and_marks_no_runner_offline(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    # While a server drains its listener is closed: its runners cannot renew there, and the
    # leases of work still streaming to it expired mid-drain (a prompt failed after its whole
    # answer was delivered). The server's own jobs, as the app builds them, wait.
    from parity.app import build_jobs

    jobs = {job.name: job for job in build_jobs(container)}
    for name in ("lease_expiry", "liveness"):  # their start-up grace begins here
        async with container.db.transaction() as s:
            await jobs[name].tick(s, clock.now())
    alice, runner = await _setup(client)
    task = await create_task(client, alice)
    await claimed(client, runner, start=True)
    clock.advance(container.settings.offline_timeout_seconds + container.tasks.lease_seconds + 60)
    container.draining = True
    for name in ("lease_expiry", "liveness"):
        async with container.db.transaction() as s:
            assert await jobs[name].tick(s, clock.now()) == 0
    assert (await get_task(client, alice, task["id"]))["status"] == "running"
    container.draining = False
    async with container.db.transaction() as s:
        assert await jobs["lease_expiry"].tick(s, clock.now()) == 1
    assert (await get_task(client, alice, task["id"]))["status"] == "pending"

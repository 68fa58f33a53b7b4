"""A claim whose answer never reached its runner (the connection broke, the server restarted
between commit and answer): the runner reconciles before it claims again, the server gives back
what it does not list, and the work runs instead of waiting for its lease to expire."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from parity.agent.client import ServerClient, ServerError
from parity.agent.executors import CancelToken, LogSink, Outcome
from parity.agent.loop import Runner, RunnerOptions
from parity.container import Container
from tests.conftest import ALICE, bearer, sign_in, until
from tests.integration.queue_helpers import (
    V1,
    act,
    asgi_app,
    attempts,
    claimed,
    create_task,
    device,
    error_code,
    get_task,
    register_runner,
)


async def _reconcile(client: httpx.AsyncClient, runner: str, claims: list[str]) -> httpx.Response:
    return await client.post(
        f"{V1}/runners/tasks/reconcile", json={"claims": claims}, headers=bearer(runner)
    )


async def test_reconcile_gives_back_only_the_claims_the_runner_does_not_list(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    runner, _ = await register_runner(client, alice, device(), max_concurrent_tasks=2)
    kept_task = await create_task(client, alice, title="kept", max_attempts=1)
    lost_task = await create_task(client, alice, title="lost", max_attempts=1)
    first = await claimed(client, runner)
    second = await claimed(client, runner)
    known, lost = (first, second) if first["task"]["id"] == kept_task["id"] else (second, first)

    r = await _reconcile(client, runner, [known["claim_token"]])
    assert r.status_code == 200, r.text
    assert r.json() == {"released": [lost["task"]["id"]]}

    gone = await get_task(client, alice, lost_task["id"])
    # Untouched: pending again, the release not counted against its one attempt.
    assert (gone["status"], gone["releases"], gone["runner_id"]) == ("pending", 1, None)
    [a] = await attempts(client, alice, lost_task["id"])
    assert a["outcome"] == "released"
    assert (await get_task(client, alice, kept_task["id"]))["status"] == "assigned"
    # The lost claim's token no longer holds the task; the listed one still does.
    stale = await act(client, runner, lost_task["id"], "start", lost["claim_token"])
    assert stale.status_code == 409, stale.text
    ok = await act(client, runner, kept_task["id"], "start", known["claim_token"])
    assert ok.status_code == 200, ok.text
    # Nothing unlisted left: a second reconcile releases nothing.
    again = await _reconcile(client, runner, [known["claim_token"]])
    assert again.json() == {"released": []}


async def test_reconcile_needs_a_runner_token_and_a_list_of_tokens(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    runner, _ = await register_runner(client, alice, device())
    r = await _reconcile(client, alice, [])
    assert r.status_code == 403 and error_code(r) == "runner_token_required", r.text
    bad = await client.post(
        f"{V1}/runners/tasks/reconcile", json={"claims": "tok"}, headers=bearer(runner)
    )
    assert bad.status_code == 422 and error_code(bad) == "validation_error", bad.text
    assert "claims" in bad.text


class RecordingExecutor:
    def __init__(self) -> None:
        self.ran: list[str] = []

    async def run(self, task: dict[str, Any], logs: LogSink, cancel: CancelToken) -> Outcome:
        self.ran.append(str(task["id"]))
        return Outcome(True, 0, "ok")


class LosesFirstClaimAnswer(httpx.AsyncBaseTransport):
    """The server commits the first claim; its answer is lost on the way back."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        claim = request.url.path.endswith("/runners/tasks/claim")
        if claim and response.status_code == 200 and not self.lost:
            await response.aread()
            self.lost += 1
            raise httpx.ReadError("connection reset after the claim committed", request=request)
        return response


async def test_a_runner_whose_claim_answer_was_lost_gets_the_task_back_and_runs_it_once(
    container: Container,
):
    async with (
        asgi_app(container) as (asgi, _),
        httpx.AsyncClient(transport=asgi, base_url="http://parity.test") as http,
    ):
        lossy = LosesFirstClaimAnswer(asgi)
        client = ServerClient("http://parity.test", transport=lossy)
        await client.sign_in(ALICE)
        reg = await client.register(
            {
                "device_id": device(),
                "capabilities": {"cpu_cores": 4, "memory_mb": 4096, "gpus": 0, "docker": False},
                "max_concurrent_tasks": 1,
            }
        )
        executor = RecordingExecutor()
        runner = Runner(
            RunnerOptions(device_id="unused", max_concurrent_tasks=1, claim_wait=0.2, push=False),
            ALICE,
            client,
            {"command": executor},
        )
        runner.runner_id = str(reg["runner"]["id"])
        owner = await sign_in(http, ALICE)
        task = await create_task(http, owner, max_attempts=1)

        pull = asyncio.create_task(runner._pull())
        try:
            await until(lambda: runner.completed == 1, timeout=20)
        finally:
            runner.stop()
            await asyncio.wait_for(pull, 10)  # the 0.2 s long-poll ends, the loop sees stop
        assert lossy.lost == 1  # the first claim committed and its answer was lost
        assert executor.ran == [task["id"]]
        done = await get_task(http, owner, task["id"])
        # Two claims, the lost one given back: it did not use up the one attempt allowed.
        assert (done["status"], done["attempts"], done["releases"]) == ("completed", 2, 1)
        outcomes = [a["outcome"] for a in await attempts(http, owner, task["id"])]
        assert outcomes == ["released", "completed"]
        assert runner.claims_unsure is False
        await client.close()


class SlowReconcileClient:
    """Just enough of ServerClient: a reconcile that waits for the test, claims recorded."""

    def __init__(self) -> None:
        self.proceed = asyncio.Event()
        self.claimed: list[str] = []

    async def reconcile(self, claims: list[str]) -> list[str]:
        await self.proceed.wait()
        return []

    async def claim(self, task_id: str) -> dict[str, Any]:
        self.claimed.append(task_id)
        raise ServerError(409, "task_not_claimable", "gone", {})


async def test_an_offer_that_comes_while_reconciling_waits_until_it_is_done():
    client = SlowReconcileClient()
    runner = Runner(
        RunnerOptions(device_id="unused", max_concurrent_tasks=2, pull=False, push=False),
        ALICE,
        client,  # type: ignore[arg-type]
        {},
    )
    runner.claims_unsure = True
    reconciling = asyncio.create_task(runner._reconcile())
    await until(lambda: runner.reconciling)
    # Claimed now, the offer's claim could be released by the reconcile in flight.
    await runner._on_offer("offered-task")
    assert client.claimed == [] and list(runner.deferred_offers) == ["offered-task"]
    client.proceed.set()
    assert await reconciling is True
    await until(lambda: client.claimed == ["offered-task"])
    assert runner.claims_unsure is False and runner.reconciling is False

"""A runner whose server goes away while a task runs (killed and restarted, a proxy down): the
finished run's outcome is kept and reported again, same claim token and body, until the server
settles it, and its log batches are kept and resent in order. The task completes once, on its
first attempt, with every log line; the runner neither gives the claim back nor runs it twice.

The runner reaches the in-process server through a proxy the test takes down and brings back;
the backoff is shortened through RunnerOptions so that the outage lasts well beyond the old
five tries without slowing the suite."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from parity.agent import loop
from parity.agent.client import ServerClient
from parity.agent.executors import CancelToken, LogSink, Outcome
from parity.agent.loop import STOP_STEP_SECONDS, Runner, RunnerOptions
from parity.clock import FrozenClock
from parity.container import Container
from tests.conftest import ALICE, bearer, sign_in, until
from tests.integration.queue_helpers import (
    V1,
    asgi_app,
    attempts,
    create_task,
    device,
    expire_leases,
    get_task,
)

BASE = "http://parity.test"


class Proxy(httpx.AsyncBaseTransport):
    """Between the runner and the server. ``down``: connections are refused, and the answer of
    a request in flight is lost. ``busy``: the next N complete/fail requests are answered 503
    ``database_unavailable`` with Retry-After (the server is back, its database not yet)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.down = False
        self.busy = 0
        self.calls: list[tuple[str, str]] = []  # (path, "refused" | "lost" | status)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if self.down:
            self.calls.append((path, "refused"))
            raise httpx.ConnectError("connection refused: the server is down", request=request)
        if self.busy and path.endswith(("/complete", "/fail")):
            self.busy -= 1
            self.calls.append((path, "503"))
            return httpx.Response(
                503,
                json={
                    "error": {
                        "code": "database_unavailable",
                        "message": "the database is unavailable, retry",
                        "details": {},
                    }
                },
                headers={"Retry-After": "1"},
                request=request,
            )
        response = await self.inner.handle_async_request(request)
        if self.down:
            await response.aread()
            self.calls.append((path, "lost"))
            raise httpx.ReadError("connection reset: the server went down", request=request)
        self.calls.append((path, str(response.status_code)))
        return response

    def count(self, suffix: str, result: str) -> int:
        return sum(1 for path, got in self.calls if path.endswith(suffix) and got == result)


class Gated:
    """Logs ``a1``, waits for ``go``, logs ``a2`` and ``a3`` and succeeds (every run)."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.started = asyncio.Event()
        self.go = asyncio.Event()

    async def run(self, task: dict[str, Any], logs: LogSink, cancel: CancelToken) -> Outcome:
        self.runs.append(str(task["id"]))
        await logs(["a1"])
        self.started.set()
        await self.go.wait()
        await logs(["a2"])
        await logs(["a3"])
        return Outcome(True, 0, "a1\na2\na3\n")


class Recorder:
    """Stands in for the runner's logger: keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def record(event: str, **fields: Any) -> None:
            self.seen.append((level, event, fields))

        return record

    def warned(self, event: str, task_id: str) -> list[dict[str, Any]]:
        return [
            f
            for level, e, f in self.seen
            if level == "warning" and e == event and f.get("task_id") == task_id
        ]


@pytest.fixture
def said(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(loop, "log", recorder)
    return recorder


def _options(**extra: Any) -> RunnerOptions:
    base: dict[str, Any] = {
        "device_id": device(),
        # Two slots: the pull loop goes on claiming during the outage, fails, and reconciles
        # once the server is back (the reconcile that released the claim in the bug report).
        "max_concurrent_tasks": 2,
        "claim_wait": 0.2,
        "push": False,
        "heartbeat_interval": 0.3,
        "report_retry_first": 0.05,
        "report_retry_max": 0.2,
    }
    return RunnerOptions(**(base | extra))


async def _logs(http: httpx.AsyncClient, owner: str, task_id: str) -> list[tuple[int, int, Any]]:
    r = await http.get(f"{V1}/tasks/{task_id}/logs", headers=bearer(owner))
    assert r.status_code == 200, r.text
    return [(i["attempt"], i["seq"], i["lines"]) for i in r.json()["items"]]


async def _status(http: httpx.AsyncClient, owner: str, task_id: str) -> str:
    return str((await get_task(http, owner, task_id))["status"])


async def test_an_outcome_finished_while_the_server_was_away_is_reported_once_with_every_line(
    container: Container, said: Recorder
) -> None:
    async with (
        asgi_app(container) as (asgi, _),
        httpx.AsyncClient(transport=asgi, base_url=BASE) as http,
    ):
        proxy = Proxy(asgi)
        client = ServerClient(BASE, transport=proxy)
        executor = Gated()
        runner = Runner(_options(), ALICE, client, {"command": executor})
        owner = await sign_in(http, ALICE)
        task = (await create_task(http, owner))["id"]
        started = time.monotonic()
        running = asyncio.create_task(runner.run())
        try:
            await until(executor.started.is_set)
            await until(lambda: _logs(http, owner, task))  # a1 reached the server

            proxy.down = True  # the server is killed mid-run
            executor.go.set()
            # The run is over; its report and its last lines get no answer, again and again
            # (more tries than the old runner made before it dropped the outcome).
            await until(lambda: proxy.count("/complete", "refused") >= 8)
            assert proxy.count("/logs", "refused") >= 8
            assert runner.claims_unsure  # claims failed meanwhile: a reconcile is due
            assert runner.free_slots == 1  # the finished run still holds its slot

            # The server is back, its database not yet: the first completion is answered 503
            # database_unavailable, Retry-After 1, which is tried again too.
            proxy.busy = 1
            proxy.down = False
            await until(lambda: runner.completed == 1, timeout=15)
            await until(lambda: not runner.claims_unsure)  # the reconcile ran, claim listed
        finally:
            runner.stop()
            await asyncio.wait_for(running, 15)
            await client.close()

        assert proxy.count("/complete", "503") == 1
        assert proxy.count("/reconcile", "200") >= 1
        assert executor.runs == [task]  # run once: the claim was never given back
        done = await get_task(http, owner, task)
        assert (done["status"], done["attempts"], done["releases"]) == ("completed", 1, 0)
        assert [(a["attempt"], a["outcome"]) for a in await attempts(http, owner, task)] == [
            (1, "completed")
        ]
        # Every line, in order, consecutive seqs, each batch once.
        assert await _logs(http, owner, task) == [(1, 0, ["a1"]), (1, 1, ["a2"]), (1, 2, ["a3"])]
        r = await http.get(f"{V1}/tasks/{task}/result", headers=bearer(owner))
        assert r.json()["output"] == "a1\na2\na3\n"
        assert runner.completed == 1 and runner.failed == 0
        assert said.warned("task_report_retrying", task)
        assert not said.warned("task_report_refused", task)
        assert not said.warned("task_logs_dropped", task)
        assert time.monotonic() - started < 20


async def test_a_runner_stopped_while_its_report_is_pending_tries_once_more_and_exits(
    container: Container, said: Recorder
) -> None:
    async with (
        asgi_app(container) as (asgi, _),
        httpx.AsyncClient(transport=asgi, base_url=BASE) as http,
    ):
        proxy = Proxy(asgi)
        client = ServerClient(BASE, transport=proxy)
        executor = Gated()
        # The default grace period (30 s): a pending report does not wait it out.
        runner = Runner(_options(), ALICE, client, {"command": executor})
        owner = await sign_in(http, ALICE)
        task = (await create_task(http, owner))["id"]
        running = asyncio.create_task(runner.run())
        try:
            await until(executor.started.is_set)
            proxy.down = True
            executor.go.set()
            await until(lambda: proxy.count("/complete", "refused") >= 2)
            tries = proxy.count("/complete", "refused")
            stopped = time.monotonic()
            runner.stop()  # SIGTERM
            await asyncio.wait_for(running, 2 * STOP_STEP_SECONDS + 2)
            took = time.monotonic() - stopped
        finally:
            if not running.done():
                running.cancel()
            await client.close()

        assert proxy.count("/complete", "refused") == tries + 1  # one more try, then it gave up
        assert took < STOP_STEP_SECONDS + 2
        [abandoned] = said.warned("task_report_abandoned", task)
        assert "runner stopping" in abandoned["why"]
        assert said.warned("task_logs_dropped", task)  # a2, a3 never reached the server
        # Never released by the runner (that would run it again): the server still shows it
        # held, and lease expiry (or the offline heartbeat, had it got through) hands it back.
        assert proxy.count("/release", "200") == 0
        assert await _status(http, owner, task) == "running"
        assert executor.runs == [task]


async def test_a_report_whose_claim_expired_during_the_outage_is_given_up_on_the_servers_word(
    container: Container, clock: FrozenClock, said: Recorder
) -> None:
    async with (
        asgi_app(container) as (asgi, _),
        httpx.AsyncClient(transport=asgi, base_url=BASE) as http,
    ):
        proxy = Proxy(asgi)
        client = ServerClient(BASE, transport=proxy)
        executor = Gated()
        runner = Runner(_options(), ALICE, client, {"command": executor})
        owner = await sign_in(http, ALICE)
        task = (await create_task(http, owner, max_attempts=1))["id"]
        running = asyncio.create_task(runner.run())
        try:
            await until(executor.started.is_set)
            proxy.down = True
            executor.go.set()
            await until(lambda: proxy.count("/complete", "refused") >= 3)
            # The server, meanwhile, expired the lease: the task failed (its one attempt).
            clock.advance(3600)
            assert await expire_leases(container) == 1
            assert runner.active  # no timer of its own gives the report up
            proxy.down = False
            await until(lambda: said.warned("task_report_refused", task))
            await until(lambda: not runner.active)  # the slot is free again
        finally:
            runner.stop()
            await asyncio.wait_for(running, 15)
            await client.close()

        [refused] = said.warned("task_report_refused", task)
        assert refused["action"] == "complete" and "409" in refused["error"]
        assert runner.completed == 0
        assert [a["outcome"] for a in await attempts(http, owner, task)] == ["lease_expired"]
        assert await _status(http, owner, task) == "failed"
        assert proxy.count("/complete", "409") == 1  # settled by that answer: not tried again
        assert executor.runs == [task]


async def test_a_runner_started_while_its_server_is_down_comes_up_with_it(
    container: Container, said: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner started while its server restarts (or with it) keeps trying its sign-in and
    registration for ``startup_wait`` seconds, a warning per try, instead of exiting."""
    monkeypatch.setattr(loop, "STARTUP_RETRY_FIRST_SECONDS", 0.05)
    monkeypatch.setattr(loop, "STARTUP_RETRY_MAX_SECONDS", 0.1)
    async with asgi_app(container) as (asgi, _):
        proxy = Proxy(asgi)
        proxy.down = True
        client = ServerClient(BASE, transport=proxy)
        runner = Runner(_options(startup_wait=30.0), ALICE, client, {})
        running = asyncio.create_task(runner.run())
        try:
            await until(lambda: proxy.count("/auth/nonce", "refused") >= 3)
            assert not running.done() and runner.runner_id is None
            proxy.down = False  # the server is up
            await until(lambda: runner.runner_id is not None, timeout=15)
        finally:
            runner.stop()
            await asyncio.wait_for(running, 15)
            await client.close()
        tries = [f for level, e, f in said.seen if e == "server_unreachable_retrying"]
        assert len(tries) >= 3 and tries[0]["step"] == "sign_in"

        # Without a wait (or once it runs out) the start fails with the server's silence.
        proxy.down = True
        client = ServerClient(BASE, transport=proxy)
        runner = Runner(_options(), ALICE, client, {})
        with pytest.raises(httpx.ConnectError):
            await asyncio.wait_for(runner.run(), 15)
        await client.close()

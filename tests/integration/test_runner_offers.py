"""The reference runner's handling of push offers, against the real API in process: an offer
that comes while every slot is taken is kept and claimed, oldest first, when a slot frees; one
that can no longer be claimed is dropped without holding the slot."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from parity.agent.client import ServerClient
from parity.agent.executors import CancelToken, LogSink, Outcome
from parity.agent.loop import MAX_DEFERRED_OFFERS, Runner, RunnerOptions
from parity.container import Container
from tests.conftest import ALICE, bearer, sign_in, until
from tests.integration.queue_helpers import asgi_app, create_task, device, get_task

V1 = "/api/v1"


class GatedExecutor:
    """Runs a task until the test opens its gate."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []

    def gate(self, task_id: str) -> asyncio.Event:
        return self.gates.setdefault(task_id, asyncio.Event())

    async def run(self, task: dict[str, Any], logs: LogSink, cancel: CancelToken) -> Outcome:
        self.started.append(str(task["id"]))
        await self.gate(str(task["id"])).wait()
        return Outcome(True, 0, "ok")


async def test_offers_that_come_while_full_are_claimed_oldest_first_as_slots_free(
    container: Container,
):
    async with (
        asgi_app(container, webhook_allow_private=True) as (transport, _),
        httpx.AsyncClient(transport=transport, base_url="http://parity.test") as http,
    ):
        client = ServerClient("http://parity.test", transport=transport)
        await client.sign_in(ALICE)
        reg = await client.register(
            {
                "device_id": device(),
                "webhook": "http://127.0.0.1:9/push",
                "capabilities": {"cpu_cores": 4, "memory_mb": 4096, "gpus": 0, "docker": False},
                "max_concurrent_tasks": 1,
            }
        )
        executor = GatedExecutor()
        runner = Runner(
            RunnerOptions(device_id="unused", max_concurrent_tasks=1, pull=False, push=False),
            ALICE,
            client,
            {"command": executor},
        )
        runner.runner_id = str(reg["runner"]["id"])
        owner = await sign_in(http, ALICE)
        t1, t2, t3 = [(await create_task(http, owner, title=f"t{i}"))["id"] for i in (1, 2, 3)]

        await runner._on_offer(t1)  # a free slot: claimed at once
        await until(lambda: executor.started == [t1])
        await runner._on_offer(t2)  # full: kept, not claimed
        await runner._on_offer(t3)
        assert list(runner.deferred_offers) == [t2, t3]
        assert (await get_task(http, owner, t2))["status"] == "pending"

        executor.gate(t1).set()  # t1 completes; its slot goes to the oldest deferred offer
        await until(lambda: executor.started == [t1, t2])
        assert (await get_task(http, owner, t1))["status"] == "completed"
        running = await get_task(http, owner, t2)
        assert running["status"] == "running" and running["runner_id"] == runner.runner_id
        assert list(runner.deferred_offers) == [t3]

        # t3 is cancelled meanwhile: its claim is refused, and the slot is not held by it.
        r = await http.delete(f"{V1}/tasks/{t3}", headers=bearer(owner))
        assert r.json()["status"] == "cancelled"
        executor.gate(t2).set()
        await until(lambda: not runner.active and not runner._offer_jobs)
        assert runner.deferred_offers == {} and runner.claiming == 0 and runner.free_slots == 1
        assert executor.started == [t1, t2]
        assert runner.completed == 2
        await client.close()


async def test_a_full_runner_keeps_at_most_the_bounded_number_of_offers(container: Container):
    client = ServerClient("http://unused.test")
    runner = Runner(
        RunnerOptions(device_id="unused", max_concurrent_tasks=1, pull=False, push=False),
        ALICE,
        client,
        {},
    )
    runner.claiming = 1  # the one slot is taken by a claim in flight
    for i in range(MAX_DEFERRED_OFFERS + 10):
        await runner._on_offer(f"task-{i}")
    assert len(runner.deferred_offers) == MAX_DEFERRED_OFFERS
    assert next(iter(runner.deferred_offers)) == "task-0"  # the oldest are kept
    await client.close()

"""Event webhooks end to end: a real server process, a real runner process and a real receiver
that verifies Standard Webhooks signatures."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ALICE, TEST_DB
from tests.e2e.procs import ServerProcess
from tests.e2e.runner_procs import RunnerProcess, client_token, make_keystore
from tests.integration.webhook_receiver import Receiver, serve

pytestmark = pytest.mark.slow

FAST = {
    "LOG_LEVEL": "warning",
    "RUNNER_HEARTBEAT_INTERVAL_SECONDS": "1",
    "TASK_LEASE_SECONDS": "3",
    "SCHEDULER_INTERVAL_SECONDS": "0.5",
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_DELIVERY_INTERVAL_SECONDS": "0.5",
}


async def _until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.2)
    return False


async def test_receiver_gets_every_task_event_signed_and_after_two_failures(
    tmp_path: Path, database_url: str
):
    url = database_url if TEST_DB == "postgres" else ""
    server = ServerProcess(tmp_path / "home", url, **FAST).start()
    keystore = tmp_path / "secret" / "keystore.json"
    make_keystore(keystore, "0x" + "55" * 32)
    runner = RunnerProcess(server.url, keystore, "dev-hook", tmp_path)
    receiver = Receiver(secrets=[], now=lambda: int(time.time()))
    flaky = Receiver(secrets=[], now=lambda: int(time.time()), fail_first=2)
    try:
        server.wait_healthy()
        async with (
            serve(receiver),
            serve(flaky),
            httpx.AsyncClient(base_url=server.url, timeout=15) as api,
        ):
            api.headers["Authorization"] = "Bearer " + client_token(server.url, ALICE)
            every = ["task.created", "task.offered", "task.completed", "task.failed"]
            created = await api.post(
                "/api/v1/webhooks", json={"url": receiver.url, "events": every}
            )
            assert created.status_code == 201, created.text
            receiver.secrets.append(created.json()["secret"])
            flaky_hook = await api.post(
                "/api/v1/webhooks", json={"url": flaky.url, "events": ["task.created"]}
            )
            flaky.secrets.append(flaky_hook.json()["secret"])
            runner.start().wait_registered()
            r = await api.post(
                "/api/v1/tasks",
                json={"title": "hook me", "type": "command", "config": {"command": "echo hi"}},
            )
            task_id = r.json()["id"]
            assert await _until(
                lambda: {"task.created", "task.completed"} <= set(receiver.types()), 60
            ), receiver.types()
            assert receiver.rejected == [] and receiver.duplicates == []
            for got in receiver.events:
                assert got.json["data"]["task_id"] == task_id
                assert set(got.json) >= {"id", "type", "created_at", "data"}
            # The flaky receiver failed its first two POSTs; the event came on attempt three.
            assert await _until(lambda: len(flaky.events) == 1, 30), flaky.requests
            assert len(flaky.requests) == 3 and flaky.types() == ["task.created"]
            deliveries = (
                await api.get(f"/api/v1/webhooks/{flaky_hook.json()['id']}/deliveries")
            ).json()["items"]
            assert [(d["status"], d["attempts"]) for d in deliveries] == [("delivered", 3)]
    finally:
        runner.stop()
        server.stop()

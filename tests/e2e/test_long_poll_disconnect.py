"""A long-poll claim whose runner went away (the process stopped, or restarted under the same
runner id) must not claim work when it is woken: nobody would ever receive that task."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from tests.conftest import ALICE
from tests.e2e.procs import ServerProcess
from tests.e2e.runner_procs import client_token, running_server, wait_for

pytestmark = pytest.mark.slow

OWNER = Account.from_key("0x" + "47" * 32)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    with running_server(tmp_path / "home", database_url, {"LOG_LEVEL": "warning"}) as s:
        yield s


def test_an_abandoned_long_poll_claims_nothing_and_the_task_waits_for_a_live_runner(
    server: ServerProcess,
) -> None:
    owner = {"Authorization": "Bearer " + client_token(server.url, OWNER)}
    client = {"Authorization": "Bearer " + client_token(server.url, ALICE)}
    with httpx.Client(base_url=server.url, timeout=10) as c:
        body = {"device_id": "dev-gone", "capabilities": {"cpu_cores": 2, "memory_mb": 1024}}
        r = c.post("/api/v1/runners", json=body, headers=owner)
        assert r.status_code == 201, r.text
        runner = {"Authorization": "Bearer " + r.json()["runner_token"]}
        # The runner's long-poll gives up on its side after 1 s (the process "stopped")...
        with pytest.raises(httpx.ReadTimeout):
            c.post(
                "/api/v1/runners/tasks/claim",
                params={"wait": 20},
                headers=runner,
                timeout=httpx.Timeout(10, read=1.0),
            )
        # ...then work arrives and wakes the server side of that abandoned request.
        task = {"title": "t", "type": "command", "config": {"command": ["true"]}}
        r = c.post("/api/v1/tasks", json=task, headers=client)
        assert r.status_code == 201, r.text
        tid = r.json()["id"]
        # It stays pending (a claim would show as assigned with an attempt)...
        assert not wait_for(
            lambda: c.get(f"/api/v1/tasks/{tid}", headers=client).json()["status"] != "pending",
            timeout=3,
        )
        # ...and the live runner takes it.
        r = c.post("/api/v1/runners/tasks/claim", params={"wait": 5}, headers=runner)
        assert r.status_code == 200, r.text
        assert r.json()["task"]["id"] == tid and r.json()["attempt"] == 1

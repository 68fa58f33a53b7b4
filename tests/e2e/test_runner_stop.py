"""A runner stopped with SIGTERM says ``offline`` as its last call: the server shows it offline
and has its work back as soon as the process has exited, with no heartbeat or lease timeout."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from tests.conftest import ALICE, TEST_DB, until
from tests.e2e.procs import ServerProcess
from tests.e2e.runner_procs import (
    RunnerProcess,
    client_token,
    keystore_with,
)

pytestmark = pytest.mark.slow

RUNNER_KEY = "0x" + "45" * 32
# Timeouts far longer than any test here: what frees the runner and its task must be the
# runner's own offline heartbeat, never the liveness sweep or lease expiry.
SERVER_ENV = {
    "LOG_LEVEL": "warning",
    "TASK_LEASE_SECONDS": "120",
    "RUNNER_OFFLINE_TIMEOUT_SECONDS": "600",
    "SCHEDULER_INTERVAL_SECONDS": "0.5",
    "WEBHOOK_ALLOW_PRIVATE": "true",
}


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    url = database_url if TEST_DB == "postgres" else ""
    s = ServerProcess(tmp_path / "server-home", url, **SERVER_ENV).start()
    try:
        s.wait_healthy()
        yield s
    finally:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.send_signal(signal.SIGCONT)  # a test may leave it stopped
        s.stop()


@pytest.fixture
def keystore_path(tmp_path: Path) -> Path:
    return keystore_with(tmp_path, RUNNER_KEY)


class Api:
    """The task owner (ALICE) and the runners' owner, over HTTP."""

    def __init__(self, base: str) -> None:
        self.c = httpx.Client(base_url=base, timeout=15)
        self.c.headers["Authorization"] = "Bearer " + client_token(base, ALICE)
        owner = client_token(base, Account.from_key(RUNNER_KEY))
        self.owner = {"Authorization": f"Bearer {owner}"}

    def create(self, command: str) -> str:
        body = {"title": command, "type": "command", "config": {"command": command}}
        r = self.c.post("/api/v1/tasks", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def task(self, tid: str) -> dict:
        return dict(self.c.get(f"/api/v1/tasks/{tid}").json())

    def attempts(self, tid: str) -> list[dict]:
        return list(self.c.get(f"/api/v1/tasks/{tid}/attempts").json())

    def runners(self) -> dict[str, dict]:
        """The owner's runners by device id."""
        r = self.c.get("/api/v1/runners", headers=self.owner)
        assert r.status_code == 200, r.text
        return {x["device_id"]: x for x in r.json()["items"]}


def runner(server: ServerProcess, keystore: Path, tmp_path: Path, device: str) -> RunnerProcess:
    proc = RunnerProcess(server.url, keystore, device, tmp_path, "--grace-seconds", "1").start()
    proc.wait_registered()
    return proc


async def test_an_idle_runner_stopped_with_sigterm_is_offline_when_it_has_exited(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
):
    api = Api(server.url)
    idle = runner(server, keystore_path, tmp_path, "idle")
    assert api.runners()["idle"]["status"] == "online"

    assert idle.stop(signal.SIGTERM) == 0

    assert api.runners()["idle"]["status"] == "offline"
    assert "runner_offline_reported" in idle.log()


async def test_sigterm_releases_the_held_task_at_once_and_another_runner_claims_it(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
):
    api = Api(server.url)
    first = runner(server, keystore_path, tmp_path, "first")
    tid = api.create("sleep 60")
    await until(lambda: api.task(tid)["status"] == "running", timeout=30)

    assert first.stop(signal.SIGTERM) == 0

    assert api.runners()["first"]["status"] == "offline"
    assert [a["outcome"] for a in api.attempts(tid)] == ["released"]
    assert api.task(tid)["status"] == "pending"
    assert "runner_offline_reported" in first.log()

    second = runner(server, keystore_path, tmp_path, "second")
    try:
        await until(lambda: len(api.attempts(tid)) == 2, timeout=30)
        attempts = api.attempts(tid)
        ids = {device: r["id"] for device, r in api.runners().items()}
        assert [a["runner_id"] for a in attempts] == [ids["first"], ids["second"]]
        assert api.task(tid)["status"] in ("assigned", "running")
    finally:
        assert second.stop(signal.SIGTERM) == 0


async def test_a_runner_whose_server_hangs_still_exits_0_and_says_offline_was_not_reported(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
):
    api = Api(server.url)
    stuck = runner(server, keystore_path, tmp_path, "stuck")
    tid = api.create("sleep 60")
    await until(lambda: api.task(tid)["status"] == "running", timeout=30)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)  # connections are accepted, nothing is answered
    try:
        # Each call made while stopping is bounded, so the runner exits well inside the limit
        # RunnerProcess.stop waits before it kills (a kill would not return 0).
        assert stuck.stop(signal.SIGTERM) == 0
    finally:
        server.proc.send_signal(signal.SIGCONT)
    log = stuck.log()
    assert "runner_offline_not_reported" in log
    assert "runner_offline_reported" not in log


async def test_a_runner_replaced_by_another_process_of_its_device_stops_saying_why(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
):
    # Registering a device again rotates its runner token: the first process's token is
    # refused from then on. It went on trying (a 401 every second, its task run to the end)
    # until stopped by hand; it stops by itself now, with exit status 1 and the reason.
    api = Api(server.url)
    first = runner(server, keystore_path, tmp_path, "twin")
    tid = api.create("sleep 60")
    await until(lambda: api.task(tid)["status"] == "running", timeout=30)
    again = tmp_path / "again"
    again.mkdir()
    second = runner(server, keystore_path, again, "twin")
    try:
        assert first.proc is not None
        await until(lambda: first.proc is not None and first.proc.poll() is not None, timeout=30)
        assert first.proc.returncode == 1
        log = first.log()
        assert "runner_token_refused" in log and "another process registered device 'twin'" in log
        # The new process was handed the task back and gave it up for a fresh run.
        await until(lambda: len(api.attempts(tid)) == 2, timeout=30)
    finally:
        assert second.stop(signal.SIGTERM) == 0

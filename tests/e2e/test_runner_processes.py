"""The reference runner as real processes against a real server on loopback."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from tests.conftest import ALICE, TEST_DB
from tests.e2e.procs import ServerProcess
from tests.e2e.runner_procs import (
    RunnerProcess,
    client_token,
    keystore_with,
    running_server,
    wait_for,
)

pytestmark = pytest.mark.slow

RUNNER_KEY = "0x" + "44" * 32
FAST = {
    "LOG_LEVEL": "warning",
    "RUNNER_HEARTBEAT_INTERVAL_SECONDS": "1",
    "TASK_LEASE_SECONDS": "3",
    "SCHEDULER_INTERVAL_SECONDS": "0.5",
    "TASK_RETRY_BASE_SECONDS": "0.2",
    "TASK_RETRY_MAX_SECONDS": "1",
    "WEBHOOK_ALLOW_PRIVATE": "true",
}


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    with running_server(tmp_path / "server-home", database_url, FAST) as s:
        yield s


@pytest.fixture
def keystore_path(tmp_path: Path) -> Path:
    return keystore_with(tmp_path, RUNNER_KEY)


class Api:
    def __init__(self, base: str) -> None:
        self.c = httpx.Client(base_url=base, timeout=15)
        self.c.headers["Authorization"] = "Bearer " + client_token(base, ALICE)

    def create(self, command: str, **extra: object) -> str:
        body = {"title": command, "type": "command", "config": {"command": command}, **extra}
        r = self.c.post("/api/v1/tasks", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def task(self, tid: str) -> dict:
        return dict(self.c.get(f"/api/v1/tasks/{tid}").json())

    def result(self, tid: str) -> dict:
        return dict(self.c.get(f"/api/v1/tasks/{tid}/result").json())

    def attempts(self, tid: str) -> list[dict]:
        return list(self.c.get(f"/api/v1/tasks/{tid}/attempts").json())

    def logs(self, tid: str) -> list[str]:
        items = self.c.get(f"/api/v1/tasks/{tid}/logs").json()["items"]
        return [line for chunk in items for line in chunk["lines"]]

    def all_done(self, ids: list[str]) -> bool:
        return all(self.task(t)["status"] in ("completed", "failed", "cancelled") for t in ids)


def test_three_runners_complete_fifty_tasks_once_each(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
):
    runners = [
        RunnerProcess(
            server.url, keystore_path, f"dev-{i}", tmp_path, "--max-concurrent-tasks", "2"
        ).start()
        for i in range(3)
    ]
    try:
        for r in runners:
            r.wait_registered()
        api = Api(server.url)
        ids = [api.create(f"echo task-{i}") for i in range(50)]
        assert wait_for(lambda: api.all_done(ids), timeout=120), "tasks did not finish"
        used = set()
        for i, tid in enumerate(ids):
            assert api.task(tid)["status"] == "completed"
            assert api.result(tid)["output"] == f"task-{i}\n"
            attempts = api.attempts(tid)
            assert [a["outcome"] for a in attempts] == ["completed"]
            used.add(attempts[0]["runner_id"])
        assert len(used) >= 2, "work was not spread over the runners"
    finally:
        for r in runners:
            r.stop()


def test_sigkilled_runner_task_completes_elsewhere_after_lease_expiry(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
):
    victim = RunnerProcess(server.url, keystore_path, "victim", tmp_path, "--no-push").start()
    victim.wait_registered()
    api = Api(server.url)
    tid = api.create("sh -c 'echo started; sleep 4; echo finished'")
    assert wait_for(lambda: api.task(tid)["status"] == "running", timeout=30)
    victim.stop(signal.SIGKILL)
    rescuer = RunnerProcess(server.url, keystore_path, "rescuer", tmp_path).start()
    try:
        rescuer.wait_registered()
        assert wait_for(lambda: api.task(tid)["status"] == "completed", timeout=60), api.task(tid)
        attempts = api.attempts(tid)
        assert [a["outcome"] for a in attempts] == ["lease_expired", "completed"]
        assert attempts[0]["runner_id"] != attempts[1]["runner_id"]
        assert api.result(tid)["output"] == "started\nfinished\n"
    finally:
        rescuer.stop()


def test_failed_command_is_reported_failed_never_completed(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
):
    runner = RunnerProcess(server.url, keystore_path, "dev-f", tmp_path).start()
    try:
        runner.wait_registered()
        api = Api(server.url)
        tid = api.create("sh -c 'echo oops; exit 3'", max_attempts=1)
        assert wait_for(lambda: api.task(tid)["status"] == "failed", timeout=30)
        assert api.attempts(tid)[0]["exit_code"] == 3
        assert "oops" in api.logs(tid)
        assert api.c.get(f"/api/v1/tasks/{tid}/result").status_code == 404
    finally:
        runner.stop()


def test_task_cannot_read_the_keystore_or_the_runner_environment(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
):
    runner = RunnerProcess(server.url, keystore_path, "dev-s", tmp_path).start()
    try:
        runner.wait_registered()
        api = Api(server.url)
        secret = keystore_path.read_text()
        read = api.create(f"cat {keystore_path}", max_attempts=1)
        env = api.create("env", max_attempts=1)
        assert wait_for(lambda: api.all_done([read, env]), timeout=30)
        assert api.task(read)["status"] == "failed"
        assert secret not in "\n".join(api.logs(read))
        assert api.task(env)["status"] == "completed"
        out = api.result(env)["output"]
        assert "PARITY_KEYSTORE_PASSWORD" not in out and "ps_run_" not in out
        assert "PATH=" in out
    finally:
        runner.stop()


def test_cancel_stops_a_running_task(server: ServerProcess, keystore_path: Path, tmp_path: Path):
    runner = RunnerProcess(server.url, keystore_path, "dev-c", tmp_path).start()
    try:
        runner.wait_registered()
        api = Api(server.url)
        tid = api.create("sleep 60")
        assert wait_for(lambda: api.task(tid)["status"] == "running", timeout=30)
        assert api.c.delete(f"/api/v1/tasks/{tid}").json()["status"] == "cancel_requested"
        assert wait_for(lambda: api.task(tid)["status"] == "cancelled", timeout=20)
    finally:
        runner.stop()


def test_sigterm_releases_work_and_marks_the_runner_offline(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
):
    runner = RunnerProcess(
        server.url, keystore_path, "dev-t", tmp_path, "--grace-seconds", "1"
    ).start()
    runner.wait_registered()
    api = Api(server.url)
    tid = api.create("sleep 30")
    assert wait_for(lambda: api.task(tid)["status"] == "running", timeout=30)
    assert runner.stop(signal.SIGTERM) == 0
    task = api.task(tid)
    assert task["status"] == "pending"
    assert task["attempts"] == 1 and task["releases"] == 1  # a release does not use up a retry
    assert api.attempts(tid)[0]["outcome"] == "released"
    owner = client_token(server.url, Account.from_key(RUNNER_KEY))
    mine = httpx.get(
        f"{server.url}/api/v1/runners", headers={"Authorization": f"Bearer {owner}"}, timeout=10
    ).json()["items"]
    assert [(r["device_id"], r["status"]) for r in mine] == [("dev-t", "offline")]


def test_wrong_keystore_password_is_a_clear_error(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
):
    runner = RunnerProcess(server.url, keystore_path, "dev-w", tmp_path)
    runner.env["PARITY_KEYSTORE_PASSWORD"] = "wrong"
    runner.start()
    assert runner.proc is not None
    assert runner.proc.wait(timeout=60) == 1
    assert "wrong password" in runner.log()


def test_server_restart_mid_run_loses_nothing_and_accepts_nothing_twice(
    tmp_path: Path, database_url: str, keystore_path: Path
):
    url = database_url if TEST_DB == "postgres" else ""
    home = tmp_path / "restart-home"
    server = ServerProcess(home, url, **FAST).start()
    server.wait_healthy()
    runners = [
        RunnerProcess(
            server.url, keystore_path, f"dev-r{i}", tmp_path, "--max-concurrent-tasks", "2"
        )
        for i in range(2)
    ]
    try:
        for r in runners:
            r.start().wait_registered()
        api = Api(server.url)
        ids = [api.create(f"sh -c 'sleep 0.3; echo job-{i}'") for i in range(20)]
        assert wait_for(
            lambda: sum(api.task(t)["status"] == "completed" for t in ids) >= 3, timeout=60
        )
        assert server.stop() == 0
        server = ServerProcess(home, url, port=server.port, **FAST).start()
        server.wait_healthy()
        api = Api(server.url)
        assert wait_for(lambda: api.all_done(ids), timeout=150), [
            api.task(t)["status"] for t in ids
        ]
        for i, tid in enumerate(ids):
            assert api.task(tid)["status"] == "completed"
            assert api.result(tid)["output"] == f"job-{i}\n"
            outcomes = [a["outcome"] for a in api.attempts(tid)]
            assert outcomes.count("completed") == 1, outcomes
    finally:
        for r in runners:
            r.stop()
        server.stop()


def test_large_output_is_stored_under_a_cid(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
):
    runner = RunnerProcess(server.url, keystore_path, "dev-big", tmp_path).start()
    try:
        runner.wait_registered()
        api = Api(server.url)
        tid = api.create("sh -c 'yes 0123456789 | head -c 200000'")
        assert wait_for(lambda: api.task(tid)["status"] == "completed", timeout=30)
        result = api.result(tid)
        assert len(result["output"].encode()) < 70 * 1024
        assert result["output_cid"]
        whole = api.c.get(f"/api/v1/storage/download/{result['output_cid']}")
        assert whole.status_code == 200
        assert whole.content == b"0123456789\n" * (200000 // 11) + b"0123456789\n"[: 200000 % 11]
        # Stored through the task's output route: pinned for the task's creator, named for it.
        pins = api.c.get("/api/v1/storage/pins").json()["items"]
        assert [p["name"] for p in pins if p["cid"] == result["output_cid"]] == [
            f"output of task {tid}"
        ]
    finally:
        runner.stop()

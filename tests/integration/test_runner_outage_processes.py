"""The outage as a tester saw it, with real processes: a server killed (SIGKILL) while a
runner's command runs, and started again on the same home a while later. The run finishes
while the server is away; its report and its last log lines wait for the server and then go
through: one attempt, completed, every line in order (the runner neither dropped them nor gave
its claim back in the reconcile that follows the failed claims)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_DB
from tests.e2e.procs import ServerProcess
from tests.e2e.runner_procs import RunnerProcess, keystore_with, wait_for
from tests.e2e.test_runner_processes import RUNNER_KEY, Api

pytestmark = pytest.mark.slow

ENV = {"LOG_LEVEL": "warning", "WEBHOOK_ALLOW_PRIVATE": "true"}
DOWN_SECONDS = 3.5


def test_a_run_that_ends_while_the_server_is_killed_is_reported_once_with_every_line(
    tmp_path: Path, database_url: str
) -> None:
    url = database_url if TEST_DB == "postgres" else ""
    home = tmp_path / "home"
    server = ServerProcess(home, url, None, **ENV).start()
    runner = RunnerProcess(
        server.url,
        keystore_with(tmp_path, RUNNER_KEY),
        "dev-outage",
        tmp_path,
        "--max-concurrent-tasks",
        "2",  # a free slot: it goes on claiming, fails, and reconciles once the server is back
        "--allow-unsandboxed-commands",
    )
    try:
        server.wait_healthy()
        runner.start().wait_registered()
        api = Api(server.url)
        tid = api.create('sh -c "echo a1; sleep 2; echo a2; sleep 2; echo a3"')
        assert wait_for(lambda: api.task(tid)["status"] == "running", timeout=30, interval=0.05)
        time.sleep(2.5)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        time.sleep(DOWN_SECONDS)  # the command ends meanwhile (a3 at about 4 s)
        server = ServerProcess(home, url, port=server.port, **ENV).start()
        server.wait_healthy()
        api = Api(server.url)
        assert wait_for(lambda: api.task(tid)["status"] == "completed", timeout=60), api.task(tid)

        assert [(a["attempt"], a["outcome"]) for a in api.attempts(tid)] == [(1, "completed")]
        items = api.c.get(f"/api/v1/tasks/{tid}/logs").json()["items"]
        assert [(i["attempt"], i["seq"]) for i in items] == [(1, n) for n in range(len(items))]
        assert [line for i in items for line in i["lines"]] == ["a1", "a2", "a3"]
        assert api.result(tid)["output"] == "a1\na2\na3\n"
        assert "unknown_claims_released" not in runner.log()
    finally:
        runner.stop()
        server.stop()

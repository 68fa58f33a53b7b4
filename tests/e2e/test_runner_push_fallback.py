"""A runner started with the README's defaults (push on, webhook on loopback) against a server
whose SSRF guard refuses private webhooks (the PostgreSQL-mode default): it starts anyway,
says once that it pulls instead, and completes work by long-poll."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ALICE, TEST_DB
from tests.e2e.procs import ServerProcess
from tests.e2e.runner_procs import RunnerProcess, client_token, make_keystore, wait_for

pytestmark = pytest.mark.slow

RUNNER_KEY = "0x" + "45" * 32


@pytest.fixture
def strict_server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    url = database_url if TEST_DB == "postgres" else ""
    s = ServerProcess(
        tmp_path / "server-home",
        url,
        LOG_LEVEL="warning",
        WEBHOOK_ALLOW_PRIVATE="false",
        RUNNER_HEARTBEAT_INTERVAL_SECONDS="1",
    ).start()
    try:
        s.wait_healthy()
        yield s
    finally:
        s.stop()


def test_a_runner_whose_webhook_is_refused_pulls_and_completes_work(
    strict_server: ServerProcess, tmp_path: Path
) -> None:
    keystore = tmp_path / "secret" / "runner.json"
    make_keystore(keystore, RUNNER_KEY)
    runner = RunnerProcess(strict_server.url, keystore, "fallback", tmp_path).start()
    try:
        runner.wait_registered()
        notes = [line for line in runner.log().splitlines() if "push_refused" in line]
        assert len(notes) == 1, runner.log()
        assert "--push-public-url" in notes[0] and "--no-push" in notes[0]
        assert "loopback" in notes[0]  # the server's reason

        api = httpx.Client(base_url=strict_server.url, timeout=15)
        api.headers["Authorization"] = "Bearer " + client_token(strict_server.url, ALICE)
        r = api.post(
            "/api/v1/tasks",
            json={"title": "pulled", "type": "command", "config": {"command": "echo pulled"}},
        )
        assert r.status_code == 201, r.text
        tid = r.json()["id"]
        assert wait_for(
            lambda: api.get(f"/api/v1/tasks/{tid}").json()["status"] == "completed", timeout=60
        ), runner.log()
        assert api.get(f"/api/v1/tasks/{tid}/result").json()["output"] == "pulled\n"
        assert "error:" not in runner.log()  # it never stopped on the refusal
    finally:
        assert runner.stop() == 0, runner.log()

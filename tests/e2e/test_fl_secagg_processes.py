"""Secure aggregation (SecAgg+) over real processes: a server and runner processes that train on
scikit-learn's digits and run every round's four SecAgg+ stages through the server. The session
must learn as plain FedAvg does, with a runner killed mid-session (its masks recovered from
its neighbours' shares, or its slot dropped before it shared)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import TEST_DB
from tests.e2e.procs import ServerProcess
from tests.e2e.runner_procs import RunnerProcess, keystore_with, wait_for
from tests.e2e.test_fl_processes import (
    FAST,
    FL,
    RUNNER_KEY,
    TERMINAL,
    Client,
    digits_csv,
    session_body,
    start_runners,
)

pytestmark = pytest.mark.slow

SECAGG = {
    "mode": "secagg_plus",
    "num_shares": 3,
    "reconstruction_threshold": 2,
    "clipping_range": 8.0,
    "quantization_range": 2**20,
    "max_weight": 1000,
    "stage_timeout_seconds": 10,
}


def test_a_secagg_session_learns_digits_and_survives_a_runner_killed_mid_session(
    tmp_path: Path, database_url: str
) -> None:
    url = database_url if TEST_DB == "postgres" else ""
    server = ServerProcess(tmp_path / "home", url, **FAST).start()
    runners: list[RunnerProcess] = []
    try:
        server.wait_healthy()
        runners = start_runners(server, keystore_with(tmp_path, RUNNER_KEY), tmp_path, 4)
        api = Client(server.url)
        assert wait_for(lambda: api.online_fl_runners() == 4, timeout=30)
        body = session_body(
            api.upload(digits_csv()),
            participants=4,
            rounds=6,
            min_share=0.75,
            round_timeout_seconds=60,
            privacy_config={"secure_aggregation": SECAGG},
        )
        sid = api.create(body)
        api.start(sid)
        assert wait_for(lambda: api.session(sid)["current_round"] >= 3, timeout=120)
        runners[1].stop(signal.SIGKILL)
        assert wait_for(lambda: api.session(sid)["status"] in TERMINAL, timeout=300), api.session(
            sid
        )
        session = api.session(sid)
        assert session["status"] == "completed", session["failure_reason"]
        rounds = api.metrics(sid)
        assert [r["round"] for r in rounds] == list(range(1, 7))
        assert rounds[0]["participants"] == 4
        assert min(r["participants"] for r in rounds) == 3  # the killed runner's rounds
        assert rounds[-1]["test_accuracy"] >= 0.85, rounds[-1]
        # Every round ran the SecAgg+ stages: no plain update was ever accepted.
        tasks = api.c.get("/api/v1/tasks", params={"type": "fl_train", "limit": 100}).json()
        done = [t["id"] for t in tasks if t["status"] == "completed"]
        assert len(done) >= 6 * 3
        for task_id in done:
            result = api.c.get(f"/api/v1/tasks/{task_id}/result").json()
            assert "secure_aggregation" in (result.get("output") or ""), result
        listed = api.c.get(f"{FL}/sessions/{sid}/rounds").json()["items"]
        assert all(r["status"] == "completed" for r in listed)
    finally:
        for r in runners:
            r.stop()
        server.stop()

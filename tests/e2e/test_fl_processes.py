"""Federated learning over real processes: a server, runner processes that train with numpy,
scikit-learn's digits data set uploaded through the storage API. The session must learn (test
accuracy measured by the server on a held-out split), survive a runner killed mid-session and
a server restart mid-round."""

from __future__ import annotations

import io
import signal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from eth_account import Account

from tests.conftest import ALICE, TEST_DB
from tests.e2e.procs import ServerProcess
from tests.e2e.runner_procs import RunnerProcess, client_token, keystore_with, wait_for

pytestmark = pytest.mark.slow

RUNNER_KEY = "0x" + "46" * 32
RUNNER_OWNER = Account.from_key(RUNNER_KEY)
FAST = {
    "LOG_LEVEL": "warning",
    "RUNNER_HEARTBEAT_INTERVAL_SECONDS": "1",
    "TASK_LEASE_SECONDS": "3",
    "RUNNER_OFFLINE_TIMEOUT_SECONDS": "4",
    "SCHEDULER_INTERVAL_SECONDS": "0.5",
    "WEBHOOK_ALLOW_PRIVATE": "true",
}
FL = "/api/v1/federated-learning"
TERMINAL = ("completed", "failed", "cancelled")


def digits_csv() -> bytes:
    from sklearn.datasets import load_digits

    d = load_digits()
    out = io.StringIO()
    out.write(",".join([*(f"p{i}" for i in range(64)), "label"]) + "\n")
    for row, label in zip(d.data / 16.0, d.target, strict=True):
        out.write(",".join(f"{v:.4g}" for v in row) + f",{int(label)}\n")
    return out.getvalue().encode()


class Client:
    def __init__(self, base: str) -> None:
        self.c = httpx.Client(base_url=base, timeout=30)
        self.c.headers["Authorization"] = "Bearer " + client_token(base, ALICE)

    def upload(self, data: bytes) -> str:
        r = self.c.put("/api/v1/storage/upload", content=data)
        assert r.status_code == 201, r.text
        return str(r.json()["cid"])

    def create(self, body: dict[str, Any]) -> str:
        r = self.c.post(f"{FL}/sessions", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def start(self, sid: str) -> None:
        r = self.c.post(f"{FL}/sessions/{sid}/start")
        assert r.status_code == 200, r.text

    def session(self, sid: str) -> dict[str, Any]:
        return dict(self.c.get(f"{FL}/sessions/{sid}").json())

    def metrics(self, sid: str) -> list[dict[str, Any]]:
        return list(self.c.get(f"{FL}/sessions/{sid}/metrics").json()["rounds"])

    def online_fl_runners(self) -> int:
        """FL runners online, as their owner (the runners' wallet) sees them."""
        owner = {"Authorization": "Bearer " + client_token(str(self.c.base_url), RUNNER_OWNER)}
        items = self.c.get("/api/v1/runners", params={"limit": 100}, headers=owner).json()["items"]
        return sum(r["status"] in ("online", "busy") and r["capabilities"]["fl"] for r in items)


def session_body(cid: str, *, participants: int, rounds: int, **config: Any) -> dict[str, Any]:
    return {
        "name": "digits",
        "model_type": "neural_network",
        "total_rounds": rounds,
        "min_participants": participants,
        "training_data": {
            "dataset_cid": cid,
            "data_format": "csv",
            "split_strategy": "iid",
            "seed": 3,
            "test_split": 0.2,
            "metadata": {"min_samples": 10},
        },
        "config": {
            "aggregation_method": "fedavg",
            "learning_rate": 0.1,
            "batch_size": 16,
            "local_epochs": 3,
            "model_config": {"input_size": 64, "hidden_size": 32, "output_size": 10},
            **config,
        },
    }


def start_runners(server: ServerProcess, keystore: Path, tmp: Path, n: int) -> list[RunnerProcess]:
    runners = [RunnerProcess(server.url, keystore, f"fl-{i}", tmp).start() for i in range(n)]
    for r in runners:
        r.wait_registered()
    return runners


def test_fl_session_learns_digits_and_survives_a_runner_killed_mid_session(
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
        cid = api.upload(digits_csv())
        body = session_body(cid, participants=4, rounds=8, min_share=0.75, round_timeout_seconds=15)
        sid = api.create(body)
        api.start(sid)
        assert wait_for(lambda: api.session(sid)["current_round"] >= 3, timeout=120)
        runners[1].stop(signal.SIGKILL)
        assert wait_for(lambda: api.session(sid)["status"] in TERMINAL, timeout=240), api.session(
            sid
        )
        session = api.session(sid)
        assert session["status"] == "completed", session["failure_reason"]
        rounds = api.metrics(sid)
        assert [r["round"] for r in rounds] == list(range(1, 9))
        # The killed runner's rounds closed with the other three (min_share 0.75).
        assert min(r["participants"] for r in rounds) == 3
        assert rounds[0]["participants"] == 4
        assert rounds[-1]["test_accuracy"] >= 0.90, rounds[-1]
        assert rounds[-1]["test_accuracy"] > rounds[0]["test_accuracy"] - 0.05
        model = api.c.get(f"{FL}/sessions/{sid}/model").json()
        assert model["round"] == 8 and not model["intermediate"]
        blob = api.c.get(f"{FL}/sessions/{sid}/model/download")
        assert blob.status_code == 200
        from parity.core.fl.tensors import decode

        weights = decode(blob.content)
        assert {k: list(v.shape) for k, v in weights.items()} == model["tensors"]
        assert all(np.isfinite(v).all() for v in weights.values())
    finally:
        for r in runners:
            r.stop()
        server.stop()


def test_runners_training_with_pytorch_and_numpy_learn_together(
    tmp_path: Path, database_url: str
) -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed: no torch trainer to run")
    url = database_url if TEST_DB == "postgres" else ""
    server = ServerProcess(tmp_path / "home", url, **FAST).start()
    keystore = keystore_with(tmp_path, RUNNER_KEY)
    runners = [
        RunnerProcess(server.url, keystore, "fl-torch", tmp_path, "--fl-trainer", "torch"),
        RunnerProcess(server.url, keystore, "fl-numpy", tmp_path),
    ]
    try:
        server.wait_healthy()
        for r in runners:
            r.start().wait_registered()
        api = Client(server.url)
        assert wait_for(lambda: api.online_fl_runners() == 2, timeout=30)
        cid = api.upload(digits_csv())
        sid = api.create(session_body(cid, participants=2, rounds=4, round_timeout_seconds=30))
        api.start(sid)
        assert wait_for(lambda: api.session(sid)["status"] in TERMINAL, timeout=180)
        session = api.session(sid)
        assert session["status"] == "completed", session["failure_reason"]
        rounds = api.metrics(sid)
        assert [r["participants"] for r in rounds] == [2, 2, 2, 2]
        assert rounds[-1]["test_accuracy"] >= 0.85, rounds[-1]
        assert "fl=yes (torch)" in runners[0].log()
    finally:
        for r in runners:
            r.stop()
        server.stop()


def test_fl_session_resumes_after_a_server_restart_mid_round(
    tmp_path: Path, database_url: str
) -> None:
    url = database_url if TEST_DB == "postgres" else ""
    home = tmp_path / "home"
    server = ServerProcess(home, url, **FAST).start()
    runners: list[RunnerProcess] = []
    try:
        server.wait_healthy()
        runners = start_runners(server, keystore_with(tmp_path, RUNNER_KEY), tmp_path, 3)
        api = Client(server.url)
        assert wait_for(lambda: api.online_fl_runners() == 3, timeout=30)
        sid = api.create(session_body(api.upload(digits_csv()), participants=3, rounds=6))
        api.start(sid)
        assert wait_for(lambda: api.session(sid)["current_round"] >= 2, timeout=120)
        server.stop(signal.SIGKILL)
        server = ServerProcess(home, url, port=server.port, **FAST).start()
        server.wait_healthy()
        api = Client(server.url)
        assert wait_for(lambda: api.session(sid)["status"] in TERMINAL, timeout=240), api.session(
            sid
        )
        final = api.session(sid)
        tasks = api.c.get("/api/v1/tasks", params={"type": "fl_train", "limit": 100}).json()
        ended = [
            (t["title"], t["status"], t.get("last_error"))
            for t in tasks
            if t["status"] != "completed"
        ]
        assert final["status"] == "completed", (final["failure_reason"], ended)
        rounds = api.metrics(sid)
        # Every round aggregated exactly once, in order, none skipped.
        assert [r["round"] for r in rounds] == list(range(1, 7))
        assert rounds[-1]["test_accuracy"] >= 0.85
    finally:
        for r in runners:
            r.stop()
        server.stop()

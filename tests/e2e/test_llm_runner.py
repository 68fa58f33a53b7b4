"""A real `parity-runner` with `--llm-backend openai=URL` against a real server, both as
processes on loopback. The backend is the fake OpenAI-compatible server of
tests/contract/llm_fakes.py (the real wire format) served by uvicorn on loopback, or the real
llama.cpp server (xllamacpp with SmolLM2-135M) where installed.

- the runner reports the backend's model at registration;
- a backend that is down when the runner starts is found by a later heartbeat;
- a prompt (`POST /api/llm/prompts`) is routed to the runner, runs there as an `llm` task, and
  is completed with the text and the backend's token counts as `usage`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from eth_account import Account

from tests.conftest import ALICE, until
from tests.contract.llm_fakes import MODEL, REPLY, FakeLlm
from tests.contract.llm_real import find_gguf, unavailable_reason, xllamacpp_server
from tests.e2e.procs import ServerProcess, free_port
from tests.e2e.runner_procs import (
    RunnerProcess,
    client_token,
    keystore_with,
    running_server,
)

pytestmark = pytest.mark.slow

RUNNER_KEY = "0x" + "46" * 32
PRICE_IN, PRICE_OUT = 100, 300
PROMPT = "Tell me something about the sea"
REAL_MODEL = "smollm2-135m"
FAST = {
    "LOG_LEVEL": "warning",
    "RUNNER_HEARTBEAT_INTERVAL_SECONDS": "1",
    "TASK_LEASE_SECONDS": "10",
    "SCHEDULER_INTERVAL_SECONDS": "0.5",
    "WEBHOOK_ALLOW_PRIVATE": "true",
}


class FakeBackend:
    """The fake OpenAI-compatible server, served by uvicorn in a thread of the test process
    (a real HTTP server on a loopback port; what it received stays inspectable)."""

    def __init__(self, port: int | None = None) -> None:
        self.fake = FakeLlm("openai")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.fake.app(), host="127.0.0.1", port=self.port, log_level="warning",
            lifespan="off", timeout_graceful_shutdown=1,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def start(self) -> FakeBackend:
        self.thread.start()
        return self

    async def wait_up(self) -> None:
        await until(lambda: self.server.started, timeout=20)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    with running_server(tmp_path / "server-home", database_url, FAST) as s:
        yield s


@pytest.fixture
def keystore_path(tmp_path: Path) -> Path:
    return keystore_with(tmp_path, RUNNER_KEY)


def llm_runner(
    server: ServerProcess, keystore: Path, tmp_path: Path, device: str, backend_url: str, model: str
) -> RunnerProcess:
    return RunnerProcess(
        server.url, keystore, device, tmp_path,
        "--llm-backend", f"openai={backend_url}/v1",
        "--llm-price", f"{model}={PRICE_IN}/{PRICE_OUT}",
    )  # fmt: skip


def reported_models(server: ServerProcess, device: str) -> list[dict[str, Any]]:
    """The models the server holds for the runner ``device`` (read by its owner)."""
    owner = client_token(server.url, Account.from_key(RUNNER_KEY))
    mine = httpx.get(
        f"{server.url}/api/v1/runners", headers={"Authorization": f"Bearer {owner}"}, timeout=10
    ).json()["items"]
    [runner] = [r for r in mine if r["device_id"] == device]
    return list(runner["models"])


async def test_the_runner_reports_its_backends_model_at_registration(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
) -> None:
    backend = FakeBackend().start()
    await backend.wait_up()
    runner = llm_runner(server, keystore_path, tmp_path, "llm-1", backend.url, MODEL).start()
    try:
        runner.wait_registered()
        # Registration itself carries the model: no heartbeat needed before it shows.
        [model] = reported_models(server, "llm-1")
        assert model["model_name"] == MODEL and model["is_loaded"] is True
        assert model["max_tokens"] == 2048  # the fake's max_model_len
        assert "llm_backend_unreachable" not in runner.log()
    finally:
        runner.stop()
        backend.stop()


async def test_a_backend_down_at_start_is_found_by_a_later_heartbeat(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
) -> None:
    port = free_port()
    runner = llm_runner(
        server, keystore_path, tmp_path, "llm-2", f"http://127.0.0.1:{port}", MODEL
    ).start()
    backend = FakeBackend(port)
    try:
        runner.wait_registered()  # the runner starts without its backend
        assert reported_models(server, "llm-2") == []
        backend.start()
        await backend.wait_up()
        await until(
            lambda: [m["model_name"] for m in reported_models(server, "llm-2")] == [MODEL],
            timeout=30,
        )
        log = runner.log()
        # One line when the backend went down, not one per heartbeat; one when it came back.
        assert log.count("llm_backend_unreachable") == 1, log
        assert log.count("llm_backend_reachable") == 1, log
    finally:
        runner.stop()
        backend.stop()


class Backend:
    """A running OpenAI-compatible server: its base URL, the model it serves, and the fake
    (None for the real server)."""

    def __init__(self, url: str, model: str, fake: FakeBackend | None) -> None:
        self.url, self.model, self.fake = url, model, fake


@pytest.fixture(params=["fake", "xllamacpp"])
def llm_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "fake":
        fake = FakeBackend().start()
        try:
            yield Backend(fake.url, MODEL, fake)
        finally:
            fake.stop()
        return
    reason = unavailable_reason()
    if reason is not None:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    gguf = find_gguf()
    assert gguf is not None
    with xllamacpp_server(gguf, REAL_MODEL) as url:  # returns once it listens
        yield Backend(url.rstrip("/"), REAL_MODEL, None)


async def test_a_prompt_runs_on_the_runner_and_is_completed_with_its_usage(
    server: ServerProcess,
    keystore_path: Path,
    tmp_path: Path,
    llm_backend: Backend,
) -> None:
    model, fake = llm_backend.model, llm_backend.fake
    if fake is not None:
        await fake.wait_up()
    runner = llm_runner(server, keystore_path, tmp_path, "llm-3", llm_backend.url, model)
    runner.start()
    api = httpx.Client(base_url=server.url, timeout=60)
    api.headers["Authorization"] = "Bearer " + client_token(server.url, ALICE)
    try:
        runner.wait_registered()
        # The model is listed with this runner's price (the only runner: the lowest price; a
        # server without a chain bills nothing, but still shows what runners ask).
        models = api.get("/api/llm/models").json()["models"]
        [listed] = [m for m in models if m["model_name"] == model]
        assert listed["is_loaded"] is True
        assert listed["lowest_price_per_1k_input"] == str(PRICE_IN)
        assert listed["lowest_price_per_1k_output"] == str(PRICE_OUT)

        max_tokens = 16
        r = api.post(
            "/api/llm/prompts",
            params={"wait": 30},
            json={"model_name": model, "prompt": PROMPT, "max_tokens": max_tokens},
        )
        assert r.status_code in (200, 202), r.text
        pid = str(r.json()["id"])

        def prompt() -> dict[str, Any]:
            return dict(api.get(f"/api/llm/prompts/{pid}").json())

        await until(lambda: prompt()["status"] in ("completed", "failed"), timeout=60)
        view = prompt()
        assert view["status"] == "completed", view
        assert view["runner_id"] is not None
        # The prompt's llm task: completed by this runner through the ordinary task completion,
        # with the generated text as output and the backend's counts as usage.
        task_id = str(view["task_id"])
        result = api.get(f"/api/v1/tasks/{task_id}/result").json()
        usage = result["usage"]
        assert result["output"] == view["response"]
        assert view["usage"]["reported_input_tokens"] == usage["input_tokens"]
        assert view["usage"]["reported_output_tokens"] == usage["output_tokens"]
        if fake is not None:
            # The fake answers deterministically: its reply, and usage it counts itself
            # (prompt words in, pieces out).
            assert view["response"] == "".join(REPLY)
            assert usage["input_tokens"] == len(PROMPT.split())
            assert usage["output_tokens"] == len(REPLY)
            [(_, sent)] = [(p, b) for p, b in fake.fake.requests if b.get("model") == model]
            assert sent["stream_options"] == {"include_usage": True}
        else:
            assert view["response"].strip()
            assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= max_tokens
        attempts = api.get(f"/api/v1/tasks/{task_id}/attempts").json()
        assert [a["outcome"] for a in attempts] == ["completed"]
        assert attempts[0]["runner_id"] == view["runner_id"]
    finally:
        api.close()
        runner.stop()

"""The official `openai` client against a real server with real `parity-runner` processes and
their backend (the fake OpenAI-compatible server of tests/contract/llm_fakes.py, and the real
llama.cpp server where xllamacpp is installed), as the testers ran them:

- a prompt longer than the backend's context: llama.cpp refuses it at once (HTTP 400), and so
  does the gateway, with llama.cpp's message, instead of holding the client until the queue's
  deadline and answering a retryable 503; the prompt is not tried on the other runner;
- a client that gives up (the `openai` client's own timeout) on a non-streaming request: the
  prompt is cancelled on its runner instead of running to its end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import until
from tests.contract.llm_fakes import MODEL
from tests.e2e.procs import ServerProcess
from tests.e2e.runner_procs import RunnerProcess, running_server
from tests.e2e.test_gateway_openai import api_key, latest_prompt
from tests.e2e.test_llm_runner import FAST, Backend, FakeBackend, keystore_path, llm_backend
from tests.e2e.test_llm_runner import llm_runner as runner_process
from tests.integration.test_llm_lifecycle import CONTEXT_EXCEEDED

__all__ = ["keystore_path", "llm_backend"]  # fixtures, used by name
pytestmark = pytest.mark.slow

QUEUE_DEADLINE = 30  # what a refused prompt waited for before, then a 503


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    env = {**FAST, "LLM_QUEUE_TIMEOUT_SECONDS": str(QUEUE_DEADLINE)}
    with running_server(tmp_path / "server-home", database_url, env) as s:
        yield s


def runners(
    server: ServerProcess, keystore: Path, tmp_path: Path, url: str, model: str, n: int
) -> list[RunnerProcess]:
    out = [
        runner_process(server, keystore, tmp_path, f"life-{i}", url, model).start()
        for i in range(n)
    ]
    for r in out:
        r.wait_registered()
    # Served once listed: a backend slow to list its models at registration is found at a later
    # heartbeat (the runners' discovery retries), and a prompt sent before then is a 404.
    key = api_key(server)

    def listed() -> bool:
        r = httpx.get(f"{server.url}/api/v1/llm/models", headers={"Authorization": f"Bearer {key}"})
        served = [m for m in r.json().get("models", []) if m["model_name"] == model]
        return bool(served) and served[0].get("runner_count", n) >= n

    deadline = time.monotonic() + 60
    while not listed():
        assert time.monotonic() < deadline, "the runners never reported " + model
        time.sleep(0.2)
    return out


async def test_a_prompt_longer_than_the_context_is_a_400_at_once_and_tried_on_one_runner(
    server: ServerProcess, keystore_path: Path, tmp_path: Path, llm_backend: Backend
) -> None:
    model, fake = llm_backend.model, llm_backend.fake
    if fake is not None:
        await fake.wait_up()
        # The fake answers every generation as llama.cpp answers a prompt beyond its context.
        fake.fake.mode, fake.fake.status_code = "status", 400
        fake.fake.error_body = CONTEXT_EXCEEDED
    started = runners(server, keystore_path, tmp_path, llm_backend.url, model, 2)
    key = api_key(server)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, timeout=120, max_retries=0)
    try:
        began = time.monotonic()
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "word " * 3000}],
                max_tokens=5,
            )
        assert time.monotonic() - began < QUEUE_DEADLINE / 2
        assert "exceeds the available context size" in str(refused.value)
        body = refused.value.body
        assert isinstance(body, dict) and body["type"] == "invalid_request_error"
        prompt = latest_prompt(server, key)
        assert (prompt["status"], prompt["attempts"]) == ("failed", 1), prompt
    finally:
        client.close()
        for r in started:
            r.stop()


async def test_an_openai_client_that_times_out_cancels_its_prompt_on_the_runner(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
) -> None:
    backend = FakeBackend().start()
    await backend.wait_up()
    backend.fake.mode, backend.fake.delay = "slow_first", 60.0  # no token for a minute
    [runner] = runners(server, keystore_path, tmp_path, backend.url, MODEL, 1)
    key = api_key(server)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, timeout=2, max_retries=0)
    try:
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
            )

        def ended() -> bool:
            return bool(latest_prompt(server, key)["status"] == "failed")

        # Told to stop through its heartbeat (every second here), long before the backend
        # would have answered.
        await until(ended, timeout=20)
        prompt = latest_prompt(server, key)
        assert prompt["response"] in (None, ""), prompt
        r = httpx.get(
            f"{server.url}/api/v1/tasks/{prompt['task_id']}/attempts",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert [a["outcome"] for a in r.json()] == ["cancelled"], r.text
    finally:
        client.close()
        runner.stop()
        backend.stop()

"""The official `openai` Python client against the OpenAI-compatible gateway of a real server,
with real `parity-runner` processes and their backend (the fake OpenAI-compatible server of
tests/contract/llm_fakes.py, and the real llama.cpp server where xllamacpp is installed):

- a streamed chat completion arrives token by token, relayed from the runner through the
  streaming leg, and the usage the client receives is what the server metered for the prompt;
- a runner killed before its first token: the prompt completes on another runner, and the
  client still gets the whole answer (one completed attempt: billed once);
- a runner killed after its first token: its stream connection breaks, the client gets an error
  event at once (no lease expiry), and the prompt fails with that reason.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ALICE, until
from tests.contract.llm_fakes import MODEL, REPLY
from tests.contract.llm_real import find_gguf, unavailable_reason, xllamacpp_server
from tests.e2e.procs import ServerProcess
from tests.e2e.runner_procs import RunnerProcess, client_token
from tests.e2e.test_llm_runner import (
    REAL_MODEL,
    Backend,
    FakeBackend,
    keystore_path,
    llm_backend,
    llm_runner,
    server,
)

__all__ = ["keystore_path", "llm_backend", "server"]  # fixtures, used by name
pytestmark = pytest.mark.slow


def api_key(server: ServerProcess) -> str:
    session = client_token(server.url, ALICE)
    r = httpx.post(
        f"{server.url}/api/v1/auth/keys",
        json={"name": "openai"},
        headers={"Authorization": f"Bearer {session}"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def latest_prompt(server: ServerProcess, key: str) -> dict[str, Any]:
    r = httpx.get(
        f"{server.url}/api/llm/prompts",
        params={"limit": 1},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    [prompt] = r.json()["prompts"]
    return dict(prompt)


def stream_chat(server: ServerProcess, key: str, model: str) -> tuple[list[str], Any]:
    """Stream a chat completion with the official client: (content deltas, the usage chunk's
    usage)."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, timeout=120)
    try:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Tell me something about the sea"}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        usage = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        return pieces, usage
    finally:
        client.close()


def hang_up_when(
    server: ServerProcess,
    key: str,
    path: str,
    body: dict[str, Any],
    enough: Callable[[int, str], bool],
) -> None:
    """Stream ``body`` to ``path`` and hang up at the first event line for which
    ``enough(events so far, line)`` holds."""
    with (
        httpx.Client(base_url=server.url, timeout=60) as http,
        http.stream("POST", path, json=body, headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        assert r.status_code == 200
        events = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                events += 1
                if enough(events, line):
                    return


async def test_the_openai_client_streams_a_chat_completion_through_a_runner(
    server: ServerProcess, keystore_path: Path, tmp_path: Path, llm_backend: Backend
) -> None:
    model, fake = llm_backend.model, llm_backend.fake
    if fake is not None:
        await fake.wait_up()
    runner = llm_runner(server, keystore_path, tmp_path, "gw-1", llm_backend.url, model).start()
    try:
        runner.wait_registered()
        key = api_key(server)
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, timeout=30)
        assert model in [m.id for m in client.models.list()]
        client.close()
        pieces, usage = stream_chat(server, key, model)
        if fake is not None:
            assert pieces == REPLY  # token by token, as the backend produced them
        else:
            assert "".join(pieces).strip()
        prompt = latest_prompt(server, key)
        assert prompt["status"] == "completed" and prompt["response"] == "".join(pieces)
        billed = prompt["usage"]
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
            billed["input_tokens"], billed["output_tokens"], billed["total_tokens"],
        )  # fmt: skip
        assert "token_stream_failed" not in runner.log()
    finally:
        runner.stop()


async def test_a_runner_killed_before_its_first_token_fails_over_and_is_billed_once(
    tmp_path: Path, database_url: str, keystore_path: Path
) -> None:
    from tests.conftest import TEST_DB
    from tests.e2e.test_llm_runner import FAST

    url = database_url if TEST_DB == "postgres" else ""
    fast = {**FAST, "RUNNER_OFFLINE_TIMEOUT_SECONDS": "3"}
    srv = ServerProcess(tmp_path / "server-home", url, **fast).start()
    silent, steady = FakeBackend().start(), FakeBackend().start()
    silent.fake.mode, silent.fake.delay = "slow_first", 120.0  # never a first token in time
    runners: list[RunnerProcess] = []
    try:
        srv.wait_healthy()
        await silent.wait_up()
        await steady.wait_up()
        # The cheaper runner is routed first (same load, no latency known yet).
        first = RunnerProcess(
            srv.url, keystore_path, "gw-silent", tmp_path,
            "--llm-backend", f"openai={silent.url}/v1", "--llm-price", f"{MODEL}=1/1",
        ).start()  # fmt: skip
        runners.append(first)
        first.wait_registered()
        second = llm_runner(srv, keystore_path, tmp_path, "gw-steady", steady.url, MODEL).start()
        runners.append(second)
        second.wait_registered()
        key = api_key(srv)

        import threading

        got: dict[str, Any] = {}
        client = threading.Thread(
            target=lambda: got.update(answer=stream_chat(srv, key, MODEL)), daemon=True
        )
        client.start()
        await until(lambda: any(b.get("model") == MODEL for _, b in silent.fake.requests), 30)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)  # dies holding the prompt, before any token
        await until(lambda: not client.is_alive(), timeout=90)
        pieces, usage = got["answer"]
        assert pieces == REPLY
        prompt = latest_prompt(srv, key)
        assert prompt["status"] == "completed" and prompt["attempts"] == 2
        attempts = httpx.get(
            f"{srv.url}/api/v1/tasks/{prompt['task_id']}/attempts",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ).json()
        assert [a["outcome"] for a in attempts].count("completed") == 1
        assert usage.completion_tokens == prompt["usage"]["output_tokens"]
    finally:
        for r in runners:
            r.stop()
        silent.stop()
        steady.stop()
        srv.stop()


async def test_a_client_that_goes_away_mid_stream_cancels_the_work_on_the_runner(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
) -> None:
    backend = FakeBackend().start()
    backend.fake.mode, backend.fake.delay = "stall", 120.0  # one token, then nothing for long
    await backend.wait_up()
    runner = llm_runner(server, keystore_path, tmp_path, "gw-gone", backend.url, MODEL).start()
    try:
        runner.wait_registered()
        key = api_key(server)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        # The first token came: hang up.
        hang_up_when(server, key, "/v1/chat/completions", body, lambda n, line: REPLY[0] in line)
        # The gateway cancels the prompt; the runner hears of it and closes its backend stream.
        await until(lambda: backend.fake.disconnected.is_set(), timeout=30)
        # The runner then acknowledges the cancel (its fail report follows the hang-up).
        await until(lambda: latest_prompt(server, key)["status"] == "failed", timeout=30)
        prompt = latest_prompt(server, key)
        task = httpx.get(
            f"{server.url}/api/v1/tasks/{prompt['task_id']}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ).json()
        assert task["status"] in ("cancel_requested", "cancelled")
        # Reported as the cancel it is, not as a stream that broke off: the server ends the
        # runner's stream by dropping its connection, and the runner checks the claim's lease.
        assert prompt["error"] == "cancelled", prompt
        assert "token_stream_cancelled" in runner.log()
    finally:
        runner.stop()
        backend.stop()


async def test_a_client_leaving_a_real_backends_stream_is_reported_as_a_cancel(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
) -> None:
    """llama.cpp keeps producing tokens, so the runner is writing its stream when the server
    drops that connection on the cancel: the answer ``{"cancelled": true}`` is lost to the
    reset, and the runner still reports a cancel (from the claim's lease), not a broken stream."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    gguf = find_gguf()
    assert gguf is not None
    with xllamacpp_server(gguf, REAL_MODEL) as url:
        runner = llm_runner(
            server, keystore_path, tmp_path, "gw-real-gone", url.rstrip("/"), REAL_MODEL
        ).start()
        try:
            runner.wait_registered()
            key = api_key(server)
            body = {"model": REAL_MODEL, "prompt": "Once upon a time,", "max_tokens": 400,
                    "stream": True}  # fmt: skip
            # Tokens keep coming: hang up after five.
            hang_up_when(server, key, "/v1/completions", body, lambda n, line: n == 5)
            await until(lambda: latest_prompt(server, key)["status"] == "failed", timeout=30)
            prompt = latest_prompt(server, key)
            assert prompt["error"] == "cancelled", prompt
            assert prompt["usage"]["partial"] is True
        finally:
            runner.stop()


async def test_a_runner_killed_mid_stream_ends_the_stream_with_an_error_at_once(
    server: ServerProcess, keystore_path: Path, tmp_path: Path
) -> None:
    backend = FakeBackend().start()
    backend.fake.mode, backend.fake.delay = "stall", 120.0  # one token, then nothing for long
    await backend.wait_up()
    runner = llm_runner(server, keystore_path, tmp_path, "gw-killed", backend.url, MODEL).start()
    try:
        runner.wait_registered()
        key = api_key(server)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        events: list[str] = []
        with (
            httpx.Client(base_url=server.url, timeout=60) as http,
            http.stream(
                "POST", "/v1/chat/completions", json=body,
                headers={"Authorization": f"Bearer {key}"},
            ) as r,
        ):  # fmt: skip
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                if REPLY[0] in line and runner.proc is not None and runner.proc.poll() is None:
                    runner.proc.send_signal(signal.SIGKILL)  # the first token came: kill it
        # The stream ended on its own, well before the 10 s lease could have expired.
        assert events[-1] == "[DONE]" and "stream broke off" in events[-2]
        prompt = latest_prompt(server, key)
        assert prompt["status"] == "failed" and "stream broke off" in prompt["error"]
        assert prompt["attempts"] == 1  # not re-run: the client saw part of an answer
        # Metered for what reached the client: the one delivered token, marked partial.
        assert prompt["response"] == REPLY[0]
        usage = prompt["usage"]
        assert usage["partial"] is True and usage["output_tokens"] == 1, usage
    finally:
        runner.stop()
        backend.stop()

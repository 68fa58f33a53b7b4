"""A prompt whose client or server goes away mid-answer, in process, with pricing on, on SQLite
and PostgreSQL, with the runner's real loop code (its ``Runner`` running one claimed task: the
real executor on a fake backend that speaks the backend's wire format, its real token stream
and reports, tests/contract/llm_fakes.py) where the runner's side matters:

- a streaming client that hangs up: the server ends the runner's ``/stream`` request at once
  (``cancelled: true``), the runner stops the backend without waiting for a heartbeat, and the
  client is billed at most what was relayed to it, whatever the runner reports; so too before
  the first token (the runner opens its ``/stream`` request when the task starts);
- the runner's stream request fails after its first delta (the server gone): the runner stops
  and reports a failure with what it streamed, never a completion;
- a non-streaming client that disconnects: the runner's partial usage is billed;
- ``POST /api/llm/prompts?wait=S`` ends a prompt its backend refused at once;
- a partly billed prompt shows its partial text as its response."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from parity.agent.client import ServerClient
from parity.agent.llm import LlmExecutor, OpenAIBackend
from parity.agent.loop import Runner, RunnerOptions
from parity.core.llm.metering import estimate_text_tokens
from parity.gateway import runner_stream
from parity.ledger.models import Posting, Reservation
from tests.conftest import bearer, until
from tests.contract.llm_fakes import FakeLlm, serve
from tests.integration.queue_helpers import act
from tests.integration.test_gateway_api import claim_when_routed, sse_events
from tests.integration.test_llm_api import Net, net, tick
from tests.integration.test_llm_partial_billing import cost, paid, read, setup
from tests.integration.test_llm_stream_breaks import Message, body_of, call_asgi

__all__ = ["net"]  # a fixture, used by name

V1 = "/api/v1"
MESSAGES = [{"role": "user", "content": "Say hello"}]
STALL = 30.0  # the fake backend's pause after its first piece: far beyond any wait here


def runner_for(net: Net, token: str, transport: httpx.AsyncBaseTransport | None = None) -> Runner:
    """The runner's loop, not started: its tasks run on a fake OpenAI-compatible backend."""
    client = ServerClient("http://parity.test", transport=transport or net.http._transport)
    client.runner_token = token
    return Runner(RunnerOptions(device_id="test", heartbeat_interval=3600), None, client, {})


async def run_claimed(runner: Runner, fake: FakeLlm, got: dict[str, Any]) -> float:
    """Run the claimed task as the runner does (no heartbeat: nothing else tells it to stop);
    the seconds it took, the report included."""
    executor = LlmExecutor([OpenAIBackend(fake.base_url)])
    runner.executors["llm"] = executor
    executor.token_sink = runner._on_token
    started = time.monotonic()
    runner._start(got)
    job = runner.active[got["task"]["id"]].job
    assert job is not None
    await asyncio.wait_for(job, 20)
    await executor.aclose()
    await runner.client.http.aclose()
    return time.monotonic() - started


@pytest.fixture
def no_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream request's periodic re-check of its task (for a wake-up lost on another
    replica) set beyond any wait here: only the cancel's own wake-up can end the stream."""
    monkeypatch.setattr(runner_stream, "CANCEL_RECHECK_SECONDS", 3600.0)


@dataclass
class HungUp:
    key: str
    task_id: str
    runner: Runner
    took: float  # seconds the runner's run took, its report included
    sent: list[Message]  # what reached the client


async def hang_up(net: Net, mode: str, when: Callable[[FakeLlm, list[Message]], bool]) -> HungUp:
    """A streaming client whose prompt the runner's loop runs on a fake backend in ``mode``;
    it hangs up once ``when(fake, sent)``. The backend must have been told to stop."""
    key, token_of_runner = await setup(net)
    gone = asyncio.Event()
    sent: list[Message] = []
    body = json.dumps({"model": "m1", "messages": MESSAGES, "stream": True, "max_tokens": 50})
    headers = {**bearer(key), "Content-Type": "application/json"}
    client = asyncio.create_task(
        call_asgi(net.http, "POST", "/v1/chat/completions", headers, [body.encode()], gone.wait,
                  sent, whole=True)
    )  # fmt: skip
    got = await claim_when_routed(net.http, token_of_runner)
    runner = runner_for(net, token_of_runner)
    async with serve(FakeLlm("openai", models=["m1"], mode=mode, delay=STALL)) as fake:
        running = asyncio.create_task(run_claimed(runner, fake, got))
        await until(lambda: when(fake, sent))
        gone.set()
        took = await asyncio.wait_for(running, 20)
        assert fake.disconnected.is_set()  # the backend was told to stop
    await asyncio.wait_for(client, 20)
    return HungUp(key, got["task"]["id"], runner, took, sent)


async def test_a_streaming_client_that_hangs_up_stops_the_runner_at_once_billed_as_delivered(
    net: Net, no_recheck: None
):
    # The first token reached the client; then it hangs up while the backend still generates.
    out = await hang_up(net, "stall", lambda _, sent: "The" in body_of(sent))
    assert out.took < STALL / 2  # not at the backend's pace, nor at a heartbeat's
    assert out.runner.failed == 1 and out.runner.completed == 0

    p = await read(net, out.key, out.task_id)
    assert (p["status"], p["error"]) == ("failed", "cancelled")
    delivered = estimate_text_tokens("The")
    assert (p["usage"]["output_tokens"], p["usage"]["partial"]) == (delivered, True)
    assert p["response"] == "The"
    assert await paid(net, out.task_id) == cost(p["usage"]["input_tokens"], delivered)


async def test_a_client_that_hangs_up_before_the_first_token_stops_a_stalled_backend_at_once(
    net: Net, no_recheck: None
):
    """The runner opens its streaming leg when the task starts, so the server can end it on a
    cancel before any token: a backend that has produced nothing yet is stopped at once, not
    at the runner's next heartbeat (an hour here)."""
    # The backend is reading the prompt, no token yet, when the client hangs up.
    out = await hang_up(net, "slow_first", lambda fake, _: bool(fake.requests))
    assert out.took < STALL / 2  # not at the backend's pace, nor at a heartbeat's
    assert "The" not in body_of(out.sent)
    p = await read(net, out.key, out.task_id)
    assert (p["status"], p["error"]) == ("failed", "cancelled")
    assert await net.rows(Posting, source_id=out.task_id) == []  # nothing reached the client


async def test_a_hung_up_stream_is_billed_at_most_what_was_relayed_to_its_client(
    net: Net, no_recheck: None
):
    key, runner = await setup(net)
    gone = asyncio.Event()
    sent: list[Message] = []
    body = json.dumps({"model": "m1", "messages": MESSAGES, "stream": True, "max_tokens": 400})
    headers = {**bearer(key), "Content-Type": "application/json"}
    client = asyncio.create_task(
        call_asgi(net.http, "POST", "/v1/chat/completions", headers, [body.encode()], gone.wait,
                  sent, whole=True)
    )  # fmt: skip
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    pieces = [f" w{i}" for i in range(5)]
    stream = asyncio.create_task(open_stream(net, runner, task_id, token, pieces))
    await until(lambda: " w4" in body_of(sent))  # every delta reached the client
    gone.set()  # then it hangs up
    await asyncio.wait_for(client, 20)
    # The server ends the runner's open stream request, saying why.
    r = await asyncio.wait_for(stream, 20)
    assert r.status_code == 200 and r.json()["cancelled"] is True, r.text
    # The runner produced far more before it stopped; billed is what the client got.
    r = await act(net.http, runner, task_id, "fail", token, error="cancelled",
                  output="".join(pieces) + " more" * 300,
                  usage={"input_tokens": 12, "output_tokens": 305})  # fmt: skip
    assert (r.status_code, r.json()["status"]) == (200, "cancelled"), r.text
    relayed = estimate_text_tokens("".join(pieces))
    assert await paid(net, task_id) == cost(12, relayed)
    p = await read(net, key, task_id)
    assert (p["usage"]["output_tokens"], p["usage"]["reported_output_tokens"]) == (relayed, 305)
    assert "output_tokens_capped_at_delivered" in p["usage"]["flags"]
    assert p["response"] == "".join(pieces)
    assert await tick(net.container) == 0
    assert len(await net.rows(Posting, source_id=task_id)) == 1


async def open_stream(
    net: Net, runner: str, task_id: str, token: str, deltas: list[str]
) -> httpx.Response:
    """A runner's stream that sends ``deltas`` and then stays open (a backend still working)."""

    async def body() -> Any:
        for d in deltas:
            yield (json.dumps({"delta": d}) + "\n").encode()
        await asyncio.sleep(STALL)

    return await net.http.post(
        f"{V1}/runners/tasks/{task_id}/stream",
        content=body(),
        headers={**bearer(runner), "X-Claim-Token": token},
    )


class BreakingStream(httpx.AsyncBaseTransport):
    """The app, except that a ``/stream`` request fails once its first delta went out (the
    server killed mid-stream)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.streamed: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stream"):
            assert isinstance(request.stream, httpx.AsyncByteStream)
            async for chunk in request.stream:
                self.streamed.append(chunk)
                break
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return await self.inner.handle_async_request(request)


async def test_a_runner_whose_stream_request_breaks_stops_and_fails_with_what_it_streamed(
    net: Net,
):
    key, token_of_runner = await setup(net)
    answer = asyncio.create_task(
        net.http.post(
            "/v1/chat/completions",
            json={"model": "m1", "messages": MESSAGES, "stream": True, "max_tokens": 50},
            headers=bearer(key),
        )
    )
    got = await claim_when_routed(net.http, token_of_runner)
    task_id = got["task"]["id"]
    breaking = BreakingStream(net.http._transport)
    runner = runner_for(net, token_of_runner, breaking)
    async with serve(FakeLlm("openai", models=["m1"], mode="stall", delay=STALL)) as fake:
        took = await run_claimed(runner, fake, got)
        assert fake.disconnected.is_set()  # generation stopped
    assert took < STALL / 2
    assert breaking.streamed  # a delta went out before the request failed
    assert runner.failed == 1 and runner.completed == 0

    events = sse_events((await asyncio.wait_for(answer, 20)).text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["message"]
    p = await read(net, key, task_id)
    assert (p["status"], p["attempts"]) == ("failed", 1)  # not completed, not re-run
    assert "token stream to the server broke off" in p["error"]
    assert (p["response"], p["usage"]["partial"]) == ("The", True)
    assert p["usage"]["output_tokens"] == estimate_text_tokens("The")
    assert await paid(net, task_id) == cost(p["usage"]["input_tokens"], p["usage"]["output_tokens"])


async def test_a_broken_stream_after_the_backend_finished_still_fails_the_prompt(net: Net):
    key, token_of_runner = await setup(net)
    answer = asyncio.create_task(
        net.http.post(
            "/v1/chat/completions",
            json={"model": "m1", "messages": MESSAGES, "stream": True, "max_tokens": 50},
            headers=bearer(key),
        )
    )
    got = await claim_when_routed(net.http, token_of_runner)
    runner = runner_for(net, token_of_runner, BreakingStream(net.http._transport))
    async with serve(FakeLlm("openai", models=["m1"])) as fake:
        await run_claimed(runner, fake, got)
    assert runner.failed == 1 and runner.completed == 0
    await asyncio.wait_for(answer, 20)
    p = await read(net, key, got["task"]["id"])
    assert p["status"] == "failed" and p["usage"]["partial"] is True
    assert "The sea is wide".startswith(p["response"]) and p["response"]


async def test_a_non_streaming_client_that_hangs_up_is_billed_the_runners_partial_usage(
    net: Net,
):
    key, runner = await setup(net)
    gone = asyncio.Event()
    sent: list[Message] = []
    body = json.dumps({"model": "m1", "messages": MESSAGES, "max_tokens": 50})
    headers = {**bearer(key), "Content-Type": "application/json"}
    request = asyncio.create_task(
        call_asgi(net.http, "POST", "/v1/chat/completions", headers, [body.encode()], gone.wait,
                  sent, whole=True)
    )  # fmt: skip
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    gone.set()

    async def cancel_requested() -> bool:
        r = await act(net.http, runner, task_id, "lease", token)
        return r.status_code == 200 and bool(r.json()["cancel_requested"])

    await until(cancel_requested)
    await asyncio.wait_for(request, 20)
    r = await act(net.http, runner, task_id, "fail", token, error="cancelled",
                  output="The sea", usage={"input_tokens": 9, "output_tokens": 2})  # fmt: skip
    assert (r.status_code, r.json()["status"]) == (200, "cancelled"), r.text
    assert await paid(net, task_id) == cost(9, 2)
    p = await read(net, key, task_id)
    assert (p["response"], p["usage"]["partial"], p["cost"]) == ("The sea", True, str(cost(9, 2)))


async def test_a_native_prompt_cancelled_by_delete_is_not_billed(net: Net):
    key, runner = await setup(net)
    r = await net.http.post(
        f"{V1}/llm/prompts", json={"model_name": "m1", "prompt": "Hi"}, headers=bearer(key)
    )
    task_id = r.json()["id"]
    got = await claim_when_routed(net.http, runner)
    r = await net.http.delete(f"{V1}/tasks/{task_id}", headers=bearer(key))
    assert r.status_code in (200, 202), r.text
    r = await act(net.http, runner, task_id, "fail", got["claim_token"], error="cancelled",
                  output="Hel", usage={"input_tokens": 3, "output_tokens": 1})  # fmt: skip
    assert r.json()["status"] == "cancelled"
    assert await net.rows(Posting, source_id=task_id) == []
    [res] = await net.rows(Reservation, source_id=task_id)
    assert res.status == "released"


async def test_native_wait_ends_a_prompt_its_backend_refused_at_once(net: Net):
    key, runner = await setup(net)
    answer = asyncio.create_task(
        net.http.post(
            f"{V1}/llm/prompts?wait=20",
            json={"model_name": "m1", "prompt": "Hi " * 40},
            headers=bearer(key),
        )
    )
    got = await claim_when_routed(net.http, runner)
    task_id = got["task"]["id"]
    error = "backend_rejected_request: request exceeds the context (HTTP 400) [openai]"
    r = await act(net.http, runner, task_id, "fail", got["claim_token"], error=error)
    assert r.status_code == 200, r.text
    started = time.monotonic()
    r = await asyncio.wait_for(answer, 25)
    assert time.monotonic() - started < 10  # not the whole wait, and no prompts-job tick
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["error"]) == ("failed", error)

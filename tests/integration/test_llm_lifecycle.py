"""A prompt's life through the gateways, in process, on SQLite and PostgreSQL, where it met real
clients, runners and models (ARCHITECTURE §4 streaming leg, README "LLM prompts"):

- a stream that keeps delivering tokens is not cut off at LLM_GATEWAY_TIMEOUT_SECONDS: the
  limit is the wait for the first token, then the longest pause between deltas;
- a backend that refuses the request itself (HTTP 400: longer than the context) ends the prompt
  at once with the backend's message, answered 400 ``invalid_request_error``, and the prompt
  is not routed to another runner; a refusal of the runner's own (HTTP 401) still fails over;
- prompts queued beyond the runners' free slots are routed as soon as a slot frees, not at the
  prompts job's next tick;
- a non-streaming client that disconnects before its answer cancels the prompt (the runner is
  told to stop) instead of leaving it to run to its end."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from parity.agent.llm.errors import BackendRejected
from parity.agent.llm.executor import run_prompt
from parity.agent.llm.openai_compat import OpenAIBackend
from parity.container import Container
from parity.core.llm.request import parse_llm_config
from parity.jobs.runner import JobRunner
from parity.ledger.models import Posting, Reservation
from parity.llm.jobs import prompts_job
from tests.conftest import ALICE, BOB, LoopStalls, bearer, sign_in, until
from tests.contract.llm_fakes import FakeLlm, serve
from tests.integration.queue_helpers import act, claim, custom_client
from tests.integration.test_gateway_api import (
    CHAT,
    api_key,
    claim_when_routed,
    setup,
    sse_events,
)
from tests.integration.test_llm_api import Net, llm_runner, model, net, submitted, tick
from tests.integration.test_llm_partial_billing import setup as priced_setup
from tests.integration.test_llm_stream_breaks import Message, body_of, call_asgi

__all__ = ["net"]  # a fixture, used by name

V1 = "/api/v1"
# What llama.cpp's server answers a prompt longer than its context (HTTP 400, at once).
CONTEXT_EXCEEDED = {
    "error": {
        "code": 400,
        "message": "request (3031 tokens) exceeds the available context size (2048 tokens), "
        "try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 3031,
        "n_ctx": 2048,
    }
}
BACKEND_MESSAGE = CONTEXT_EXCEEDED["error"]["message"]


async def paced(
    http: httpx.AsyncClient, runner: str, task_id: str, token: str, deltas: list[str], gap: float
) -> httpx.Response:
    """The runner's stream, one delta every ``gap`` seconds."""

    async def body() -> AsyncIterator[bytes]:
        for d in deltas:
            yield (json.dumps({"delta": d}) + "\n").encode()
            await asyncio.sleep(gap)

    return await http.post(
        f"{V1}/runners/tasks/{task_id}/stream",
        content=body(),
        headers={**bearer(runner), "X-Claim-Token": token},
    )


def contents(events: list[Any]) -> list[str]:
    return [
        e["choices"][0]["delta"]["content"]
        for e in events
        if isinstance(e, dict) and e.get("choices") and e["choices"][0]["delta"].get("content")
    ]


# -- the gateway's limit on a stream -------------------------------------------------------------


async def keeps_delivering(http: httpx.AsyncClient, name: str) -> None:
    """A runner of its own serving model ``name`` streams 15 deltas 0.3 s apart (4.5 s: more
    than two limits of 2 s) to a streaming client; the stream ends normally."""
    key = await api_key(http, ALICE)
    bob = await sign_in(http, BOB)
    runner, _ = await llm_runner(http, bob, model(name, context_length=4096))
    body = {**CHAT, "model": name, "stream": True}
    answer = asyncio.create_task(http.post("/v1/chat/completions", json=body, headers=bearer(key)))
    try:
        got = await claim_when_routed(http, runner)
        task_id, token = got["task"]["id"], got["claim_token"]
        pieces = [f"w{i} " for i in range(15)]
        started = time.monotonic()
        r = await paced(http, runner, task_id, token, pieces, 0.3)
        assert r.status_code == 200, r.text
        assert time.monotonic() - started > 4.0
        usage = {"input_tokens": 3, "output_tokens": 15, "finish_reason": "stop"}
        r = await act(http, runner, task_id, "complete", token, output="".join(pieces),
                      usage=usage)  # fmt: skip
        assert r.status_code == 200, r.text
        events = sse_events((await asyncio.wait_for(answer, 20)).text)
        assert events[-1] == "[DONE]"
        assert not any("error" in e for e in events if isinstance(e, dict)), events
        assert contents(events) == pieces
        p = (await http.get(f"{V1}/llm/prompts/{task_id}", headers=bearer(key))).json()
        assert p["status"] == "completed"
    finally:
        answer.cancel()
        await asyncio.gather(answer, return_exceptions=True)


async def test_a_stream_that_keeps_delivering_outlasts_the_gateway_timeout(container: Container):
    # The premise is that the runner's tokens come within the 2 s limit. A stall of this whole
    # process that long (the machine froze it for ~10 s once, in a CI run) voids it, and the
    # scenario then runs once more, on a model and runner of its own; the second run must pass.
    async with custom_client(container, LLM_GATEWAY_TIMEOUT_SECONDS=2) as (http, _):
        for name in ("m1", "m2"):
            async with LoopStalls() as stalls:
                try:
                    await keeps_delivering(http, name)
                    return
                except (AssertionError, TimeoutError):
                    if name == "m2" or stalls.longest < 1.5:
                        raise
            print(f"the event loop stood still for {stalls.longest:.1f} s: once more")


@dataclass
class StreamedChat:
    """A streaming chat request in flight (``answer``) and its claim by the runner."""

    key: str
    runner: str
    task_id: str
    token: str
    answer: asyncio.Task[httpx.Response]


async def streamed_chat(http: httpx.AsyncClient) -> StreamedChat:
    key, runner = await setup(http)
    body = {**CHAT, "stream": True}
    answer = asyncio.create_task(http.post("/v1/chat/completions", json=body, headers=bearer(key)))
    got = await claim_when_routed(http, runner)
    return StreamedChat(key, runner, got["task"]["id"], got["claim_token"], answer)


async def test_a_stream_that_pauses_longer_than_the_limit_gets_an_error_event(
    container: Container,
):
    async with custom_client(container, LLM_GATEWAY_TIMEOUT_SECONDS=1) as (http, _):
        s = await streamed_chat(http)
        stream = asyncio.create_task(paced(http, s.runner, s.task_id, s.token, ["Hel", "lo"], 2.5))
        answer = s.answer
        events = sse_events((await asyncio.wait_for(answer, 20)).text)
        assert contents(events) == ["Hel"]
        assert events[-1] == "[DONE]" and "no token came for 1 s" in events[-2]["error"]["message"]
        await asyncio.wait_for(stream, 20)


async def test_a_stream_open_when_the_server_stops_ends_with_an_error_event_in_the_grace(
    container: Container,
):
    """SIGTERM marks the server draining: an open stream may go on for half the shutdown
    grace, then ends with an error event (not cut off mid-chunk when the grace runs out), and
    its prompt is cancelled, billed for what was relayed."""
    async with custom_client(container, SHUTDOWN_GRACE_SECONDS=2) as (http, c):
        s = await streamed_chat(http)
        key, runner, task_id, token, answer = s.key, s.runner, s.task_id, s.token, s.answer
        pieces = [f"w{i} " for i in range(20)]  # 0.25 s apart: 5 s, past the 1 s left
        stream = asyncio.create_task(paced(http, runner, task_id, token, pieces, 0.25))
        await asyncio.sleep(0.6)
        c.draining = True
        events = sse_events((await asyncio.wait_for(answer, 20)).text)
        got_text = contents(events)
        assert 1 <= len(got_text) < len(pieces) and got_text == pieces[: len(got_text)]
        assert events[-1] == "[DONE]"
        assert "the server is shutting down" in events[-2]["error"]["message"]
        r = await asyncio.wait_for(stream, 20)
        assert r.json()["cancelled"] is True  # the runner is told to stop: it reports so
        r = await act(http, runner, task_id, "fail", token, error="cancelled",
                      output="".join(got_text), usage={"input_tokens": 3})  # fmt: skip
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        p = (await http.get(f"{V1}/llm/prompts/{task_id}", headers=bearer(key))).json()
        assert (p["status"], p["error"], p["usage"]["partial"]) == ("failed", "cancelled", True)


# -- a backend's refusal of the request -----------------------------------------------------------


async def refused_error() -> str:
    """The error a runner reports when llama.cpp refuses a prompt longer than its context: the
    runner's own backend client against a server answering as llama.cpp does."""
    fake = FakeLlm("openai", mode="status", status_code=400, error_body=CONTEXT_EXCEEDED)
    async with serve(fake):
        backend = OpenAIBackend(fake.base_url)
        try:
            request = parse_llm_config({"model": "m1", "prompt": "word " * 3000, "max_tokens": 5})
            result = await run_prompt(backend, request)
        finally:
            await backend.aclose()
    assert isinstance(result.error, BackendRejected), result.error
    return str(result.error)


def test_a_refusal_is_told_from_the_runners_failure_text():
    from parity.llm.service import refusal

    rejected = BackendRejected("too long", backend="openai http://b:1/v1", status=400)
    assert refusal(str(rejected)) == "too long"
    assert refusal(str(BackendRejected("bad", backend="x", status=422))) == "bad"
    # The runner's own credentials, or anything else: not the request's fault.
    assert refusal(str(BackendRejected("no key", backend="x", status=401))) is None
    assert refusal("backend_unavailable: HTTP 500 (HTTP 500) [openai http://b:1/v1]") is None
    assert refusal("lease expired on runner x") is None
    assert refusal(None) is None


async def second_runner(http: httpx.AsyncClient) -> str:
    bob = await sign_in(http, BOB)
    token, _ = await llm_runner(http, bob, model("m1", context_length=4096))
    return token


async def offered(http: httpx.AsyncClient, runner: str) -> list[Any]:
    r = await http.get(f"{V1}/runners/tasks/available", headers=bearer(runner))
    assert r.status_code == 200, r.text
    return list(r.json())


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/ollama/api/chat"])
async def test_a_prompt_the_backend_refuses_fails_at_once_with_a_400_and_is_not_rerouted(
    client: httpx.AsyncClient, container: Container, path: str
):
    error = await refused_error()
    key, runner = await setup(client)
    body = {**CHAT, "stream": False}
    answer = asyncio.create_task(client.post(path, json=body, headers=bearer(key)))
    got = await claim_when_routed(client, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    other = await second_runner(client)  # could take it, were it re-routed
    usage = {"error_code": "backend_rejected_request", "chunks": 0}
    r = await act(client, runner, task_id, "fail", token, error=error, usage=usage)
    assert r.status_code == 200, r.text
    # No prompts job runs here: the gateway itself ends the prompt, at once.
    r = await asyncio.wait_for(answer, 10)
    assert r.status_code == 400, r.text
    if path.startswith("/v1"):
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error"
        assert err["message"] == BACKEND_MESSAGE
    else:
        assert r.json()["error"] == BACKEND_MESSAGE
    p = (await client.get(f"{V1}/llm/prompts/{task_id}", headers=bearer(key))).json()
    assert (p["status"], p["attempts"]) == ("failed", 1)
    assert BACKEND_MESSAGE in p["error"]
    assert await tick(container) == 0
    assert await offered(client, other) == []


async def test_a_streamed_prompt_the_backend_refuses_ends_with_its_message_at_once(
    client: httpx.AsyncClient,
):
    error = await refused_error()
    key, runner = await setup(client)
    body = {**CHAT, "stream": True}
    answer = asyncio.create_task(
        client.post("/v1/chat/completions", json=body, headers=bearer(key))
    )
    got = await claim_when_routed(client, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    other = await second_runner(client)
    r = await act(client, runner, task_id, "fail", token, error=error)
    assert r.status_code == 200, r.text
    events = sse_events((await asyncio.wait_for(answer, 10)).text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["message"] == BACKEND_MESSAGE
    # The same type and code as the refusal of a request that does not stream: the client's
    # to fix, not a server error.
    assert events[-2]["error"]["type"] == "invalid_request_error"
    assert events[-2]["error"]["code"] == "backend_rejected_request"
    p = (await client.get(f"{V1}/llm/prompts/{task_id}", headers=bearer(key))).json()
    assert (p["status"], p["attempts"]) == ("failed", 1)
    assert await offered(client, other) == []


async def test_the_prompts_job_ends_a_refused_prompt_instead_of_routing_it_elsewhere(
    client: httpx.AsyncClient, container: Container
):
    error = await refused_error()
    key, runner = await setup(client)
    p = await submitted(client, key, max_tokens=5)
    got = await claim_when_routed(client, runner)
    assert got["task"]["id"] == p["id"]
    other = await second_runner(client)
    r = await act(client, runner, p["id"], "fail", got["claim_token"], error=error)
    assert (r.status_code, r.json()["status"]) == (200, "pending"), r.text
    assert await tick(container) == 1
    assert await offered(client, other) == []
    p = (await client.get(f"{V1}/llm/prompts/{p['id']}", headers=bearer(key))).json()
    assert (p["status"], p["attempts"]) == ("failed", 1)
    assert BACKEND_MESSAGE in p["error"]


async def test_a_refusal_of_the_runners_own_credentials_still_fails_over(
    client: httpx.AsyncClient, container: Container
):
    key, runner = await setup(client)
    p = await submitted(client, key, max_tokens=5)
    got = await claim_when_routed(client, runner)
    other = await second_runner(client)
    error = str(BackendRejected("invalid api key", backend="openai http://b:1/v1", status=401))
    r = await act(client, runner, p["id"], "fail", got["claim_token"], error=error)
    assert r.status_code == 200, r.text
    assert await tick(container) == 1
    assert [t["id"] for t in await offered(client, other)] == [p["id"]]


# -- slots freed wake the prompts job --------------------------------------------------------------


async def serve_prompts(http: httpx.AsyncClient, runner: str, done: list[str]) -> None:
    """A runner with one slot: long-polls for work, takes 0.2 s per prompt."""
    while True:
        r = await claim(http, runner, wait=5)
        if r.status_code != 200:
            continue
        got = r.json()
        await asyncio.sleep(0.2)
        usage = {"input_tokens": 2, "output_tokens": 1, "finish_reason": "stop"}
        r = await act(http, runner, got["task"]["id"], "complete", got["claim_token"],
                      output="ok", usage=usage)  # fmt: skip
        assert r.status_code == 200, r.text
        done.append(got["task"]["id"])


async def test_prompts_beyond_the_free_slots_are_routed_when_a_slot_frees_not_at_the_next_tick(
    client: httpx.AsyncClient, container: Container
):
    key = await api_key(client, ALICE)
    bob = await sign_in(client, BOB)
    runners = [(await llm_runner(client, bob, model("m1"), slots=1))[0] for _ in range(2)]
    # The prompts job as the server runs it, at an interval far longer than this test waits.
    jobs = JobRunner(container.db, container.clock, [prompts_job(container.llm, 120.0)])
    jobs.start()
    done: list[str] = []
    serving = [asyncio.create_task(serve_prompts(client, r, done)) for r in runners]
    try:
        await until(lambda: jobs.ticks["llm_prompts"] >= 1)  # its first tick, at start
        requests = [
            client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)) for _ in range(6)
        ]
        answers = await asyncio.wait_for(asyncio.gather(*requests), 30)
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
        await until(lambda: len(done) == 6)  # each served once, by one of the two
    finally:
        for job in serving:
            job.cancel()
        await asyncio.gather(*serving, return_exceptions=True)
        await jobs.stop()


async def test_a_released_prompt_frees_its_slot_for_the_queued_ones_at_once(
    client: httpx.AsyncClient, container: Container
):
    """A runner giving a prompt back untouched (its shutdown) records no event, yet its slot is
    routed again at once, not at the prompts job's next interval."""
    key = await api_key(client, ALICE)
    bob = await sign_in(client, BOB)
    runner, _ = await llm_runner(client, bob, model("m1"), slots=1)
    jobs = JobRunner(container.db, container.clock, [prompts_job(container.llm, 120.0)])
    jobs.start()
    try:
        await until(lambda: jobs.ticks["llm_prompts"] >= 1)  # its first tick, at start
        first = await submitted(client, key, max_tokens=5)
        got = await claim_when_routed(client, runner)
        assert got["task"]["id"] == first["id"]
        # The only slot is held: the second prompt waits, and the job's tick finds it stalled.
        second = await submitted(client, key, max_tokens=5)
        ticks = jobs.ticks["llm_prompts"]
        await until(lambda: jobs.ticks["llm_prompts"] > ticks)
        r = await act(client, runner, first["id"], "release", got["claim_token"])
        assert r.status_code == 200, r.text
        # Routed again within seconds (the interval is 120 s): one of the two, to the freed slot.
        again = await asyncio.wait_for(claim_when_routed(client, runner), 10)
        assert again["task"]["id"] in (first["id"], second["id"])
    finally:
        await jobs.stop()


# -- a non-streaming client that goes away --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        pytest.param("/v1/chat/completions", {"max_tokens": 50}, id="openai"),
        pytest.param(
            "/ollama/api/chat", {"stream": False, "options": {"num_predict": 50}}, id="ollama"
        ),
    ],
)
async def test_a_non_streaming_client_that_disconnects_cancels_its_prompt(
    net: Net, path: str, extra: dict[str, Any]
):
    key, runner = await priced_setup(net)
    gone = asyncio.Event()
    sent: list[Message] = []
    body = json.dumps({"model": "m1", "messages": CHAT["messages"], **extra})
    headers = {**bearer(key), "Content-Type": "application/json"}
    request = asyncio.create_task(
        call_asgi(net.http, "POST", path, headers, [body.encode()], gone.wait, sent, whole=True)
    )
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]

    gone.set()  # the client gives up (its own timeout) while the runner generates

    async def cancel_requested() -> bool:
        r = await act(net.http, runner, task_id, "lease", token)
        return r.status_code == 200 and bool(r.json()["cancel_requested"])

    await until(cancel_requested)
    await asyncio.wait_for(request, 20)
    assert "Hello" not in body_of(sent)
    # The runner stops and reports what it had generated; the prompt never completes.
    usage = {"input_tokens": 12, "output_tokens": 2}
    r = await act(net.http, runner, task_id, "fail", token, error="cancelled",
                  output="Hel", usage=usage)  # fmt: skip
    assert (r.status_code, r.json()["status"]) == (200, "cancelled"), r.text
    r = await act(net.http, runner, task_id, "complete", token, output="Hello there",
                  usage={"input_tokens": 12, "output_tokens": 3})  # fmt: skip
    assert r.status_code == 409, r.text
    p = (await net.http.get(f"{V1}/llm/prompts/{task_id}", headers=bearer(key))).json()
    # The work up to the cancel is billed (its client went away), its text kept as partial.
    assert (p["status"], p["response"], p["usage"]["partial"]) == ("failed", "Hel", True)
    assert (p["usage"]["input_tokens"], p["usage"]["output_tokens"]) == (12, 2)
    [res] = await net.rows(Reservation, source_id=task_id)
    assert res.status == "consumed"  # the escrow is closed, not kept for a completion
    assert len(await net.rows(Posting, source_id=task_id)) == 1

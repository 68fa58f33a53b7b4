"""Billing a streamed prompt that broke off (ARCHITECTURE §4 streaming leg, §6 metering), with
pricing on, on SQLite and PostgreSQL: once its first token reached the client, a runner's
failure or the client going away bills what was delivered, exactly once, and releases the rest
of the escrow; before the first token the prompt fails over and only the completion is billed."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import httpx

from parity.container import Container
from parity.core.llm.metering import estimate_text_tokens
from parity.ledger.models import Entry, Posting, Reservation
from tests.conftest import ALICE, BOB, bearer, sign_in, until
from tests.integration.queue_helpers import act
from tests.integration.test_gateway_api import (
    api_key,
    claim_when_routed,
    sse_events,
    stream_deltas,
)
from tests.integration.test_llm_api import Net, llm_runner, model, net, tick

__all__ = ["net"]  # a fixture, used by name

V1 = "/api/v1"
PRICE = (1000, 2000)
CHAT = {
    "model": "m1",
    "messages": [{"role": "user", "content": "Say hello"}],
    "stream": True,
    "max_tokens": 50,
}


def cost(input_tokens: int, output_tokens: int, price: tuple[int, int] = PRICE) -> int:
    return math.ceil((input_tokens * price[0] + output_tokens * price[1]) / 1000)


async def paid(net: Net, prompt_id: str) -> int:
    """What the client paid for the prompt: its one posting's payer leg."""
    [posting] = await net.rows(Posting, source_id=prompt_id)
    by_role = {e.role: e.amount for e in await net.rows(Entry, posting_id=posting.id)}
    return -by_role["payer"]


async def read(net: Net, key: str, prompt_id: str) -> dict[str, Any]:
    r = await net.http.get(f"{V1}/llm/prompts/{prompt_id}", headers=bearer(key))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def setup(net: Net) -> tuple[str, str]:
    key = await api_key(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 100_000)
    runner, _ = await llm_runner(net.http, bob, model("m1", price=PRICE))
    return key, runner


async def test_a_runner_failing_mid_stream_is_billed_the_delivered_tokens_once(net: Net):
    key, runner = await setup(net)
    answer = asyncio.create_task(
        net.http.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    )
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    assert (await stream_deltas(net.http, runner, task_id, token, ["Hel", "lo"])).status_code == 200
    report = {"error": "backend died", "output": "Hello", "usage": {"input_tokens": 12,
              "output_tokens": 2, "first_token_ms": 40.0}}  # fmt: skip
    r = await act(net.http, runner, task_id, "fail", token, **report)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "failed"  # not re-run: the client saw part of an answer
    events = sse_events((await asyncio.wait_for(answer, 20)).text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["message"]
    # The same report again (a retry after a timeout) changes nothing.
    assert (await act(net.http, runner, task_id, "fail", token, **report)).status_code == 200
    assert await tick(net.container) == 0

    assert await paid(net, task_id) == cost(12, 2)
    [res] = await net.rows(Reservation, source_id=task_id)
    assert res.status == "consumed" and res.amount > cost(12, 2)
    p = await read(net, key, task_id)
    assert (p["status"], p["attempts"], p["cost"]) == ("failed", 1, str(cost(12, 2)))
    assert (p["usage"]["input_tokens"], p["usage"]["output_tokens"]) == (12, 2)
    assert p["usage"]["partial"] is True


async def test_a_client_that_goes_away_cancels_the_work_and_pays_the_partial_usage(net: Net):
    key, runner = await setup(net)
    answer = asyncio.create_task(
        net.http.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    )
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    assert (await stream_deltas(net.http, runner, task_id, token, ["Hi"])).status_code == 200
    answer.cancel()  # the client disconnects
    await asyncio.gather(answer, return_exceptions=True)

    async def cancel_requested() -> bool:
        r = await act(net.http, runner, task_id, "lease", token)
        return r.status_code == 200 and bool(r.json()["cancel_requested"])

    await until(cancel_requested)
    # The runner stops and reports what it produced; this backend gave no output count.
    r = await act(net.http, runner, task_id, "fail", token, error="cancelled",
                  output="Hi there", usage={"input_tokens": 12, "output_tokens": None})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"

    # Billed for at most what reached the client before it left ("Hi"), not all the runner
    # produced by the time it stopped ("Hi there").
    estimated = estimate_text_tokens("Hi")
    assert 0 < estimated < estimate_text_tokens("Hi there")
    assert await paid(net, task_id) == cost(12, estimated)
    p = await read(net, key, task_id)
    assert (p["usage"]["input_tokens"], p["usage"]["output_tokens"]) == (12, estimated)
    assert "output_tokens_estimated" in p["usage"]["flags"]
    assert (p["response"], p["usage"]["partial"]) == ("Hi", True)
    [res] = await net.rows(Reservation, source_id=task_id)
    assert res.status == "consumed"


async def test_partial_output_is_capped_at_max_tokens(net: Net):
    key, runner = await setup(net)
    answer = asyncio.create_task(
        net.http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5}, headers=bearer(key))
    )
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    assert (await stream_deltas(net.http, runner, task_id, token, ["x"])).status_code == 200
    r = await act(net.http, runner, task_id, "fail", token, error="backend died",
                  output="x" * 400, usage={"input_tokens": 12, "output_tokens": 90})  # fmt: skip
    assert r.status_code == 200, r.text
    await asyncio.wait_for(answer, 20)
    assert await paid(net, task_id) == cost(12, 5)
    p = await read(net, key, task_id)
    assert p["usage"]["output_tokens"] == 5 and p["usage"]["reported_output_tokens"] == 90


async def test_a_failure_before_the_first_token_fails_over_and_only_the_completion_is_billed(
    net: Net,
):
    key = await api_key(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 100_000)
    flaky, _ = await llm_runner(net.http, bob, model("m1", price=(1000, 1000)))
    steady, _ = await llm_runner(net.http, bob, model("m1", price=PRICE))
    answer = asyncio.create_task(
        net.http.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    )
    got = await claim_when_routed(net.http, flaky)  # the cheaper runner is routed first
    task_id = got["task"]["id"]
    # It fails before any token: the runner's usage has no output, and it sends no text.
    r = await act(net.http, flaky, task_id, "fail", got["claim_token"], error="backend down",
                  output="", usage={"input_tokens": None, "output_tokens": None})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending"
    assert await net.rows(Posting, source_id=task_id) == []
    assert await tick(net.container) == 1  # re-routed to the other runner
    got = await claim_when_routed(net.http, steady)
    token = got["claim_token"]
    assert (await stream_deltas(net.http, steady, task_id, token, ["Hi", "!"])).status_code == 200
    r = await act(net.http, steady, task_id, "complete", token, output="Hi!",
                  usage={"input_tokens": 12, "output_tokens": 3})  # fmt: skip
    assert r.status_code == 200, r.text
    events = sse_events((await asyncio.wait_for(answer, 20)).text)
    texts = [e["choices"][0]["delta"].get("content") for e in events[:-1] if e.get("choices")]
    assert "".join(t for t in texts if t) == "Hi!"
    assert await paid(net, task_id) == cost(12, 3)  # the one posting, at the serving price
    p = await read(net, key, task_id)
    assert (p["status"], p["attempts"]) == ("completed", 2)
    assert p["usage"]["partial"] is False


async def test_a_prompt_that_does_not_stream_fails_over_even_after_partial_output(net: Net):
    key, runner = await setup(net)
    bob = await sign_in(net.http, BOB)
    await llm_runner(net.http, bob, model("m1", price=(3000, 3000)))  # dearer: routed second
    r = await net.http.post(
        f"{V1}/llm/prompts", json={"model_name": "m1", "prompt": "Hi"}, headers=bearer(key)
    )
    assert r.status_code == 202, r.text
    task_id = r.json()["id"]
    got = await claim_when_routed(net.http, runner)
    r = await act(net.http, runner, task_id, "fail", got["claim_token"], error="backend died",
                  output="Hel", usage={"input_tokens": 3, "output_tokens": 1})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending"  # nothing reached the client: run it elsewhere
    assert await net.rows(Posting, source_id=task_id) == []


async def test_with_pricing_off_a_broken_stream_shows_what_it_delivered_free(
    client: httpx.AsyncClient, container: Container
):
    key = await api_key(client, ALICE)
    bob = await sign_in(client, BOB)
    runner, _ = await llm_runner(client, bob, model("m1"))
    answer = asyncio.create_task(
        client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    )
    got = await claim_when_routed(client, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    assert (await stream_deltas(client, runner, task_id, token, ["Hel", "lo"])).status_code == 200
    report = {"error": "backend died", "output": "Hello", "usage": {"input_tokens": 12,
              "output_tokens": 2}}  # fmt: skip
    assert (await act(client, runner, task_id, "fail", token, **report)).status_code == 200
    await asyncio.wait_for(answer, 20)

    async def shown() -> dict[str, Any]:
        r = await client.get(f"{V1}/llm/prompts/{task_id}", headers=bearer(key))
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    before = await shown()  # metered when its task failed
    assert (before["status"], before["cost"]) == ("failed", "0")
    assert (before["usage"]["output_tokens"], before["usage"]["partial"]) == (2, True)
    assert await tick(container) == 0  # nothing left for the prompts job
    after = await shown()
    assert (after["cost"], after["usage"]) == (before["cost"], before["usage"])
    r = await client.get(f"{V1}/llm/billing/metrics", headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.json()["total"]["output_tokens"] == 2, r.json()


async def test_a_streamed_prompt_its_client_cancels_after_the_first_token_pays_the_partial(
    net: Net,
):
    """DELETE /tasks/{id} on a prompt whose stream had begun: the text went out, so the
    runner's partial report is billed once (as for a stream that broke off), not released."""
    key, runner = await setup(net)
    answer = asyncio.create_task(
        net.http.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    )
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    assert (await stream_deltas(net.http, runner, task_id, token, ["Hi"])).status_code == 200
    r = await net.http.delete(f"{V1}/tasks/{task_id}", headers=bearer(key))
    assert r.status_code == 200 and r.json()["status"] == "cancel_requested", r.text
    r = await act(net.http, runner, task_id, "fail", token, error="cancelled",
                  output="Hi there", usage={"input_tokens": 12, "output_tokens": None})  # fmt: skip
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    events = sse_events((await asyncio.wait_for(answer, 20)).text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["message"] == "cancelled"

    billed = cost(12, estimate_text_tokens("Hi there"))
    assert await paid(net, task_id) == billed
    p = await read(net, key, task_id)
    assert (p["status"], p["error"], p["cost"]) == ("failed", "cancelled", str(billed))
    assert (p["response"], p["usage"]["partial"]) == ("Hi there", True)
    [res] = await net.rows(Reservation, source_id=task_id)
    assert res.status == "consumed"

"""What a prompt's creator hears and reads of it besides the prompt itself.

``prompt.completed``: each completed prompt's creator hears it once, with what it was billed,
on the events stream and on webhooks subscribed to it. With pricing on it is recorded in the
completion's transaction (where the prompt is metered); with pricing off the prompts job meters
the completion and records it then. ``prompt.failed``: a prompt whose task ends failed or
cancelled is announced once, in that transaction, pricing on or off, with why and what was
billed for the part a broken stream delivered. The prompt's ``llm`` task answers ``/reward``
with what the prompt was billed, and ``/result`` of a failed one points to the prompt."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import select

from parity.clock import FrozenClock
from parity.container import Container
from parity.core.llm.metering import estimate_text_tokens
from parity.events.models import Event, WebhookDelivery
from tests.conftest import ALICE, BOB, bearer, sign_in
from tests.integration.queue_helpers import (
    act,
    claimed,
    create_task,
    custom_client,
    device,
    expire_leases,
    register_runner,
)
from tests.integration.test_gateway_api import api_key, claim_when_routed
from tests.integration.test_llm_api import (
    PRICING,
    Net,
    llm_runner,
    model,
    net,
    submitted,
    tick,
)
from tests.integration.test_llm_partial_billing import paid
from tests.integration.test_llm_partial_billing import setup as partial_setup
from tests.integration.test_llm_partial_output import CHAT as PARTIAL_CHAT
from tests.integration.test_llm_partial_output import break_stream

__all__ = ["PRICING", "net"]  # a fixture, used by name
V1 = "/api/v1"
USAGE = {"input_tokens": 12, "output_tokens": 3}


async def prompt_events(
    http: httpx.AsyncClient, token: str, kind: str = "prompt.completed"
) -> list[dict[str, Any]]:
    r = await http.get(f"{V1}/events", params={"types": kind}, headers=bearer(token))
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def test_a_completed_prompt_is_announced_once_when_the_job_meters_it(
    container: Container, clock: FrozenClock
):
    async with custom_client(container, webhook_allow_private=True) as (client, c):
        await _announced_once(client, c, clock)


async def _announced_once(client: httpx.AsyncClient, container: Container, clock: FrozenClock):
    alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
    hook = await client.post(
        f"{V1}/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["prompt.completed"]},
        headers=bearer(alice),
    )
    assert hook.status_code == 201, hook.text
    runner, runner_id = await llm_runner(client, bob, model())
    p = await submitted(client, alice, max_tokens=8)
    got = await claimed(client, runner, start=True)
    clock.advance(3)
    usage = {"input_tokens": 7, "output_tokens": 2, "finish_reason": "stop"}
    r = await act(client, runner, p["id"], "complete", got["claim_token"], output="Hi", usage=usage)
    assert r.status_code == 200, r.text
    # Pricing is off: nothing metered it yet, so nothing announced it yet.
    clock.advance(2)
    assert await prompt_events(client, alice) == []

    assert await tick(container) == 1
    assert await tick(container) == 0  # metered once: announced once
    clock.advance(2)
    [event] = await prompt_events(client, alice)
    assert event["type"] == "prompt.completed"
    assert event["data"] == {
        "prompt_id": p["id"],
        "task_id": p["id"],
        "model": "m1",
        "status": "completed",
        "runner_id": runner_id,
        "input_tokens": 7,
        "output_tokens": 2,
        "cost": "0",
        "latency_ms": 3000.0,
        "flagged": False,
    }
    assert await prompt_events(client, bob) == []  # the runner's owner is not the creator
    async with container.db.read_session() as s:
        [row] = (await s.scalars(select(Event).where(Event.type == "prompt.completed"))).all()
        deliveries = (
            await s.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == row.id))
        ).all()
    assert [str(d.endpoint_id) for d in deliveries] == [hook.json()["id"]]


async def test_with_pricing_the_event_carries_the_billed_cost_from_the_completion(net: Net):
    alice = await sign_in(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 100_000)
    runner, runner_id = await llm_runner(net.http, bob, model(price=(1000, 2000)))
    p = await submitted(net.http, alice, prompt="Say hello", max_tokens=100)
    got = await claimed(net.http, runner)
    net.clock.advance(2)
    body = {
        "claim_token": got["claim_token"],
        "response": "Hello!",
        "prompt_tokens": 12,
        "response_tokens": 3,
    }
    for _ in range(2):  # a repeated completion posts nothing and announces nothing again
        r = await net.http.post(
            f"{V1}/llm/prompts/{p['id']}/complete", json=body, headers=bearer(runner)
        )
        assert r.status_code == 200, r.text
    net.clock.advance(2)
    [event] = await prompt_events(net.http, alice)  # no job ran: the completion recorded it
    data = event["data"]
    assert (data["prompt_id"], data["runner_id"], data["cost"]) == (p["id"], runner_id, "18")
    assert (data["input_tokens"], data["output_tokens"]) == (12, 3)
    assert await tick(net.container) == 0
    net.clock.advance(2)
    assert len(await prompt_events(net.http, alice)) == 1


async def test_a_prompts_task_reward_is_what_the_prompt_was_billed(net: Net):
    alice = await sign_in(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 100_000)
    runner, _ = await llm_runner(net.http, bob, model(price=(1000, 2000)))
    p = await submitted(net.http, alice, prompt="Say hello", max_tokens=100)
    held = await net.http.get(f"{V1}/tasks/{p['id']}/reward", headers=bearer(alice))
    assert (held.json()["status"], held.json()["reserved"]) == ("reserved", p["reserved"])
    got = await claimed(net.http, runner)
    body = {"claim_token": got["claim_token"], "response": "Hello!", "usage": USAGE}
    r = await net.http.post(
        f"{V1}/llm/prompts/{p['id']}/complete", json=body, headers=bearer(runner)
    )
    assert r.status_code == 200, r.text
    reward = (await net.http.get(f"{V1}/tasks/{p['id']}/reward", headers=bearer(alice))).json()
    # ceil((12 * 1000 + 3 * 2000) / 1000) = 18: 17 to the runner's owner, 1 to the protocol.
    assert (reward["price"], reward["reward"], reward["fee"]) == ("18", "17", "1")
    assert reward["status"] == "unsettled" and reward["reserved"] == p["reserved"]


async def test_a_failed_prompts_task_result_points_to_the_prompt(client: httpx.AsyncClient):
    alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
    runner, _ = await llm_runner(client, bob, model())
    p = await submitted(client, alice, max_attempts=1)
    got = await claimed(client, runner, start=True)
    r = await act(client, runner, p["id"], "fail", got["claim_token"], error="backend down")
    assert r.status_code == 200, r.text
    r = await client.get(f"{V1}/tasks/{p['id']}/result", headers=bearer(alice))
    assert r.status_code == 404 and r.json()["error"]["code"] == "result_not_found"
    assert f"GET /api/v1/llm/prompts/{p['id']}" in r.json()["error"]["message"]


# -- prompt.failed ------------------------------------------------------------------------------


async def test_a_prompt_that_runs_out_of_attempts_is_announced_failed_once(
    container: Container, clock: FrozenClock
):
    async with custom_client(container, webhook_allow_private=True) as (client, c):
        alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
        hook = await client.post(
            f"{V1}/webhooks",
            json={"url": "http://127.0.0.1:9/hook", "events": ["prompt.failed"]},
            headers=bearer(alice),
        )
        assert hook.status_code == 201, hook.text
        runner, runner_id = await llm_runner(client, bob, model())
        p = await submitted(client, alice, max_attempts=1)
        got = await claimed(client, runner)
        r = await act(client, runner, p["id"], "fail", got["claim_token"], error="backend down")
        assert r.status_code == 200, r.text
        clock.advance(2)
        [event] = await prompt_events(client, alice, "prompt.failed")  # no job needed
        assert event["data"] == {
            "prompt_id": p["id"],
            "task_id": p["id"],
            "model": "m1",
            "status": "failed",
            "error": "backend down",
            "attempts": 1,
            "runner_id": runner_id,
            "partial": False,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost": "0",
        }
        assert await prompt_events(client, alice) == []  # never prompt.completed
        assert await prompt_events(client, bob, "prompt.failed") == []
        await tick(c)
        clock.advance(2)
        assert len(await prompt_events(client, alice, "prompt.failed")) == 1
        async with c.db.read_session() as s:
            [row] = (await s.scalars(select(Event).where(Event.type == "prompt.failed"))).all()
            [delivery] = (
                await s.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == row.id))
            ).all()
        assert str(delivery.endpoint_id) == hook.json()["id"]


async def test_a_failed_run_with_attempts_left_is_not_announced_failed(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
    runner, _ = await llm_runner(client, bob, model())
    p = await submitted(client, alice, max_attempts=2)
    got = await claimed(client, runner)
    r = await act(client, runner, p["id"], "fail", got["claim_token"], error="boom")
    assert r.status_code == 200, r.text
    clock.advance(2)
    assert await prompt_events(client, alice, "prompt.failed") == []  # it goes on


async def test_a_prompt_cancelled_while_queued_is_announced_cancelled(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    p = await submitted(client, alice, max_tokens=16)
    r = await client.delete(f"{V1}/tasks/{p['task_id']}", headers=bearer(alice))
    assert r.status_code == 200, r.text
    clock.advance(2)
    [event] = await prompt_events(client, alice, "prompt.failed")
    data = event["data"]
    assert (data["status"], data["error"], data["runner_id"], data["partial"]) == (
        "cancelled",
        "cancelled",
        None,
        False,
    )


async def test_a_stream_broken_after_its_first_token_is_announced_with_what_it_was_billed(
    net: Net,
):
    key, runner = await partial_setup(net)
    alice = await sign_in(net.http, ALICE)
    answer = asyncio.create_task(
        net.http.post("/v1/chat/completions", json=PARTIAL_CHAT, headers=bearer(key))
    )
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    await break_stream(net.http, runner, task_id, token, ["Hel", "lo"])
    await asyncio.wait_for(answer, 20)
    net.clock.advance(2)
    [event] = await prompt_events(net.http, alice, "prompt.failed")
    data = event["data"]
    shown = (await net.http.get(f"{V1}/llm/prompts/{task_id}", headers=bearer(key))).json()
    assert (data["status"], data["partial"], data["error"]) == ("failed", True, shown["error"])
    assert "stream broke off" in data["error"]
    # What the event says was billed is what the prompt shows and the ledger posted.
    assert (data["input_tokens"], data["output_tokens"]) == (
        shown["usage"]["input_tokens"],
        shown["usage"]["output_tokens"],
    )
    assert data["output_tokens"] == estimate_text_tokens("Hello")
    assert data["cost"] == shown["cost"] == str(await paid(net, task_id))
    assert data["cost"] != "0"


async def test_with_pricing_off_a_broken_streams_part_is_metered_when_it_is_announced(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    key = await api_key(client, ALICE)
    alice = await sign_in(client, ALICE)
    runner, _ = await llm_runner(client, await sign_in(client, BOB), model("m1"))
    answer = asyncio.create_task(
        client.post("/v1/chat/completions", json=PARTIAL_CHAT, headers=bearer(key))
    )
    got = await claim_when_routed(client, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    await break_stream(client, runner, task_id, token, ["Hel", "lo"])
    await asyncio.wait_for(answer, 20)
    clock.advance(2)
    [event] = await prompt_events(client, alice, "prompt.failed")
    data = event["data"]
    assert (data["partial"], data["cost"]) == (True, "0")
    assert data["output_tokens"] == estimate_text_tokens("Hello")
    assert await tick(container) == 0  # already metered, in the failing transaction


async def _failed_events_and_task(
    http: httpx.AsyncClient, token: str, clock: FrozenClock, task_id: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    clock.advance(2)
    events = await prompt_events(http, token, "prompt.failed")
    r = await http.get(f"{V1}/tasks/{task_id}", headers=bearer(token))
    assert r.status_code == 200, r.text
    return [e["data"] for e in events], r.json()


async def test_a_running_prompt_cancelled_then_failed_by_its_runner_carries_the_runners_error(
    client: httpx.AsyncClient, clock: FrozenClock
):
    """A cancel of a running prompt is acknowledged by its runner's fail: the event's error is
    the one the task and the prompt keep, not a placeholder or an earlier attempt's."""
    alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
    runner, runner_id = await llm_runner(client, bob, model())
    p = await submitted(client, alice, max_tokens=16)
    got = await claimed(client, runner, start=True)
    r = await client.delete(f"{V1}/tasks/{p['task_id']}", headers=bearer(alice))
    assert r.status_code == 200 and r.json()["status"] == "cancel_requested", r.text
    r = await act(client, runner, p["id"], "fail", got["claim_token"], error="stopped on request")
    assert r.status_code == 200, r.text
    [data], task = await _failed_events_and_task(client, alice, clock, p["task_id"])
    assert (task["status"], task["last_error"]) == ("cancelled", "stopped on request")
    shown = (await client.get(f"{V1}/llm/prompts/{p['id']}", headers=bearer(alice))).json()
    assert shown["error"] == "stopped on request"
    assert (data["status"], data["error"], data["runner_id"]) == (
        "cancelled",
        "stopped on request",
        runner_id,
    )


async def test_a_cancelled_prompt_whose_lease_runs_out_is_announced_with_the_tasks_error(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
    runner, _ = await llm_runner(client, bob, model())
    p = await submitted(client, alice, max_tokens=16)
    await claimed(client, runner, start=True)
    r = await client.delete(f"{V1}/tasks/{p['task_id']}", headers=bearer(alice))
    assert r.status_code == 200, r.text
    clock.advance(container.tasks.lease_seconds + 1)
    assert await expire_leases(container) == 1
    [data], task = await _failed_events_and_task(client, alice, clock, p["task_id"])
    assert task["status"] == "cancelled"
    assert task["last_error"] and task["last_error"].startswith("lease expired on runner")
    assert (data["status"], data["error"]) == ("cancelled", task["last_error"])


async def test_a_prompt_whose_last_lease_runs_out_is_announced_failed_once(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
    runner, runner_id = await llm_runner(client, bob, model())
    p = await submitted(client, alice, max_attempts=1)
    await claimed(client, runner, start=True)
    clock.advance(container.tasks.lease_seconds + 1)
    assert await expire_leases(container) == 1
    assert await expire_leases(container) == 0
    await tick(container)
    [data], task = await _failed_events_and_task(client, alice, clock, p["task_id"])
    assert task["status"] == "failed"
    assert (data["status"], data["error"], data["runner_id"], data["attempts"]) == (
        "failed",
        task["last_error"],
        runner_id,
        1,
    )


async def test_a_prompt_past_its_deadline_is_announced_cancelled_once_with_the_reason(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    """The deadline ends the prompt's task ``cancelled`` (the prompt reads ``failed``): the
    event's status is the task's."""
    alice = await sign_in(client, ALICE)
    p = await submitted(client, alice, model_name="nobody-has-it", deadline_seconds=30)
    clock.advance(31)
    assert await tick(container) == 1
    await tick(container)
    [data], task = await _failed_events_and_task(client, alice, clock, p["task_id"])
    assert (data["status"], data["error"]) == ("cancelled", task["last_error"])
    assert data["error"].startswith("no runner with model nobody-has-it became available")
    assert (data["runner_id"], data["partial"], data["cost"]) == (None, False, "0")


async def test_a_runner_going_offline_with_a_prompt_it_can_retry_announces_nothing(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
    runner, _ = await llm_runner(client, bob, model())
    p = await submitted(client, alice, max_attempts=1)
    await claimed(client, runner, start=True)
    r = await client.post(
        f"{V1}/runners/heartbeat", json={"status": "offline"}, headers=bearer(runner)
    )
    assert r.status_code == 200, r.text
    events, task = await _failed_events_and_task(client, alice, clock, p["task_id"])
    assert task["status"] == "pending"  # given back untouched: not an end
    assert events == []


async def test_an_ordinary_task_that_fails_is_no_prompt_event(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
    runner, _ = await register_runner(client, bob, device())
    task = await create_task(client, alice, max_attempts=1)
    got = await claimed(client, runner)
    r = await act(client, runner, task["id"], "fail", got["claim_token"], error="boom")
    assert r.status_code == 200 and r.json()["status"] == "failed", r.text
    r = await client.delete(
        f"{V1}/tasks/{(await create_task(client, alice))['id']}", headers=bearer(alice)
    )
    assert r.status_code == 200, r.text
    clock.advance(2)
    assert await prompt_events(client, alice, "prompt.failed") == []

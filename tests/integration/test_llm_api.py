"""LLM prompts over the HTTP API, in process, on SQLite and PostgreSQL: discovery, routing with
failover, deadlines, ?wait, completion and token billing (ARCHITECTURE §4-§6)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from parity.app import create_app
from parity.chain.fake import FakeChain, FakeChainClient
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.ledger.models import Entry, Posting, Reservation
from parity.llm.jobs import prompts_job
from parity.llm.models import RunnerModelStats
from parity.tasks.models import RunnerPush
from tests.conftest import ALICE, BOB, bearer, make_settings, sign_in
from tests.integration.queue_helpers import (
    act,
    claim,
    claimed,
    custom_client,
    device,
    heartbeat,
)

V1 = "/api/v1"
PROTOCOL = "0x" + "fe" * 20
PRICING = {
    "PRICE_TASK_BASE": "100",
    "PROTOCOL_FEE_BPS": "1000",
    "PROTOCOL_FEE_ADDRESS": PROTOCOL,
    "FILECOIN_RPC": "http://chain.invalid",
    "FILECOIN_STAKE_WALLET_ADDRESS": "0x" + "5a" * 20,
    "STAKE_CACHE_SECONDS": "0",
}


def model(
    name: str = "m1", *, loaded: bool = True, price: tuple[int, int] | None = None, **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"model_name": name, "is_loaded": loaded, "max_tokens": 4096, **extra}
    if price is not None:
        out["price_per_1k_input"], out["price_per_1k_output"] = str(price[0]), str(price[1])
    return out


async def llm_runner(
    http: httpx.AsyncClient, owner: str, *models: dict[str, Any], slots: int = 1
) -> tuple[str, str]:
    """Register a runner reporting ``models``; returns (runner token, runner id)."""
    body = {
        "device_id": device(),
        "capabilities": {"cpu_cores": 4, "memory_mb": 8192},
        "max_concurrent_tasks": slots,
        "models": list(models),
    }
    r = await http.post(f"{V1}/runners", json=body, headers=bearer(owner))
    assert r.status_code == 201, r.text
    return str(r.json()["runner_token"]), str(r.json()["runner"]["id"])


async def submit(
    http: httpx.AsyncClient, token: str, *, wait: float | None = None, **body: Any
) -> httpx.Response:
    body.setdefault("model_name", "m1")
    body.setdefault("prompt", "Say hello")
    params = {} if wait is None else {"wait": wait}
    return await http.post(f"{V1}/llm/prompts", json=body, params=params, headers=bearer(token))


async def submitted(http: httpx.AsyncClient, token: str, **body: Any) -> dict[str, Any]:
    r = await submit(http, token, **body)
    assert r.status_code == 202, r.text
    out: dict[str, Any] = r.json()
    return out


async def prompt(http: httpx.AsyncClient, token: str, prompt_id: str) -> dict[str, Any]:
    r = await http.get(f"{V1}/llm/prompts/{prompt_id}", headers=bearer(token))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def target_of(http: httpx.AsyncClient, token: str, prompt_id: str) -> str | None:
    r = await http.get(f"{V1}/tasks/{prompt_id}", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()["target_runner_id"]  # type: ignore[no-any-return]


async def tick(c: Container) -> int:
    """One tick of the prompts job."""
    async with c.db.transaction() as s:
        return await prompts_job(c.llm, 1.0).tick(s, c.clock.now())


def fields(r: httpx.Response) -> set[str]:
    """The fields a 422 names."""
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    if "field" in details:
        return {details["field"]}
    return {e["field"] for e in details["errors"]}


# -- discovery -------------------------------------------------------------------------------


async def test_models_are_aggregated_over_online_runners_and_vanish_with_the_last_one(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    one, _ = await llm_runner(
        client, alice, model(price=(10, 20), context_length=4096, quantization="Q4_0")
    )
    two, _ = await llm_runner(
        client, alice, model(price=(5, 30), context_length=8192), model("m2", loaded=False)
    )
    r = await client.get("/api/llm/models", headers=bearer(alice))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 2
    m1, m2 = body["models"]
    assert (m1["model_name"], m1["runner_count"], m1["loaded_runner_count"]) == ("m1", 2, 2)
    assert (m1["lowest_price_per_1k_input"], m1["lowest_price_per_1k_output"]) == ("5", "20")
    assert (m1["max_context_length"], m1["quantizations"], m1["is_loaded"]) == (
        8192,
        ["Q4_0"],
        True,
    )
    assert (m2["model_name"], m2["is_loaded"], m2["runner_count"]) == ("m2", False, 1)

    assert (await heartbeat(client, two, status="offline")).status_code == 200
    r = await client.get(f"{V1}/llm/models", headers=bearer(alice))
    assert [(m["model_name"], m["runner_count"]) for m in r.json()["models"]] == [("m1", 1)]
    assert (await heartbeat(client, one, status="offline")).status_code == 200
    r = await client.get(f"{V1}/llm/models", headers=bearer(alice))
    assert r.json() == {"models": [], "count": 0}


async def test_a_runner_reporting_a_float_price_is_refused_naming_the_field(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    body = {"device_id": device(), "models": [{"model_name": "m1", "price_per_1k_input": 1.5}]}
    r = await client.post(f"{V1}/runners", json=body, headers=bearer(alice))
    assert any(f.endswith("price_per_1k_input") for f in fields(r))


# -- submit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "params", "field"),
    [
        ({"model_name": None}, {}, "model_name"),
        ({"prompt": None}, {}, "prompt"),
        ({"max_tokens": 0}, {}, "max_tokens"),
        ({"temperature": 5}, {}, "temperature"),
        ({"messages": [{"role": "robot", "content": "x"}], "prompt": None}, {}, "messages[0].role"),
        ({"max_price_per_1k_input": 1.5}, {}, "max_price_per_1k_input"),
        ({"stream": True}, {}, "stream"),
        ({"deadline_seconds": 0}, {}, "deadline_seconds"),
        ({"max_tokenz": 5}, {}, "max_tokenz"),
        ({}, {"wait": 31}, "wait"),
    ],
)
async def test_submit_refuses_bad_input_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], params: dict[str, Any], field: str
):
    alice = await sign_in(client, ALICE)
    payload = {"model_name": "m1", "prompt": "hi", **body}
    payload = {k: v for k, v in payload.items() if v is not None}
    r = await client.post(f"{V1}/llm/prompts", json=payload, params=params, headers=bearer(alice))
    assert any(f == field or f.endswith(f".{field}") for f in fields(r)), r.text


async def test_a_prompt_without_text_is_told_to_give_prompt_or_messages(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    r = await client.post(f"{V1}/llm/prompts", json={"model_name": "m1"}, headers=bearer(alice))
    assert fields(r) == {"prompt"}
    assert r.json()["error"]["message"] == "prompt: is required (or give messages)"


async def test_a_prompt_is_one_llm_task_and_is_queued_without_a_runner(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    p = await submitted(client, alice, model="m1", max_tokens=16)
    assert (p["status"], p["model_name"], p["response"], p["runner_id"]) == (
        "queued",
        "m1",
        "",
        None,
    )
    r = await client.get(f"{V1}/tasks/{p['task_id']}", headers=bearer(alice))
    task = r.json()
    assert (task["type"], task["status"], task["target_runner_id"]) == ("llm", "pending", None)
    assert task["config"] == {
        "model": "m1",
        "max_tokens": 16,
        "prompt": "Say hello",
        "stream": False,
    }
    # Internal rows stay out of the client's task list; the prompt list has it (legacy shape).
    assert (await client.get(f"{V1}/tasks", headers=bearer(alice))).json() == []
    r = await client.get("/api/llm/prompts", headers=bearer(alice))
    assert r.headers["X-Total-Count"] == "1"
    assert [x["id"] for x in r.json()["prompts"]] == [p["id"]]
    assert (r.json()["limit"], r.json()["offset"]) == (10, 0)
    bob = await sign_in(client, BOB)
    assert (await client.get(f"{V1}/llm/prompts/{p['id']}", headers=bearer(bob))).status_code == 404


async def test_a_prompt_cancelled_while_queued_is_failed_with_a_reason(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    p = await submitted(client, alice, model="m1", max_tokens=16)
    r = await client.delete(f"{V1}/tasks/{p['task_id']}", headers=bearer(alice))
    assert r.status_code == 200, r.text
    r = await client.get(f"{V1}/llm/prompts/{p['id']}", headers=bearer(alice))
    assert (r.json()["status"], r.json()["error"], r.json()["response"]) == (
        "failed",
        "cancelled",
        "",
    )


async def test_the_same_idempotency_key_returns_the_same_prompt(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    headers = {**bearer(alice), "Idempotency-Key": "k-1"}
    body = {"model_name": "m1", "prompt": "once"}
    first = await client.post(f"{V1}/llm/prompts", json=body, headers=headers)
    again = await client.post("/api/llm/prompts", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    listed = await client.get(f"{V1}/llm/prompts", headers=bearer(alice))
    assert listed.headers["X-Total-Count"] == "1"
    other = await client.post(
        f"{V1}/llm/prompts", json={**body, "prompt": "twice"}, headers=headers
    )
    assert other.status_code == 422, other.text


# -- routing ---------------------------------------------------------------------------------


async def test_routing_picks_the_least_loaded_runner_then_the_cheaper(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    _, dear = await llm_runner(client, alice, model(price=(50, 50)), slots=2)
    _, cheap = await llm_runner(client, alice, model(price=(1, 1)), slots=2)
    _, unloaded = await llm_runner(client, alice, model(loaded=False), slots=2)
    first = await submitted(client, alice)
    assert await target_of(client, alice, first["id"]) == cheap
    assert first["status"] == "queued" and first["runner_id"] == cheap
    # The cheap runner now has one outstanding prompt: the idle one is less loaded.
    second = await submitted(client, alice)
    assert await target_of(client, alice, second["id"]) == dear
    # Both hold one: the cheaper again.
    third = await submitted(client, alice)
    assert await target_of(client, alice, third["id"]) == cheap
    assert unloaded not in {cheap, dear}


async def test_a_push_capable_runner_gets_the_prompt_offered(container: Container):
    async with custom_client(container, webhook_allow_private=True) as (client, c):
        alice = await sign_in(client, ALICE)
        body = {"device_id": device(), "webhook": "http://127.0.0.1:9/push", "models": [model()]}
        r = await client.post(f"{V1}/runners", json=body, headers=bearer(alice))
        assert r.status_code == 201, r.text
        runner_id = r.json()["runner"]["id"]
        p = await submitted(client, alice)
        async with c.db.read_session() as s:
            pushes = (await s.scalars(select(RunnerPush))).all()
    assert [(str(x.runner_id), str(x.task_id), x.payload["type"]) for x in pushes] == [
        (runner_id, p["id"], "task.offered")
    ]


async def test_a_client_price_cap_leaves_out_dearer_runners(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    _, dear = await llm_runner(client, alice, model(price=(50, 50)), slots=4)
    _, fair = await llm_runner(client, alice, model(price=(20, 20)), slots=1)
    await submitted(client, alice)  # fills the fair runner's one slot
    p = await submitted(client, alice, max_price_per_1k_input="30")
    assert await target_of(client, alice, p["id"]) is None  # the dear one is above the cap
    assert dear != fair


async def test_a_runner_without_the_model_cannot_claim_the_prompt(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    other, _ = await llm_runner(client, alice, model("other-model"))
    serving, _ = await llm_runner(client, alice, model())
    p = await submitted(client, alice)
    assert (await claim(client, other)).status_code == 204
    r = await claim(client, other, p["id"])
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "task_not_claimable"
    got = await claimed(client, serving)
    assert got["task"]["id"] == p["id"]


# -- completion ------------------------------------------------------------------------------


async def test_a_completed_prompt_shows_usage_and_feeds_the_latency_average(
    client: httpx.AsyncClient, container: Container
):
    alice = await sign_in(client, ALICE)
    runner, runner_id = await llm_runner(client, alice, model())
    p = await submitted(client, alice, max_tokens=8)
    got = await claimed(client, runner, start=True)
    container.clock.advance(3)  # type: ignore[attr-defined]
    usage = {"input_tokens": 7, "output_tokens": 2, "finish_reason": "stop"}
    r = await act(
        client, runner, p["id"], "complete", got["claim_token"], output="Hi there", usage=usage
    )
    assert r.status_code == 200, r.text
    done = await prompt(client, alice, p["id"])
    assert await prompt(client, runner, p["id"]) == done  # the runner that holds it may read it
    assert (done["status"], done["response"], done["cost"]) == ("completed", "Hi there", "0")
    assert (done["usage"]["input_tokens"], done["usage"]["output_tokens"]) == (7, 2)
    assert done["usage"]["total_tokens"] == 9 and done["latency_ms"] == 3000.0
    # Pricing is off: no closer ran; the job meters it and feeds the runner's EWMA.
    assert await tick(container) == 1
    async with container.db.read_session() as s:
        stats = (await s.scalars(select(RunnerModelStats))).all()
    assert [(str(x.runner_id), x.model, x.latency_ewma_ms, x.samples) for x in stats] == [
        (runner_id, "m1", 3000.0, 1)
    ]
    assert await tick(container) == 0  # metered once
    assert await prompt(client, alice, p["id"]) == done


async def test_a_failing_runner_is_excluded_and_the_prompt_completes_on_another(
    client: httpx.AsyncClient, container: Container
):
    alice = await sign_in(client, ALICE)
    flaky, flaky_id = await llm_runner(client, alice, model(price=(1, 1)))
    steady, steady_id = await llm_runner(client, alice, model(price=(9, 9)))
    p = await submitted(client, alice)
    assert await target_of(client, alice, p["id"]) == flaky_id
    got = await claimed(client, flaky)
    r = await act(client, flaky, p["id"], "fail", got["claim_token"], error="backend down")
    assert r.status_code == 200, r.text
    again = await prompt(client, alice, p["id"])
    assert (again["status"], again["error"]) == ("queued", "backend down")
    assert await target_of(client, alice, p["id"]) is None
    assert await tick(container) == 1  # re-routed, the failed runner excluded
    assert await target_of(client, alice, p["id"]) == steady_id
    assert (await claim(client, flaky)).status_code == 204
    got = await claimed(client, steady)
    r = await act(
        client,
        steady,
        p["id"],
        "complete",
        got["claim_token"],
        output="ok",
        usage={"prompt_tokens": 4, "completion_tokens": 1},
    )
    assert r.status_code == 200, r.text
    done = await prompt(client, alice, p["id"])
    assert (done["status"], done["attempts"], done["runner_id"]) == ("completed", 2, steady_id)
    assert (done["usage"]["input_tokens"], done["usage"]["output_tokens"]) == (4, 1)


async def test_failover_is_bounded_by_max_attempts(client: httpx.AsyncClient, container: Container):
    alice = await sign_in(client, ALICE)
    runners = [await llm_runner(client, alice, model()) for _ in range(3)]
    p = await submitted(client, alice, max_attempts=2)
    for _ in range(2):
        target = await target_of(client, alice, p["id"])
        token = next(t for t, rid in runners if rid == target)
        got = await claimed(client, token)
        r = await act(client, token, p["id"], "fail", got["claim_token"], error="boom")
        assert r.status_code == 200, r.text
        await tick(container)
    done = await prompt(client, alice, p["id"])
    assert (done["status"], done["error"], done["attempts"]) == ("failed", "boom", 2)


async def test_a_prompt_no_runner_takes_fails_at_its_deadline_with_the_reason(
    client: httpx.AsyncClient, container: Container
):
    alice = await sign_in(client, ALICE)
    p = await submitted(client, alice, model_name="nobody-has-it", deadline_seconds=30)
    assert await tick(container) == 0
    container.clock.advance(29)  # type: ignore[attr-defined]
    await tick(container)
    assert (await prompt(client, alice, p["id"]))["status"] == "queued"
    container.clock.advance(2)  # type: ignore[attr-defined]
    assert await tick(container) == 1
    done = await prompt(client, alice, p["id"])
    assert done["status"] == "failed"
    assert done["error"] == (
        "no runner with model nobody-has-it became available within 30 s "
        "(no online runner has this model loaded)"
    )
    r = await client.get(f"{V1}/tasks/{p['id']}", headers=bearer(alice))
    assert (r.json()["status"], r.json()["last_error"]) == ("cancelled", done["error"])


async def test_a_prompt_its_runner_never_claims_fails_at_its_deadline_naming_that_runner(
    client: httpx.AsyncClient, container: Container
):
    """A runner that crashed still counts as online until its heartbeats are overdue: the
    prompt routed to it waits, and its deadline's reason says where it waited."""
    alice = await sign_in(client, ALICE)
    _, silent_id = await llm_runner(client, alice, model())
    p = await submitted(client, alice, deadline_seconds=30)
    assert await target_of(client, alice, p["id"]) == silent_id
    container.clock.advance(31)  # type: ignore[attr-defined]
    assert await tick(container) == 1
    done = await prompt(client, alice, p["id"])
    assert done["status"] == "failed"
    assert done["error"] == (
        "no runner with model m1 became available within 30 s (routed to runner "
        f"{silent_id}, which did not take it: busy, or not answering although not yet offline)"
    )


async def test_billing_metrics_refuse_a_range_that_ends_before_it_starts(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    r = await client.get(
        f"{V1}/llm/billing/metrics",
        params={"since": "2026-12-07T00:00:00Z", "until": "2026-12-01T00:00:00Z"},
        headers=bearer(alice),
    )
    assert fields(r) == {"until"}
    r = await client.get(
        f"{V1}/llm/billing/metrics",
        params={"since": "2026-12-01T00:00:00Z", "until": "2026-12-07T00:00:00Z"},
        headers=bearer(alice),
    )
    assert r.status_code == 200 and r.json()["total"]["requests"] == 0, r.text


async def test_a_prompt_routed_to_a_runner_that_went_offline_is_routed_again(
    client: httpx.AsyncClient, container: Container
):
    alice = await sign_in(client, ALICE)
    gone, gone_id = await llm_runner(client, alice, model(price=(1, 1)))
    _, stays_id = await llm_runner(client, alice, model(price=(5, 5)))
    p = await submitted(client, alice)
    assert await target_of(client, alice, p["id"]) == gone_id
    assert (await heartbeat(client, gone, status="offline")).status_code == 200
    assert await tick(container) == 1
    assert await target_of(client, alice, p["id"]) == stays_id


async def test_a_prompt_its_runner_does_not_claim_in_time_is_routed_to_another(
    client: httpx.AsyncClient, container: Container
):
    """A runner that died counts as online until its heartbeats are overdue: once the offer
    window (LLM_OFFER_SECONDS) passes unclaimed, the prompt goes to another runner, and back to
    the same one only when no other serves the model (it may be alive, only slow to claim)."""
    alice = await sign_in(client, ALICE)
    _, dead_id = await llm_runner(client, alice, model(price=(1, 1)))
    alive, alive_id = await llm_runner(client, alice, model(price=(5, 5)))
    p = await submitted(client, alice)
    assert await target_of(client, alice, p["id"]) == dead_id
    assert await tick(container) == 0  # within the window: it stays
    container.clock.advance(container.llm.offer_seconds + 1)  # type: ignore[attr-defined]
    assert await tick(container) == 1
    assert await target_of(client, alice, p["id"]) == alive_id
    assert (await claimed(client, alive))["task"]["id"] == p["id"]

    lone = await submitted(client, alice, model_name="m2")  # no runner serves m2 yet
    _, only_id = await llm_runner(client, alice, model("m2"))
    assert await tick(container) == 1
    assert await target_of(client, alice, lone["id"]) == only_id
    container.clock.advance(container.llm.offer_seconds + 1)  # type: ignore[attr-defined]
    assert await tick(container) == 1  # offered again to the one runner there is
    assert await target_of(client, alice, lone["id"]) == only_id


async def test_a_queued_prompt_is_routed_once_a_runner_with_the_model_comes(
    client: httpx.AsyncClient, container: Container
):
    alice = await sign_in(client, ALICE)
    p = await submitted(client, alice)
    _, runner_id = await llm_runner(client, alice, model())
    assert await tick(container) == 1
    assert await target_of(client, alice, p["id"]) == runner_id


async def test_wait_returns_the_result_when_the_runner_completes_meanwhile(
    client: httpx.AsyncClient,
):
    alice = await sign_in(client, ALICE)
    runner, _ = await llm_runner(client, alice, model())
    waiting = asyncio.create_task(submit(client, alice, wait=20))
    got = await claimed(client, runner, wait=10)
    r = await act(
        client,
        runner,
        got["task"]["id"],
        "complete",
        got["claim_token"],
        output="hello",
        usage={"input_tokens": 3, "output_tokens": 1},
    )
    assert r.status_code == 200, r.text
    answer = await asyncio.wait_for(waiting, 20)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["response"]) == ("completed", "hello")


async def test_wait_answers_202_when_the_prompt_is_still_queued(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    r = await submit(client, alice, wait=0.2)
    assert (r.status_code, r.json()["status"]) == (202, "queued")


# -- token billing ---------------------------------------------------------------------------


@dataclass
class Net:
    http: httpx.AsyncClient
    container: Container
    chain: FakeChain
    clock: FrozenClock

    async def stake(self, account: Any, amount: int) -> None:
        client = FakeChainClient(self.chain)
        self.chain.mint(account.address, amount)
        await client.approve(account, amount)
        await client.add_funds(account, account.address.lower(), amount)

    async def rows(self, table: type[Any], **where: Any) -> list[Any]:
        async with self.container.db.read_session() as s:
            return list((await s.scalars(select(table).filter_by(**where))).all())


@pytest.fixture
async def net(database_url: str, tmp_path: Path) -> AsyncIterator[Net]:
    """Pricing on, the in-memory chain, a clock at a known hour."""
    clock = FrozenClock(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
    s = make_settings(database_url, tmp_path / "priced", **PRICING)
    c = Container(settings=s, db=Database(s.resolved_database_url), clock=clock)
    chain = FakeChain()
    c.chain = FakeChainClient(chain)
    app = create_app(c, run_migrations=False, start_jobs=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://parity.test") as http,
    ):
        yield Net(http, c, chain, clock)
    await c.db.dispose()


def expected_reservation(prompt_text: str, max_tokens: int, price: tuple[int, int]) -> int:
    """metering.reservation_amount: (bytes + 8 + 256) input tokens and max_tokens output."""
    bound = len(prompt_text.encode()) + 8 + 256
    return math.ceil((bound * price[0] + max_tokens * price[1]) / 1000)


async def test_a_completed_prompt_is_billed_its_tokens_in_exactly_one_posting(net: Net):
    alice = await sign_in(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 100_000)
    runner, _ = await llm_runner(net.http, bob, model(price=(1000, 2000)))
    p = await submitted(net.http, alice, prompt="Say hello", max_tokens=100)
    held = expected_reservation("Say hello", 100, (1000, 2000))
    assert p["reserved"] == str(held)
    assert p["price"] == {"input_per_1k": "1000", "output_per_1k": "2000"}
    [res] = await net.rows(Reservation, source_id=p["id"])
    assert (res.source_type, res.amount, res.status) == ("prompt", held, "open")

    got = await claimed(net.http, runner)
    net.clock.advance(2)
    body = {
        "claim_token": got["claim_token"],
        "response": "Hello!",
        "prompt_tokens": 12,
        "response_tokens": 3,
        "inference_time_ms": 1800,
    }
    r = await net.http.post(
        f"{V1}/llm/prompts/{p['id']}/complete", json=body, headers=bearer(runner)
    )
    assert r.status_code == 200, r.text
    done = r.json()
    # ceil((12 * 1000 + 3 * 2000) / 1000) = 18; fee 10 % = 1 (rounded down).
    assert (done["status"], done["response"], done["cost"]) == ("completed", "Hello!", "18")
    assert (done["usage"]["input_tokens"], done["usage"]["output_tokens"]) == (12, 3)
    assert done["usage"]["flags"] == [] and done["latency_ms"] == 2000.0
    # The same completion again (a retry after a timeout) answers the same, posts nothing.
    again = await net.http.post(
        f"{V1}/llm/prompts/{p['id']}/complete", json=body, headers=bearer(runner)
    )
    assert again.status_code == 200, again.text
    assert again.json() == done
    [posting] = await net.rows(Posting, source_id=p["id"])
    assert (posting.source_type, posting.kind) == ("prompt", "prompt_payment")
    by_role = {e.role: (e.account, e.amount) for e in await net.rows(Entry, posting_id=posting.id)}
    assert by_role == {
        "payer": (ALICE.address.lower(), -18),
        "payee": (BOB.address.lower(), 17),
        "protocol": (PROTOCOL, 1),
    }
    [res] = await net.rows(Reservation, source_id=p["id"])
    assert res.status == "consumed"
    assert await tick(net.container) == 0  # metered in the completion's transaction


async def test_only_the_claiming_runner_completes_a_prompt(net: Net):
    alice = await sign_in(net.http, ALICE)
    await net.stake(ALICE, 100_000)
    runner, _ = await llm_runner(net.http, alice, model(price=(1, 1)))
    stranger, _ = await llm_runner(net.http, alice, model("m2"))
    p = await submitted(net.http, alice)
    got = await claimed(net.http, runner)
    body = {"claim_token": got["claim_token"], "response": "x"}
    # Token counts are billed: a negative or fractional one is refused, naming usage.
    for usage in ({"output_tokens": -3}, {"input_tokens": 1.5}, {"nested": {"a": 1}}):
        r = await net.http.post(
            f"{V1}/llm/prompts/{p['id']}/complete",
            json={**body, "usage": usage},
            headers=bearer(runner),
        )
        assert r.status_code == 422 and "usage" in r.text, r.text
    r = await net.http.post(
        f"{V1}/llm/prompts/{p['id']}/complete", json=body, headers=bearer(stranger)
    )
    assert r.status_code == 409, r.text
    r = await net.http.post(
        f"{V1}/llm/prompts/{p['id']}/complete", json=body, headers=bearer(alice)
    )
    assert r.status_code == 403, r.text
    assert await net.rows(Posting) == []


async def test_a_prompt_that_does_not_fit_the_balance_is_refused_and_nothing_is_kept(net: Net):
    alice = await sign_in(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 10)
    await llm_runner(net.http, bob, model(price=(1000, 1000)))
    r = await submit(net.http, alice, max_tokens=100)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "insufficient_funds"
    held = expected_reservation("Say hello", 100, (1000, 1000))
    assert r.json()["error"]["details"]["required"] == str(held)
    listed = await net.http.get(f"{V1}/llm/prompts", headers=bearer(alice))
    assert listed.json()["prompts"] == []


async def test_a_failed_prompt_releases_its_escrow(net: Net):
    alice = await sign_in(net.http, ALICE)
    await net.stake(ALICE, 100_000)
    p = await submitted(
        net.http,
        alice,
        model_name="nobody",
        deadline_seconds=5,
        max_price_per_1k_input="10",
        max_price_per_1k_output="10",
    )
    [res] = await net.rows(Reservation, source_id=p["id"])
    assert (res.amount, res.status) == (expected_reservation("Say hello", 512, (10, 10)), "open")
    net.clock.advance(6)
    assert await tick(net.container) == 1
    [res] = await net.rows(Reservation, source_id=p["id"])
    assert res.status == "released"
    assert await net.rows(Posting) == []


async def _complete(net: Net, runner: str, usage: dict[str, int], seconds: float) -> None:
    got = await claimed(net.http, runner)
    net.clock.advance(seconds)
    r = await act(
        net.http,
        runner,
        got["task"]["id"],
        "complete",
        got["claim_token"],
        output="answer",
        usage=usage,
    )
    assert r.status_code == 200, r.text


async def test_billing_metrics_by_model_and_period(net: Net):
    alice = await sign_in(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 1_000_000)
    small, _ = await llm_runner(net.http, bob, model("small", price=(100, 200)))
    big, _ = await llm_runner(net.http, bob, model("big", price=(1000, 3000)))
    # 10:00, small: 20 in + 10 out, 2 s → ceil((2000 + 2000) / 1000) = 4
    await submitted(net.http, alice, model_name="small")
    await _complete(net, small, {"input_tokens": 20, "output_tokens": 10}, 2)
    # 10:00:02, small: 30 + 5, 4 s → ceil((3000 + 1000) / 1000) = 4
    await submitted(net.http, alice, model_name="small")
    await _complete(net, small, {"input_tokens": 30, "output_tokens": 5}, 4)
    # 11:00:06, big: 11 + 7, 9 s → ceil((11000 + 21000) / 1000) = 32
    net.clock.advance(3600)
    await submitted(net.http, alice, model_name="big")
    await _complete(net, big, {"input_tokens": 11, "output_tokens": 7}, 9)
    # 11:00:15, big: never served (failed at its deadline): a request, no tokens, no latency
    await submitted(net.http, alice, model_name="big", deadline_seconds=1)
    net.clock.advance(2)
    await tick(net.container)

    r = await net.http.get(
        "/api/llm/billing/metrics", params={"period": "hour"}, headers=bearer(alice)
    )
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["total"] == {
        "requests": 4,
        "input_tokens": 61,
        "output_tokens": 22,
        "total_tokens": 83,
        "cost": "40",
        "average_latency_ms": 5000.0,
        "p95_latency_ms": 9000.0,
    }
    assert (m["total_requests"], m["total_tokens"], m["total_cost"]) == (4, 83, "40")
    assert m["avg_inference_time_ms"] == 5000.0
    by_model = {x["model"]: x for x in m["by_model"]}
    assert (by_model["small"]["requests"], by_model["small"]["cost"]) == (2, "8")
    assert (by_model["small"]["average_latency_ms"], by_model["small"]["p95_latency_ms"]) == (
        3000.0,
        4000.0,
    )
    assert (by_model["big"]["requests"], by_model["big"]["cost"]) == (2, "32")
    assert by_model["big"]["average_latency_ms"] == 9000.0
    assert [(x["period_start"][:19], x["requests"], x["cost"]) for x in m["by_period"]] == [
        ("2026-03-02T10:00:00", 2, "8"),
        ("2026-03-02T11:00:00", 2, "32"),
    ]
    bob_view = await net.http.get(f"{V1}/llm/billing/metrics", headers=bearer(bob))
    assert bob_view.json()["total"]["requests"] == 0
    r = await net.http.get(
        f"{V1}/llm/billing/metrics", params={"period": "year"}, headers=bearer(alice)
    )
    assert fields(r) == {"period"}

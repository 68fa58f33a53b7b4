"""Escrow, metering and postings through the API (ARCHITECTURE §6), on SQLite and PostgreSQL,
with the in-memory chain behind the ChainClient port (the anvil half is in tests/e2e)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from parity.app import create_app
from parity.chain.fake import FakeChain, FakeChainClient
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.ledger.models import Entry, Posting, Reservation
from parity.tasks.models import Task
from tests.conftest import ADMIN, ALICE, BOB, bearer, make_settings, sign_in
from tests.integration.queue_helpers import claimed, create_task, device, register_runner

V1 = "/api/v1"
PROTOCOL = "0x" + "fe" * 20
CHAIN = {
    "FILECOIN_RPC": "http://chain.invalid",
    "FILECOIN_STAKE_WALLET_ADDRESS": "0x" + "5a" * 20,
    "STAKE_CACHE_SECONDS": "0",
}
PRICING = {
    "PRICE_TASK_BASE": "100",
    "PRICE_CPU_CORE_SECOND": "10",
    "PROTOCOL_FEE_BPS": "1000",
    "PROTOCOL_FEE_ADDRESS": PROTOCOL,
    **CHAIN,
}

ONE_MINUTE = {
    "title": "t",
    "type": "command",
    "config": {"command": ["true"]},
    "timeout_seconds": 60,
}


@dataclass
class Net:
    http: httpx.AsyncClient
    container: Container
    chain: FakeChain
    clock: FrozenClock

    async def stake(self, account: Any, amount: int) -> None:
        """Mint, approve and addFunds under the account's address stake id."""
        client = FakeChainClient(self.chain)
        self.chain.mint(account.address, amount)
        await client.approve(account, amount)
        await client.add_funds(account, account.address.lower(), amount)

    async def rows(self, model: type[Any], **where: Any) -> list[Any]:
        async with self.container.db.read_session() as s:
            q = select(model).filter_by(**where)
            return list((await s.scalars(q)).all())


async def _net(
    database_url: str, home: Path, clock: FrozenClock, **settings: str
) -> AsyncIterator[Net]:
    s = make_settings(database_url, home, **settings)
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


@pytest.fixture
async def net(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
) -> AsyncIterator[Net]:
    # `container` migrated the database; this app shares it with pricing switched on.
    async for n in _net(database_url, tmp_path / "priced", clock, **PRICING):
        yield n


async def _balance(net: Net, token: str) -> dict[str, Any]:
    r = await net.http.get(f"{V1}/ledger/balance", headers=bearer(token))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def _run(
    net: Net, runner_token: str, seconds: float, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Claim+start the next task, let `seconds` pass on the server's clock, complete it."""
    got = await claimed(net.http, runner_token, start="true")
    net.clock.advance(seconds)
    body = {"claim_token": got["claim_token"], "output": "ok", "exit_code": 0}
    r = await net.http.post(
        f"{V1}/runners/tasks/{got['task']['id']}/complete",
        json=body if usage is None else {**body, "usage": usage},
        headers=bearer(runner_token),
    )
    assert r.status_code == 200, r.text
    return got


async def test_the_time_a_completion_waited_on_its_runner_is_not_billed(net: Net):
    """A completion that got through late (the server was unreachable: the runner retried)
    carries ``usage.report_delay_ms``; the meter stops at the run's end. A runner can only
    lower its own pay with it: never below the base, never a negative or fractional delay."""
    alice = await sign_in(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 10_000)
    runner_token, _ = await register_runner(net.http, bob, device())
    billed = {}
    for delay in (10_000, 60_000):
        task = await create_task(net.http, alice, timeout_seconds=60)
        await _run(net, runner_token, 12.5, usage={"wall_seconds": 2.4, "report_delay_ms": delay})
        [posting] = await net.rows(Posting, source_id=task["id"])
        payer = [e for e in await net.rows(Entry, posting_id=posting.id) if e.role == "payer"]
        billed[delay] = (-payer[0].amount, posting.facts)
    # 100 + 10 * 2.5 s: the 10 s the report waited are not billed.
    assert billed[10_000][0] == 125
    assert (billed[10_000][1]["milliseconds"], billed[10_000][1]["report_delay_ms"]) == (
        2500,
        10_000,
    )
    # A delay longer than the whole run leaves the base price.
    assert billed[60_000][0] == 100 and billed[60_000][1]["milliseconds"] == 0
    task = await create_task(net.http, alice, timeout_seconds=60)
    got = await claimed(net.http, runner_token, start="true")
    for bad in (-1, 2.5, True):
        r = await net.http.post(
            f"{V1}/runners/tasks/{got['task']['id']}/complete",
            json={"claim_token": got["claim_token"], "output": "ok", "exit_code": 0,
                  "usage": {"report_delay_ms": bad}},
            headers=bearer(runner_token),
        )  # fmt: skip
        assert r.status_code == 422, (bad, r.text)
        assert "report_delay_ms" in r.text and "usage" in r.text
    assert await net.rows(Posting, source_id=task["id"]) == []


async def test_creating_a_task_reserves_its_maximum_cost(net: Net) -> None:
    alice = await sign_in(net.http, ALICE)
    await net.stake(ALICE, 10_000)
    task = await create_task(net.http, alice, timeout_seconds=60)
    # 100 base + 1 core * 10/s * 60 s
    b = await _balance(net, alice)
    assert (b["stake"], b["reserved"], b["available"]) == ("10000", "700", "9300")
    r = await net.http.get(f"{V1}/ledger/reservations", headers=bearer(alice))
    [res] = r.json()["items"]
    assert (res["source_id"], res["amount"], res["status"]) == (task["id"], "700", "open")
    reward = (await net.http.get(f"{V1}/tasks/{task['id']}/reward", headers=bearer(alice))).json()
    assert (reward["status"], reward["reserved"], reward["paid"]) == ("reserved", "700", False)


async def test_a_task_that_does_not_fit_the_balance_is_refused_naming_the_amount(net: Net):
    alice = await sign_in(net.http, ALICE)
    await net.stake(ALICE, 500)
    r = await net.http.post(
        f"{V1}/tasks",
        json=ONE_MINUTE,
        headers=bearer(alice),
    )
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_funds"
    assert (err["details"]["required"], err["details"]["missing"]) == ("700", "200")
    assert "200" in err["message"]
    # Nothing half-written: no task, no reservation.
    assert await net.rows(Task, creator_address=ALICE.address.lower()) == []
    assert await net.rows(Reservation) == []


async def test_completion_posts_the_metered_amount_in_entries_that_sum_to_zero(net: Net):
    alice = await sign_in(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 10_000)
    runner_token, _ = await register_runner(net.http, bob, device())
    task = await create_task(net.http, alice, timeout_seconds=60)
    await _run(net, runner_token, 12.5)
    # 100 + ceil(10 * 12.5) = 225; fee 10 % = 22 (rounded down); runner 203.
    [posting] = await net.rows(Posting, source_id=task["id"])
    entries = await net.rows(Entry, posting_id=posting.id)
    by_role = {e.role: (e.account, e.amount) for e in entries}
    assert by_role == {
        "payer": (ALICE.address.lower(), -225),
        "payee": (BOB.address.lower(), 203),
        "protocol": (PROTOCOL, 22),
    }
    assert sum(e.amount for e in entries) == 0
    [res] = await net.rows(Reservation, source_id=task["id"])
    assert res.status == "consumed"
    a = await _balance(net, alice)
    assert (a["unsettled_debits"], a["reserved"], a["available"]) == ("225", "0", "9775")
    b = await _balance(net, bob)
    assert (b["pending_earnings"], b["settled_earnings"]) == ("203", "0")
    reward = (await net.http.get(f"{V1}/tasks/{task['id']}/reward", headers=bearer(alice))).json()
    assert (reward["price"], reward["reward"], reward["fee"]) == ("225", "203", "22")
    assert (reward["status"], reward["paid"]) == ("unsettled", False)
    r = await net.http.get(f"{V1}/ledger/entries", headers=bearer(bob))
    [entry] = r.json()["items"]
    assert (entry["amount"], entry["counterparty"], entry["source_id"]) == (
        "203",
        ALICE.address.lower(),
        task["id"],
    )


async def test_metering_never_bills_more_than_the_reservation(net: Net):
    alice = await sign_in(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 10_000)
    runner_token, _ = await register_runner(net.http, bob, device())
    task = await create_task(net.http, alice, timeout_seconds=60)
    await _run(net, runner_token, 600)  # ran ten times its timeout
    [posting] = await net.rows(Posting, source_id=task["id"])
    payer = [e for e in await net.rows(Entry, posting_id=posting.id) if e.role == "payer"]
    assert payer[0].amount == -700


async def test_a_repeated_completion_posts_once(net: Net):
    alice = await sign_in(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 10_000)
    runner_token, _ = await register_runner(net.http, bob, device())
    await create_task(net.http, alice, timeout_seconds=60)
    got = await _run(net, runner_token, 1)
    again = await net.http.post(
        f"{V1}/runners/tasks/{got['task']['id']}/complete",
        json={"claim_token": got["claim_token"], "output": "ok", "exit_code": 0},
        headers=bearer(runner_token),
    )
    assert again.status_code == 200
    assert len(await net.rows(Posting)) == 1
    assert len(await net.rows(Entry)) == 3


async def test_cancel_and_final_failure_release_the_reservation(net: Net):
    alice = await sign_in(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 10_000)
    runner_token, _ = await register_runner(net.http, bob, device())
    cancelled = await create_task(net.http, alice, timeout_seconds=60)
    r = await net.http.delete(f"{V1}/tasks/{cancelled['id']}", headers=bearer(alice))
    assert r.status_code == 200, r.text
    failing = await create_task(net.http, alice, timeout_seconds=60, max_attempts=1)
    got = await claimed(net.http, runner_token, start="true")
    assert got["task"]["id"] == failing["id"]
    r = await net.http.post(
        f"{V1}/runners/tasks/{failing['id']}/fail",
        json={"claim_token": got["claim_token"], "error": "boom"},
        headers=bearer(runner_token),
    )
    assert r.status_code == 200 and r.json()["status"] == "failed", r.text
    statuses = {r.source_id: r.status for r in await net.rows(Reservation)}
    assert statuses == {cancelled["id"]: "released", failing["id"]: "released"}
    assert await net.rows(Posting) == []
    b = await _balance(net, alice)
    assert (b["reserved"], b["available"], b["unsettled_debits"]) == ("0", "10000", "0")
    reward = await net.http.get(f"{V1}/tasks/{failing['id']}/reward", headers=bearer(alice))
    assert reward.json()["status"] == "released"


async def test_concurrent_creations_never_reserve_more_than_the_stake(net: Net):
    alice = await sign_in(net.http, ALICE)
    await net.stake(ALICE, 2_100)  # three tasks of 700

    async def one() -> int:
        r = await net.http.post(
            f"{V1}/tasks",
            json=ONE_MINUTE,
            headers=bearer(alice),
        )
        return r.status_code

    codes = await asyncio.gather(*(one() for _ in range(8)))
    assert sorted(codes) == [201] * 3 + [409] * 5
    assert sum(r.amount for r in await net.rows(Reservation, status="open")) == 2_100


async def test_amounts_of_1e24_base_units_round_trip_exactly(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
):
    big = 10**24 + 7
    settings = dict(PRICING, PRICE_TASK_BASE=str(big), PROTOCOL_FEE_BPS="0")
    async for n in _net(database_url, tmp_path / "big", clock, **settings):
        alice = await sign_in(n.http, ALICE)
        bob = await sign_in(n.http, BOB)
        await n.stake(ALICE, 3 * 10**24)
        runner_token, _ = await register_runner(n.http, bob, device())
        task = await create_task(n.http, alice, timeout_seconds=1)
        await _run(n, runner_token, 1)
        [posting] = await n.rows(Posting, source_id=task["id"])
        amounts = sorted(e.amount for e in await n.rows(Entry, posting_id=posting.id))
        assert amounts == [-(big + 10), big + 10]
        b = await _balance(n, alice)
        assert b["unsettled_debits"] == str(big + 10)
        assert b["available"] == str(3 * 10**24 - big - 10)
        assert b["display"]["stake"] == "3000000.0"


async def test_min_stake_gates_creating_work_and_registering_runners(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
):
    gate = {"MIN_STAKE": "1000", **CHAIN}
    async for n in _net(database_url, tmp_path / "gated", clock, **gate):
        alice = await sign_in(n.http, ALICE)
        await n.stake(ALICE, 400)
        r = await n.http.post(
            f"{V1}/tasks",
            json={"title": "t", "type": "command", "config": {"command": ["true"]}},
            headers=bearer(alice),
        )
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert (err["code"], err["details"]["missing"]) == ("insufficient_stake", "600")
        # Both units in the message, the stake included, with the token's own symbol.
        symbol = await n.container.ledger.stakes.symbol("?")
        assert f"has 0.0000000000000004 {symbol} (400 base units)" in err["message"], err
        assert f"0.0000000000000006 {symbol} (600 base units) missing" in err["message"], err
        r = await n.http.post(
            f"{V1}/runners",
            json={"device_id": device(), "capabilities": {"cpu_cores": 1, "memory_mb": 512}},
            headers=bearer(alice),
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_stake"
        await n.stake(ALICE, 600)
        task = await create_task(n.http, alice)  # free work, now allowed
        assert task["status"] == "pending"
        await register_runner(n.http, alice, device())


async def test_reading_another_accounts_ledger_needs_the_operator(net: Net):
    alice = await sign_in(net.http, ALICE)
    r = await net.http.get(
        f"{V1}/ledger/balance", params={"account": BOB.address.lower()}, headers=bearer(alice)
    )
    assert r.status_code == 403


async def test_an_operator_reading_a_malformed_account_is_told_so_not_shown_zeros(net: Net):
    admin = await sign_in(net.http, ADMIN)
    await net.stake(BOB, 1_000)
    r = await net.http.get(
        f"{V1}/ledger/balance", params={"account": BOB.address}, headers=bearer(admin)
    )
    assert (r.status_code, r.json()["stake"]) == (200, "1000"), r.text
    for path in ("balance", "entries", "reservations", "payouts"):
        for bad in (BOB.address.lower()[2:], "nothex", BOB.address.lower()[:-1] + "g"):
            r = await net.http.get(
                f"{V1}/ledger/{path}", params={"account": bad}, headers=bearer(admin)
            )
            assert r.status_code == 422, (path, bad, r.text)
            assert r.json()["error"]["details"]["field"] == "account"


async def test_an_unreachable_chain_is_a_503_not_a_500(net: Net):
    alice = await sign_in(net.http, ALICE)
    net.chain.unreachable = True
    r = await net.http.post(
        f"{V1}/tasks",
        json={"title": "t", "type": "command", "config": {"command": ["true"]}},
        headers=bearer(alice),
    )
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "billing_unavailable"
    async with net.container.db.read_session() as s:
        assert await s.scalar(select(func.count()).select_from(Task)) == 0


async def test_free_work_reserves_and_posts_nothing(client: httpx.AsyncClient, container):
    alice = await sign_in(client, ALICE)
    task = await create_task(client, alice)
    reward = (await client.get(f"{V1}/tasks/{task['id']}/reward", headers=bearer(alice))).json()
    assert (reward["status"], reward["reward"]) == ("not_priced", None)
    async with container.db.read_session() as s:
        assert await s.scalar(select(func.count()).select_from(Reservation)) == 0


async def test_editing_a_pending_task_resizes_its_escrow_or_refuses_the_edit(net: Net):
    alice = await sign_in(net.http, ALICE)
    await net.stake(ALICE, 2_000)
    task = await create_task(net.http, alice, timeout_seconds=60)  # 700
    r = await net.http.put(
        f"{V1}/tasks/{task['id']}", json={"timeout_seconds": 120}, headers=bearer(alice)
    )
    assert r.status_code == 200, r.text
    assert (await _balance(net, alice))["reserved"] == "1300"
    r = await net.http.put(
        f"{V1}/tasks/{task['id']}",
        json={"timeout_seconds": 120, "resources": {"cpu_cores": 2}},
        headers=bearer(alice),
    )  # 100 + 2 * 10 * 120 = 2500 > 2000
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert (err["code"], err["details"]["missing"]) == ("insufficient_funds", "500")
    got = (await net.http.get(f"{V1}/tasks/{task['id']}", headers=bearer(alice))).json()
    assert got["timeout_seconds"] == 120  # the refused edit left the task as it was
    assert (await _balance(net, alice))["reserved"] == "1300"


async def test_status_shows_the_prices_fee_and_settlement_state(net: Net):
    body = (await net.http.get("/api/status")).json()
    billing = body["billing"]
    assert billing["pricing"] is True
    assert billing["prices"]["task_base"] == "100"
    assert billing["prices"]["cpu_core_second"] == "10"
    assert billing["protocol_fee_bps"] == 1000
    assert billing["settlement"] == {"worker": "off", "by_status": {}}  # no jobs, no signer


async def test_every_posting_sums_to_zero_over_random_outcomes(net: Net):
    """A seeded mix of run times, completions, failures and cancellations: each posting's
    entries sum to zero, and so does the whole ledger."""
    rng = random.Random(314159)
    alice = await sign_in(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 10**30)
    runner_token, _ = await register_runner(net.http, bob, device())
    for _ in range(12):
        task = await create_task(
            net.http,
            alice,
            timeout_seconds=rng.randint(1, 600),
            resources={"cpu_cores": rng.choice([0.25, 1, 3.5]), "memory_mb": rng.randint(0, 4096)},
            max_attempts=1,
        )
        outcome = rng.choice(["complete", "complete", "fail", "cancel"])
        if outcome == "cancel":
            r = await net.http.delete(f"{V1}/tasks/{task['id']}", headers=bearer(alice))
            assert r.status_code == 200, r.text
            continue
        got = await claimed(net.http, runner_token, start="true")
        net.clock.advance(rng.uniform(0, 900))
        r = await net.http.post(
            f"{V1}/runners/tasks/{got['task']['id']}/{outcome}",
            json={"claim_token": got["claim_token"], "output": "x", "exit_code": 0, "error": "e"},
            headers=bearer(runner_token),
        )
        assert r.status_code == 200, r.text
    postings = await net.rows(Posting)
    assert postings, "the seed produced no completion"
    entries = await net.rows(Entry)
    for posting in postings:
        assert sum(e.amount for e in entries if e.posting_id == posting.id) == 0
    assert sum(e.amount for e in entries) == 0
    assert all(r.status != "open" for r in await net.rows(Reservation))


async def test_min_stake_may_be_given_in_token_units(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
):
    gate = {"MIN_STAKE_TOKENS": "2.5", **CHAIN}
    async for n in _net(database_url, tmp_path / "tokens", clock, **gate):
        alice = await sign_in(n.http, ALICE)
        await n.stake(ALICE, 2 * 10**18)  # 2 tokens (the fake token has 18 decimals)
        r = await n.http.post(f"{V1}/tasks", json=ONE_MINUTE, headers=bearer(alice))
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["details"]["required"] == str(25 * 10**17)
        assert err["details"]["missing"] == str(5 * 10**17)
        # in the token's own symbol, not the configured fallback
        assert (
            "0.5 PRTY (500000000000000000 base units) missing" in err["message"]
        )  # the token's symbol


async def test_turning_pricing_off_still_closes_the_escrow_held_at_start(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
):
    async for n in _net(database_url, tmp_path / "on", clock, **PRICING):
        assert n.container.ledger.escrow.possible
        alice = await sign_in(n.http, ALICE)
        await n.stake(ALICE, 10_000)
        task = await create_task(n.http, alice, timeout_seconds=60)
    free = {k: v for k, v in PRICING.items() if not k.startswith("PRICE_")}
    async for n in _net(database_url, tmp_path / "off", clock, **free):
        assert n.container.ledger.escrow.possible  # a reservation is still open
        alice = await sign_in(n.http, ALICE)
        r = await n.http.delete(f"{V1}/tasks/{task['id']}", headers=bearer(alice))
        assert r.status_code == 200, r.text
        [res] = await n.rows(Reservation)
        assert res.status == "released"
    async for n in _net(database_url, tmp_path / "off-again", clock, **free):
        assert not n.container.ledger.escrow.possible  # nothing held: no lookups at all


async def test_a_server_without_a_chain_says_so_instead_of_a_balance(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    r = await client.get(f"{V1}/ledger/balance", headers=bearer(alice))
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "chain_not_configured"
    r = await client.get(f"{V1}/ledger/entries", headers=bearer(alice))
    assert r.status_code == 200 and r.json()["items"] == []


async def test_creating_priced_gated_work_reads_the_stake_from_the_chain_once(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
):
    async for n in _net(database_url, tmp_path / "once", clock, MIN_STAKE="100", **PRICING):
        alice = await sign_in(n.http, ALICE)
        await n.stake(ALICE, 10_000)
        reads: list[str] = []
        chain = n.container.chain
        assert chain is not None
        original = chain.stake_of

        async def counted(stake_id: str, reads: list[str] = reads, original: Any = original) -> int:
            reads.append(stake_id)
            return int(await original(stake_id))

        chain.stake_of = counted  # type: ignore[method-assign]
        await create_task(n.http, alice, timeout_seconds=60)
        assert reads == [ALICE.address.lower()]  # the gate's read is reused by the escrow

"""The stake cache never lets a settled payment be spent again: right after the settlement
worker confirms a payment (its debit leaves the unsettled set), a stake figure cached before it
still holds the amount paid. On SQLite and PostgreSQL, through the API, with the in-memory chain
behind the ChainClient port and the real settlement worker; one server, and two replicas with
their own caches and clocks a little apart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account

from parity.chain.fake import FakeChain, FakeChainClient
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.ledger.settlement import SettlementConfig, SettlementWorker
from tests.conftest import ALICE, BOB, bearer, make_settings, sign_in
from tests.integration.queue_helpers import (
    act,
    claimed,
    create_task,
    device,
    register_runner,
    served,
)
from tests.settlement_support import run_until_idle

V1 = "/api/v1"
OWNER = Account.from_key("0x" + "a1" * 32)  # the StakeWallet's owner: the settlement signer
PRICED = {
    "FILECOIN_RPC": "http://chain.invalid",
    "FILECOIN_STAKE_WALLET_ADDRESS": "0x" + "5a" * 20,
    "STAKE_CACHE_SECONDS": "60",  # far longer than any test: every figure below may be cached
    "PRICE_TASK_BASE": "100",
    "PRICE_CPU_CORE_SECOND": "10",
    "PROTOCOL_FEE_BPS": "1000",
    "PROTOCOL_FEE_ADDRESS": "0x" + "fe" * 20,
}
STAKED = 10_000
PRICE = 225  # 100 + 10/s * 12.5 s
# 100 + 10/s * 980 s = 9,900: fits the stake before the payment, not after it.
TOO_BIG = {"title": "t", "type": "command", "config": {"command": ["true"]}, "timeout_seconds": 980}


@dataclass
class Replica:
    http: httpx.AsyncClient
    container: Container
    clock: FrozenClock

    async def balance(self, token: str) -> dict[str, int]:
        r = await self.http.get(f"{V1}/ledger/balance", headers=bearer(token))
        assert r.status_code == 200, r.text
        body = r.json()
        keys = ("stake", "unsettled_debits", "reserved", "available")
        return {k: int(body[k]) for k in keys}


@asynccontextmanager
async def replica(
    database_url: str, home: Path, chain: FakeChain, clock: FrozenClock
) -> AsyncIterator[Replica]:
    s = make_settings(database_url, home, **PRICED)
    c = Container(settings=s, db=Database(s.resolved_database_url), clock=clock)
    c.chain = FakeChainClient(chain)
    async with served(c) as http:
        yield Replica(http, c, clock)


def settlement_worker(db_url: str, chain: FakeChain, clock: FrozenClock) -> SettlementWorker:
    return SettlementWorker(
        Database(db_url), FakeChainClient(chain), OWNER, clock, SettlementConfig(confirmations=1)
    )


async def stake(chain: FakeChain, account: Any, amount: int) -> None:
    client = FakeChainClient(chain)
    chain.mint(account.address, amount)
    await client.approve(account, amount)
    await client.add_funds(account, account.address.lower(), amount)


async def run_one_task(server: Replica, alice: str, bob: str) -> str:
    """Alice's task of 60 s (700 reserved) runs 12.5 s on Bob's runner: a posting of 225."""
    runner_token, _ = await register_runner(server.http, bob, device())
    task = await create_task(server.http, alice, timeout_seconds=60)
    got = await claimed(server.http, runner_token, start="true")
    server.clock.advance(12.5)
    done = await act(server.http, runner_token, got["task"]["id"], "complete", got["claim_token"])
    assert done.status_code == 200, done.text
    return str(task["id"])


def start_clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


@dataclass
class Paid:
    """One server after Alice's task ran on Bob's runner: its payment not yet settled."""

    server: Replica
    chain: FakeChain
    clock: FrozenClock
    worker: SettlementWorker
    alice: str
    task_id: str


@asynccontextmanager
async def one_task_run(database_url: str, home: Path) -> AsyncIterator[Paid]:
    chain = FakeChain(owner=OWNER.address)
    clock = start_clock()
    worker = settlement_worker(database_url, chain, clock)
    try:
        async with replica(database_url, home, chain, clock) as server:
            alice = await sign_in(server.http, ALICE)
            bob = await sign_in(server.http, BOB)
            await stake(chain, ALICE, STAKED)
            task_id = await run_one_task(server, alice, bob)
            yield Paid(server, chain, clock, worker, alice, task_id)
    finally:
        await worker.ctx.db.dispose()


async def test_a_payment_confirmed_after_the_stake_was_cached_is_not_spent_again(
    container: Container, database_url: str, tmp_path: Path
):
    async with one_task_run(database_url, tmp_path / "one") as run:
        server, alice, clock = run.server, run.alice, run.clock
        # The stake is cached (read when the task was created); the debit is unsettled.
        before = await server.balance(alice)
        assert before == {
            "stake": STAKED,
            "unsettled_debits": PRICE,
            "reserved": 0,
            "available": STAKED - PRICE,
        }

        await run_until_idle(run.worker)
        on_chain = await FakeChainClient(run.chain).stake_of(ALICE.address.lower())
        assert on_chain == STAKED - PRICE
        r = await server.http.get(f"{V1}/tasks/{run.task_id}/reward", headers=bearer(alice))
        assert r.json()["status"] == "paid"

        # Within the cache's TTL: the payment is no longer unsettled, yet must not come back.
        after = await server.balance(alice)
        assert after["available"] <= on_chain
        assert after["stake"] == on_chain  # the cached figure was read again
        r = await server.http.post(f"{V1}/tasks", json=TOO_BIG, headers=bearer(alice))
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "insufficient_funds"

        # Once the confirmation is older than the clock skew allowed, the figures are exact.
        clock.advance(2)
        assert await server.balance(alice) == {
            "stake": on_chain,
            "unsettled_debits": 0,
            "reserved": 0,
            "available": on_chain,
        }


async def test_replicas_with_their_own_caches_and_clocks_apart_never_over_report(
    container: Container, database_url: str, tmp_path: Path
):
    """Replica A serves the client; replica B settles with a clock half a second behind A's,
    so its ``settled_at`` reads earlier than A's cached read although it came after it."""
    chain = FakeChain(owner=OWNER.address)
    clock_a = start_clock()
    clock_b = FrozenClock(clock_a.now() - timedelta(seconds=0.5))

    def tick(seconds: float) -> None:
        clock_a.advance(seconds)
        clock_b.advance(seconds)

    worker = settlement_worker(database_url, chain, clock_b)
    async with (
        replica(database_url, tmp_path / "a", chain, clock_a) as a,
        replica(database_url, tmp_path / "b", chain, clock_b) as b,
    ):
        alice = await sign_in(a.http, ALICE)
        bob = await sign_in(a.http, BOB)
        await stake(chain, ALICE, STAKED)
        await run_one_task(a, alice, bob)
        clock_b.advance(12.5)
        tick(61)  # past the TTL: both replicas read the stake afresh, then cache it
        assert (await a.balance(alice))["available"] == STAKED - PRICE
        assert (await b.balance(alice))["available"] == STAKED - PRICE
        tick(0.2)
        await run_until_idle(worker)  # settled_at: 0.3 s before A's read, by A's clock
        on_chain = await FakeChainClient(chain).stake_of(ALICE.address.lower())
        assert on_chain == STAKED - PRICE
        for server in (a, b):
            assert (await server.balance(alice))["available"] <= on_chain
            r = await server.http.post(f"{V1}/tasks", json=TOO_BIG, headers=bearer(alice))
            assert r.status_code == 409, r.text
        tick(2)
        for server in (a, b):
            assert (await server.balance(alice))["available"] == on_chain
    await worker.ctx.db.dispose()


async def test_a_node_that_does_not_answer_keeps_the_cached_stake_and_the_debit(
    container: Container, database_url: str, tmp_path: Path
):
    async with one_task_run(database_url, tmp_path / "down") as run:
        assert (await run.server.balance(run.alice))["stake"] == STAKED
        await run_until_idle(run.worker)
        run.chain.unreachable = True  # the cached figure cannot be read again
        run.clock.advance(2)
        assert await run.server.balance(run.alice) == {
            "stake": STAKED,  # from before the payment, so the payment still counts
            "unsettled_debits": PRICE,
            "reserved": 0,
            "available": STAKED - PRICE,
        }

"""Reward pools (ledger/pools.py): one escrow reserved once, many small payments, the rest
released; on SQLite and PostgreSQL, with the in-memory chain behind the ChainClient port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import select

from parity.chain.fake import FakeChain, FakeChainClient
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.errors import Category
from parity.ledger import pools
from parity.ledger import service as ledger
from parity.ledger.deps import LedgerDeps
from parity.ledger.errors import InsufficientFunds, InsufficientStake
from parity.ledger.models import Entry, Posting, Reservation
from tests.conftest import ALICE, make_settings

PROTOCOL = "0x" + "fe" * 20
RUNNER = Account.from_key("0x" + "d1" * 32).address.lower()
RUNNER2 = Account.from_key("0x" + "d2" * 32).address.lower()
CLIENT = ALICE.address.lower()
CHAIN = {
    "FILECOIN_RPC": "http://chain.invalid",
    "FILECOIN_STAKE_WALLET_ADDRESS": "0x" + "5a" * 20,
    "STAKE_CACHE_SECONDS": "0",
}
PRICING = {
    "PRICE_TASK_BASE": "100",
    "PROTOCOL_FEE_BPS": "1000",
    "PROTOCOL_FEE_ADDRESS": PROTOCOL,
    **CHAIN,
}
POOL = {"source_type": "fl_session", "source_id": "5b0e7f3c-0000-4000-8000-000000000001"}
WHAT = "this federated-learning session's reward pool"


@dataclass
class Books:
    container: Container
    chain: FakeChain

    @property
    def deps(self) -> LedgerDeps:
        return self.container.ledger

    async def stake(self, account: Any, amount: int) -> None:
        """Mint, approve and addFunds under the account's address stake id."""
        client = FakeChainClient(self.chain)
        self.chain.mint(account.address, amount)
        await client.approve(account, amount)
        await client.add_funds(account, account.address.lower(), amount)

    async def reserve(self, amount: int, **key: str) -> Reservation | None:
        async with self.container.db.transaction() as s:
            return await pools.reserve_pool(
                s, self.deps, **(key or POOL), client=ALICE.address, amount=amount, what=WHAT
            )

    async def pay(
        self, payment: str, amount: int, payee: str = RUNNER, kind: str = "fl_reward"
    ) -> Posting | None:
        async with self.container.db.transaction() as s:
            return await pools.pay_from_pool(
                s,
                self.deps,
                **POOL,
                payment_source_id=payment,
                kind=kind,
                amount=amount,
                payee=payee,
                facts={"examples": 143},
            )

    async def release(self) -> int:
        async with self.container.db.transaction() as s:
            return await pools.release_pool(s, self.deps, **POOL)

    async def state(self) -> dict[str, Any] | None:
        async with self.container.db.read_session() as s:
            return await pools.pool_state(s, **POOL)

    async def balance(self, account: str = CLIENT) -> ledger.Balance:
        async with self.container.db.read_session() as s:
            return await ledger.balance(s, self.deps, account)

    async def rows(self, model: type[Any], **where: Any) -> list[Any]:
        async with self.container.db.read_session() as s:
            return list((await s.scalars(select(model).filter_by(**where))).all())

    async def legs(self, posting: Posting) -> dict[str, int]:
        """The posting's entries by account, checked to sum to zero."""
        entries = await self.rows(Entry, posting_id=posting.id)
        assert sum(e.amount for e in entries) == 0
        return {e.account: e.amount for e in entries}


async def _books(
    database_url: str, home: Path, clock: FrozenClock, **settings: str
) -> AsyncIterator[Books]:
    s = make_settings(database_url, home, **settings)
    c = Container(settings=s, db=Database(s.resolved_database_url), clock=clock)
    chain = FakeChain()
    c.chain = FakeChainClient(chain)
    yield Books(c, chain)
    await c.db.dispose()


@pytest.fixture
async def books(database_url: str, tmp_path: Path, clock: FrozenClock) -> AsyncIterator[Books]:
    async for b in _books(database_url, tmp_path / "priced", clock, **PRICING):
        yield b


def _available(b: ledger.Balance) -> tuple[int, int, int]:
    return b.reserved, b.unsettled_debits, b.available


async def test_a_pool_pays_rewards_and_releases_the_rest(books: Books) -> None:
    await books.stake(ALICE, 10_000)
    pool = await books.reserve(1_000)
    assert pool is not None and (pool.account, pool.status) == (CLIENT, "open")
    assert _available(await books.balance()) == (1_000, 0, 9_000)

    first = await books.pay("s:1:0", 300)
    assert first is not None
    assert await books.legs(first) == {CLIENT: -300, RUNNER: 270, PROTOCOL: 30}
    # The pool holds 300 less and the client owes 300: what it can spend is unchanged.
    assert _available(await books.balance()) == (700, 300, 9_000)

    second = await books.pay("s:1:1", 200, payee=RUNNER2)
    assert second is not None
    assert await books.legs(second) == {CLIENT: -200, RUNNER2: 180, PROTOCOL: 20}
    assert _available(await books.balance()) == (500, 500, 9_000)
    assert (await books.balance(RUNNER2)).pending_earnings == 180
    assert await books.state() == {
        "account": CLIENT,
        "status": "open",
        "reserved": 1_000,
        "paid": 500,
        "remaining": 500,
        "released": 0,
        "created_at": pool.created_at,
        "closed_at": None,
    }

    assert await books.release() == 500
    assert _available(await books.balance()) == (0, 500, 9_500)
    client_entries = await books.rows(Entry, account=CLIENT)
    assert sum(e.amount for e in client_entries) == -500
    state = await books.state()
    assert state is not None
    assert (state["status"], state["paid"], state["remaining"], state["released"]) == (
        "released",
        500,
        0,
        500,
    )
    assert await books.release() == 0  # a second release changes nothing
    assert await books.pay("s:2:0", 100) is None  # a closed pool pays nothing
    assert _available(await books.balance()) == (0, 500, 9_500)


async def test_pool_payments_read_as_the_pools_domain_in_the_ledger(books: Books) -> None:
    await books.stake(ALICE, 1_000)
    await books.reserve(600)
    await books.pay("s:3:2", 250)
    async with books.container.db.read_session() as s:
        [(entry, posting)] = await ledger.list_entries(s, RUNNER, 10, None)
    assert (posting.source_type, posting.source_id, posting.kind) == (
        "fl_session",
        "s:3:2",
        "fl_reward",
    )
    assert entry.amount == 225 and entry.counterparty == CLIENT
    assert posting.facts["examples"] == 143
    assert posting.facts["pool"] == POOL
    assert (posting.facts["amount"], posting.facts["remaining"]) == ("250", "350")
    [reservation] = await books.rows(Reservation, **POOL)
    assert reservation.price == {"pool": "600", "paid": "250"}


async def test_a_repeated_payment_posts_once(books: Books) -> None:
    await books.stake(ALICE, 5_000)
    await books.reserve(1_000)
    assert await books.pay("s:1:0", 300) is not None
    assert await books.pay("s:1:0", 300) is None
    assert await books.pay("s:1:0", 50) is None
    assert len(await books.rows(Posting, source_id="s:1:0")) == 1
    state = await books.state()
    assert state is not None and (state["paid"], state["remaining"]) == (300, 700)
    assert _available(await books.balance()) == (700, 300, 4_000)


async def test_a_payment_is_capped_at_what_the_pool_still_holds(books: Books) -> None:
    await books.stake(ALICE, 5_000)
    await books.reserve(1_000)
    await books.pay("s:1:0", 700)
    capped = await books.pay("s:1:1", 500)
    assert capped is not None
    assert await books.legs(capped) == {CLIENT: -300, RUNNER: 270, PROTOCOL: 30}
    assert capped.facts["requested"] == "500" and capped.facts["amount"] == "300"
    [reservation] = await books.rows(Reservation, **POOL)
    assert (reservation.status, reservation.amount) == ("consumed", 0)
    assert reservation.closed_at is not None
    assert await books.pay("s:1:2", 1) is None
    assert await books.release() == 0
    assert _available(await books.balance()) == (0, 1_000, 4_000)


async def test_a_payment_of_nothing_writes_nothing(books: Books) -> None:
    await books.stake(ALICE, 5_000)
    await books.reserve(1_000)
    assert await books.pay("s:1:0", 0) is None
    assert await books.pay("s:1:1", -5) is None
    assert await books.rows(Posting) == []
    state = await books.state()
    assert state is not None and (state["status"], state["remaining"]) == ("open", 1_000)


async def test_a_pool_that_does_not_fit_is_refused_naming_the_amounts(books: Books) -> None:
    await books.stake(ALICE, 500)
    with pytest.raises(InsufficientFunds) as caught:
        await books.reserve(800)
    err = caught.value
    assert (err.category, err.code) == (Category.CONFLICT, "insufficient_funds")
    assert err.details == {"required": "800", "available": "500", "missing": "300"}
    assert WHAT in err.message and "(800 base units)" in err.message
    assert "(300 base units) missing" in err.message
    assert await books.rows(Reservation) == []
    assert await books.state() is None


async def test_pools_held_elsewhere_count_against_a_new_pool(books: Books) -> None:
    await books.stake(ALICE, 1_000)
    assert await books.reserve(700, source_type="fl_session", source_id="other") is not None
    with pytest.raises(InsufficientFunds) as caught:
        await books.reserve(400)
    assert caught.value.details["available"] == "300"


async def test_reserving_a_pool_again_holds_it_once(books: Books) -> None:
    await books.stake(ALICE, 5_000)
    first = await books.reserve(1_000)
    again = await books.reserve(1_000)
    assert first is not None and again is not None and again.id == first.id
    assert len(await books.rows(Reservation)) == 1
    assert _available(await books.balance()) == (1_000, 0, 4_000)


async def test_pools_are_free_when_pricing_is_off(
    database_url: str, tmp_path: Path, clock: FrozenClock
) -> None:
    async for books in _books(database_url, tmp_path / "free", clock, **CHAIN):
        await books.stake(ALICE, 5_000)
        assert not books.deps.pricing_enabled
        assert await books.reserve(1_000) is None
        assert await books.pay("s:1:0", 300) is None
        assert await books.release() == 0
        assert await books.state() is None
        for model in (Reservation, Posting, Entry):
            assert await books.rows(model) == []
        assert _available(await books.balance()) == (0, 0, 5_000)


async def test_a_zero_pool_reserves_nothing(books: Books) -> None:
    await books.stake(ALICE, 5_000)
    assert await books.reserve(0) is None
    assert await books.rows(Reservation) == []


async def test_min_stake_gates_reserving_a_pool(
    database_url: str, tmp_path: Path, clock: FrozenClock
) -> None:
    async for books in _books(database_url, tmp_path / "gated", clock, MIN_STAKE="1000", **PRICING):
        await books.stake(ALICE, 400)
        with pytest.raises(InsufficientStake) as caught:
            await books.reserve(100)
        err = caught.value
        assert (err.category, err.details["missing"]) == (Category.FORBIDDEN, "600")
        assert await books.rows(Reservation) == []
        await books.stake(ALICE, 600)
        assert await books.reserve(100) is not None


async def test_concurrent_payments_never_pay_more_than_the_pool(books: Books) -> None:
    # Meaningful on PostgreSQL, where each payment waits on the pool's row lock; SQLite
    # serializes every write anyway.
    await books.stake(ALICE, 10_000)
    await books.reserve(1_000)
    paid = await asyncio.gather(*(books.pay(f"s:1:{i}", 300) for i in range(6)))
    amounts = sorted(int(p.facts["amount"]) for p in paid if p is not None)
    assert amounts == [100, 300, 300, 300]
    [reservation] = await books.rows(Reservation, **POOL)
    assert (reservation.status, reservation.amount, reservation.price["paid"]) == (
        "consumed",
        0,
        "1000",
    )
    client_entries = await books.rows(Entry, account=CLIENT)
    assert sum(e.amount for e in client_entries) == -1_000
    assert _available(await books.balance()) == (0, 1_000, 9_000)


async def test_keys_longer_than_the_ledger_columns_are_refused(books: Books) -> None:
    await books.stake(ALICE, 5_000)
    await books.reserve(1_000)
    with pytest.raises(ValueError, match="source_id"):
        await books.pay("x" * 65, 10)
    assert await books.rows(Posting) == []

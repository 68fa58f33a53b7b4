"""Shared pieces of the settlement tests (fake chain and anvil): postings written as rows, a
crash hook, passes until the worker is idle, the exactly-once checks, and the fake-chain world
(a database, the in-memory chain with the payer staked, a worker factory, the alerts)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from sqlalchemy import select

from parity.chain.fake import FakeChain, FakeChainClient
from parity.clock import Clock, FrozenClock
from parity.db.session import Database
from parity.ledger.models import Entry, Posting, Settlement, SettlementTx
from parity.ledger.settlement import PassReport, SettlementConfig, SettlementWorker

OWNER = Account.from_key("0x" + "a1" * 32)  # the settlement signer
CLIENT = Account.from_key("0x" + "c1" * 32)
RUNNER = Account.from_key("0x" + "d1" * 32).address.lower()
PAYER = CLIENT.address.lower()


@dataclass
class World:
    db: Database
    clock: FrozenClock
    chain: FakeChain
    client: FakeChainClient
    alerts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def worker(self, hook: Any = None, **config: Any) -> SettlementWorker:
        cfg = SettlementConfig(**{"confirmations": 1, **config})
        return SettlementWorker(
            self.db,
            self.client,
            OWNER,
            self.clock,
            cfg,
            hook=hook,
            alert=lambda kind, data: self.alerts.append((kind, data)),
        )

    async def stake(self, who: LocalAccount, amount: int) -> None:
        self.chain.mint(who.address, amount)
        await self.client.approve(who, amount)
        await self.client.add_funds(who, who.address.lower(), amount)

    async def stake_of(self, account: str) -> int:
        return await self.client.stake_of(account)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.alerts]


@pytest.fixture
async def world(database_url: str, clock: FrozenClock) -> AsyncIterator[World]:
    """The settlement signer OWNER's worker on the in-memory chain; CLIENT staked 1000."""
    db = Database(database_url)
    chain = FakeChain(owner=OWNER.address)
    w = World(db, clock, chain, FakeChainClient(chain))
    await w.stake(CLIENT, 1000)
    yield w
    await db.dispose()


class Crash(Exception):
    """What the hook raises: the worker process dying at that point."""


@dataclass
class CrashAt:
    """A hook that raises at ``point`` the first ``times`` times it is reached."""

    point: str
    times: int = 1
    seen: list[str] = field(default_factory=list)

    def __call__(self, point: str, settlement_id: uuid.UUID) -> None:
        self.seen.append(point)
        if point == self.point and self.times > 0:
            self.times -= 1
            raise Crash(point)


async def post(
    db: Database,
    clock: Clock,
    payer: str,
    payee: str,
    amount: int,
    *,
    fee: int = 0,
    protocol: str | None = None,
) -> uuid.UUID:
    """A balanced posting: payer -amount, payee +(amount - fee), protocol +fee."""
    now = clock.now()
    posting = Posting(
        id=uuid.uuid4(),
        source_type="task",
        source_id=str(uuid.uuid4()),
        kind="task",
        facts={},
        created_at=now,
    )
    legs: list[tuple[str, str, int, str | None]] = [
        (payer, "payer", -amount, None),
        (payee, "payee", amount - fee, payer),
    ]
    if fee:
        assert protocol is not None
        legs.append((protocol, "protocol", fee, payer))
    assert sum(a for _, _, a, _ in legs) == 0
    async with db.transaction() as s:
        s.add(posting)
        await s.flush()
        for account, role, amount_, counterparty in legs:
            s.add(
                Entry(
                    id=uuid.uuid4(),
                    posting_id=posting.id,
                    account=account,
                    role=role,
                    amount=amount_,
                    counterparty=counterparty,
                    settlement_id=None,
                    settled_at=None,
                    created_at=now,
                )
            )
    return posting.id


async def run_until_idle(worker: SettlementWorker, max_passes: int = 20) -> list[PassReport]:
    reports = []
    for _ in range(max_passes):
        report = await worker.run_once()
        reports.append(report)
        if not report.counts():
            return reports
    raise AssertionError(f"the worker never went idle: {[r.counts() for r in reports]}")


async def entries(db: Database) -> Sequence[Entry]:
    async with db.read_session() as s:
        return (await s.scalars(select(Entry).order_by(Entry.created_at, Entry.id))).all()


async def settlements(db: Database) -> Sequence[Settlement]:
    async with db.read_session() as s:
        return (await s.scalars(select(Settlement).order_by(Settlement.created_at))).all()


async def transactions(db: Database, settlement_id: uuid.UUID) -> Sequence[SettlementTx]:
    async with db.read_session() as s:
        q = select(SettlementTx).where(SettlementTx.settlement_id == settlement_id)
        return (await s.scalars(q.order_by(SettlementTx.created_at))).all()


async def assert_all_settled(db: Database) -> None:
    """Every entry is settled, through a confirmed settlement for credits."""
    confirmed = {s.id for s in await settlements(db) if s.status == "confirmed"}
    for e in await entries(db):
        assert e.settled_at is not None, e
        if e.role != "payer":
            assert e.settlement_id in confirmed, e

"""Shared pieces of the settlement tests (fake chain and anvil): postings written as rows, a
crash hook, passes until the worker is idle, and the exactly-once checks."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select

from parity.clock import Clock
from parity.db.session import Database
from parity.ledger.models import Entry, Posting, Settlement, SettlementTx
from parity.ledger.settlement import PassReport, SettlementWorker


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

"""The settlement worker's state machine against the fake chain, on SQLite and PostgreSQL:
intents, nonces, crash points, mempool holds, fee bumps, drops, reorgs and reverted receipts
each end with every credit paid exactly once."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import select

from parity.chain import keystore
from parity.chain.fake import FakeChain, FakeChainClient
from parity.chain.ports import Call, Fees
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.errors import ConfigError
from parity.events.hub import EventHub
from parity.events.models import Event
from parity.events.service import EventDeps
from parity.ledger.models import SignerNonce
from parity.ledger.settlement import (
    HOOK_POINTS,
    SettlementConfig,
    SettlementWorker,
    bumped_fees,
    payment_ref,
)
from parity.ledger.signer import load_settlement_signer
from tests.conftest import make_settings, until
from tests.settlement_support import (
    CLIENT,
    OWNER,
    PAYER,
    RUNNER,
    Crash,
    CrashAt,
    World,
    assert_all_settled,
    entries,
    post,
    run_until_idle,
    settlements,
    transactions,
    world,
)

RUNNER2 = Account.from_key("0x" + "d2" * 32).address.lower()
PROTOCOL = Account.from_key("0x" + "e1" * 32).address.lower()


__all__ = ["world"]  # a fixture, used by name


async def test_credits_are_paid_once_and_confirmed_at_depth(world: World):
    p1 = await post(world.db, world.clock, PAYER, RUNNER, 100, fee=10, protocol=PROTOCOL)
    await post(world.db, world.clock, PAYER, RUNNER, 50)
    worker = world.worker(confirmations=3)
    report = await worker.run_once()
    assert (report.intents, report.signed, report.broadcast, report.mined) == (2, 2, 2, 2)
    assert report.confirmed == 0  # mined, one block deep of three
    assert await world.stake_of(RUNNER) == 140 and await world.stake_of(PROTOCOL) == 10
    assert await world.stake_of(PAYER) == 850
    assert all(e.settled_at is None for e in await entries(world.db))
    world.chain.advance(2)
    report = await worker.run_once()
    assert report.confirmed == 2
    await assert_all_settled(world.db)
    rows = await settlements(world.db)
    by_payee = {s.payee: s for s in rows}
    assert by_payee[RUNNER].amount == 140 and by_payee[PROTOCOL].amount == 10
    for s in rows:
        assert await world.client.ref_used(bytes.fromhex(s.ref[2:]))
        assert s.ref == payment_ref(s.id) and s.block_hash is not None
    debit = [e for e in await entries(world.db) if e.posting_id == p1 and e.role == "payer"]
    assert debit[0].settled_at is not None


async def test_a_debit_is_settled_only_when_every_credit_of_its_posting_is(world: World):
    posting = await post(world.db, world.clock, PAYER, RUNNER, 100, fee=10, protocol=PROTOCOL)
    # The protocol's credit is paid first, alone.
    await world.worker(batch_entries=1).run_once()
    for e in await entries(world.db):
        if e.posting_id == posting:
            assert e.settled_at is not None
    assert (await world.stake_of(RUNNER), await world.stake_of(PROTOCOL)) == (90, 10)


async def test_intents_hold_at_most_the_batch_size(world: World):
    for _ in range(5):
        await post(world.db, world.clock, PAYER, RUNNER, 10)
    await run_until_idle(world.worker(batch_entries=2))
    assert sorted(s.amount for s in await settlements(world.db)) == [10, 20, 20]
    assert await world.stake_of(RUNNER) == 50
    await assert_all_settled(world.db)


async def test_a_payment_to_oneself_is_settled_without_a_transaction(world: World):
    await post(world.db, world.clock, PAYER, PAYER, 40)
    await run_until_idle(world.worker())
    [s] = await settlements(world.db)
    assert s.status == "confirmed" and s.tx_hash is None and s.nonce is None
    assert await transactions(world.db, s.id) == []
    assert await world.stake_of(PAYER) == 1000
    await assert_all_settled(world.db)


async def test_a_short_stake_keeps_the_intent_pending_with_a_backoff(world: World):
    await post(world.db, world.clock, PAYER, RUNNER, 5000)
    worker = world.worker(retry_base_seconds=30)
    report = await worker.run_once()
    assert report.deferred == 1 and report.signed == 0
    [s] = await settlements(world.db)
    assert (s.status, s.tries) == ("pending", 1) and "stake short" in (s.last_error or "")
    assert [k for k, _ in world.alerts] == ["settlement_refused"]
    # No busy loop: nothing is tried again before the back-off passes.
    assert not (await worker.run_once()).counts()
    assert (await settlements(world.db))[0].tries == 1
    await world.stake(CLIENT, 4000)
    world.clock.advance(31)
    await run_until_idle(worker)
    assert await world.stake_of(RUNNER) == 5000
    [s] = await settlements(world.db)
    assert (s.status, s.last_error) == ("confirmed", None)


async def test_a_call_the_contract_refuses_at_estimation_is_never_signed(world: World):
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    stranger = Account.from_key("0x" + "f1" * 32)  # not the StakeWallet's owner
    worker = SettlementWorker(world.db, world.client, stranger, world.clock, SettlementConfig())
    report = await worker.run_once()
    assert report.deferred == 1
    [s] = await settlements(world.db)
    assert s.status == "pending" and "OwnableUnauthorizedAccount" in (s.last_error or "")
    assert await transactions(world.db, s.id) == []


@pytest.mark.parametrize("point", HOOK_POINTS)
async def test_a_crash_at_any_point_ends_with_each_entry_paid_once(world: World, point: str):
    await post(world.db, world.clock, PAYER, RUNNER, 100, fee=10, protocol=PROTOCOL)
    await post(world.db, world.clock, PAYER, RUNNER2, 70)
    with pytest.raises(Crash):
        await world.worker(hook=CrashAt(point)).run_once()
    await run_until_idle(world.worker())  # the restarted process
    await assert_all_settled(world.db)
    assert (await world.stake_of(RUNNER), await world.stake_of(RUNNER2)) == (90, 70)
    assert await world.stake_of(PROTOCOL) == 10 and await world.stake_of(PAYER) == 830
    for s in await settlements(world.db):
        mined = [t for t in await transactions(world.db, s.id) if t.tx_hash in world.chain.receipts]
        assert len(mined) == 1 and mined[0].tx_hash == s.tx_hash


async def test_a_crash_while_signing_rolls_back_the_nonce(world: World):
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    with pytest.raises(Crash):
        await world.worker(hook=CrashAt("after_sign_before_record")).run_once()
    [s] = await settlements(world.db)
    assert s.status == "pending" and await transactions(world.db, s.id) == []
    async with world.db.read_session() as session:
        assert await session.get(SignerNonce, OWNER.address.lower()) is None
    await run_until_idle(world.worker())
    [s] = await settlements(world.db)
    assert s.nonce == 0 and s.status == "confirmed"


async def test_nonces_come_from_the_database_and_follow_the_chain_when_it_is_ahead(world: World):
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    await run_until_idle(world.worker())
    # The owner's key sends something outside the worker: the chain's count moves ahead.
    await world.client.transact(OWNER, Call("token", "mint", (OWNER.address, 1)))
    await post(world.db, world.clock, PAYER, RUNNER, 20)
    await run_until_idle(world.worker())
    nonces = sorted(s.nonce or 0 for s in await settlements(world.db))
    assert nonces == [0, 2]
    async with world.db.read_session() as session:
        row = await session.get(SignerNonce, OWNER.address.lower())
        assert row is not None and row.next_nonce == 3


async def test_a_held_transaction_gets_a_same_nonce_fee_bump(world: World):
    world.chain.automine = False
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    worker = world.worker(fee_bump_seconds=60, fee_bump_percent=15)
    await run_until_idle(worker)
    [s] = await settlements(world.db)
    assert s.status == "broadcast"
    world.clock.advance(30)
    assert (await worker.run_once()).bumped == 0
    world.clock.advance(31)
    assert (await worker.run_once()).bumped == 1
    first, bump = await transactions(world.db, s.id)
    assert bump.nonce == first.nonce
    assert bump.max_fee_per_gas * 100 >= first.max_fee_per_gas * 115
    assert bump.max_priority_fee_per_gas * 100 >= first.max_priority_fee_per_gas * 115
    world.chain.mine()
    await run_until_idle(worker)
    [s] = await settlements(world.db)
    assert s.status == "confirmed" and s.tx_hash == bump.tx_hash
    assert await world.stake_of(RUNNER) == 10


async def test_a_fee_bump_never_goes_above_the_ceiling(world: World):
    world.chain.automine = False
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    first_fees = (await world.client.suggest_fees()).max_fee_per_gas
    worker = world.worker(fee_bump_seconds=60, fee_bump_percent=15, max_fee_per_gas=first_fees)
    await run_until_idle(worker)
    world.clock.advance(61)
    assert (await worker.run_once()).bumped == 0  # the bump would pass the ceiling
    [s] = await settlements(world.db)
    assert len(await transactions(world.db, s.id)) == 1
    world.chain.mine()
    await run_until_idle(worker)
    [s] = await settlements(world.db)
    assert s.status == "confirmed"
    assert await world.stake_of(RUNNER) == 10


async def test_a_dropped_transaction_is_rebroadcast_from_its_stored_raw(world: World):
    world.chain.automine = False
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    worker = world.worker()
    await run_until_idle(worker)
    [s] = await settlements(world.db)
    assert s.tx_hash is not None
    world.chain.drop(s.tx_hash)
    assert (await worker.run_once()).rebroadcast == 1
    world.chain.mine()
    await run_until_idle(worker)
    [s2] = await settlements(world.db)
    assert s2.status == "confirmed" and s2.tx_hash == s.tx_hash
    assert len(await transactions(world.db, s.id)) == 1
    assert await world.stake_of(RUNNER) == 10


async def test_a_restart_rebroadcasts_what_is_not_mined(world: World):
    world.chain.automine = False
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    await run_until_idle(world.worker())
    world.chain.pending.clear()  # the node restarted with an empty mempool
    world.chain.txs.clear()
    assert (await world.worker().run_once()).rebroadcast == 1
    world.chain.mine()
    await run_until_idle(world.worker())
    await assert_all_settled(world.db)
    assert await world.stake_of(RUNNER) == 10


async def test_a_reorg_before_depth_sends_the_same_transaction_again(world: World):
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    worker = world.worker(confirmations=3)
    await worker.run_once()
    [s] = await settlements(world.db)
    assert s.status == "mined"
    world.chain.reorg(1)
    assert await world.stake_of(RUNNER) == 0
    report = await worker.run_once()
    assert report.reorged == 1
    world.chain.advance(3)
    await run_until_idle(worker)
    [s2] = await settlements(world.db)
    assert s2.status == "confirmed" and s2.tx_hash == s.tx_hash
    assert s2.block_hash != s.block_hash
    assert await world.stake_of(RUNNER) == 10 and await world.stake_of(PAYER) == 990


async def test_a_reverted_receipt_unsettles_the_entries_and_they_are_paid_later(world: World):
    await post(world.db, world.clock, PAYER, RUNNER, 600)
    with pytest.raises(Crash):  # signed and stored, not yet sent
        await world.worker(hook=CrashAt("after_sign")).run_once()
    await world.client.withdraw(CLIENT, PAYER, 900)  # the stake is short when it is mined
    await run_until_idle(world.worker(retry_base_seconds=10))
    first = (await settlements(world.db))[0]
    assert first.status == "reverted" and "reverted" in (first.last_error or "")
    assert "settlement_reverted" in [k for k, _ in world.alerts]
    assert await world.stake_of(RUNNER) == 0
    [credit] = [e for e in await entries(world.db) if e.role == "payee"]
    assert credit.settled_at is None and credit.settlement_id != first.id
    await world.stake(CLIENT, 1000)
    world.clock.advance(3600)
    await run_until_idle(world.worker())
    await assert_all_settled(world.db)
    assert await world.stake_of(RUNNER) == 600
    assert [s.status for s in await settlements(world.db)].count("confirmed") == 1


async def test_without_payment_refs_the_worker_uses_transfer_payment(world: World):
    world.chain.payment_ref = False
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    await run_until_idle(world.worker())
    await assert_all_settled(world.db)
    assert await world.stake_of(RUNNER) == 10


async def test_an_unreachable_node_ends_the_pass_without_changing_state(world: World):
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    worker = world.worker()
    world.chain.unreachable = True
    report = await worker.run_once()
    assert report.unavailable and report.intents == 1
    [s] = await settlements(world.db)
    assert (s.status, s.tries) == ("pending", 0)
    world.chain.unreachable = False
    await run_until_idle(worker)
    await assert_all_settled(world.db)


def test_fee_bumps_raise_both_caps_by_the_percentage_and_follow_the_node():
    assert bumped_fees(Fees(200, 10), Fees(100, 1), 15) == Fees(230, 12)
    assert bumped_fees(Fees(200, 0), Fees(100, 0), 10) == Fees(220, 1)
    assert bumped_fees(Fees(200, 10), Fees(500, 50), 15) == Fees(500, 50)


@pytest.mark.postgres_only
async def test_a_second_worker_skips_while_one_holds_the_lock(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    gate = asyncio.Event()
    release = asyncio.Event()

    def hook(point: str, _: uuid.UUID) -> None:
        if point == "after_intent":
            gate.set()

    first = world.worker(hook=hook)
    from parity.ledger.settlement.signing import sign_pending

    async def slow_sign(ctx: Any, report: Any) -> None:
        await release.wait()
        await sign_pending(ctx, report)

    monkeypatch.setattr("parity.ledger.settlement.worker.sign_pending", slow_sign)
    running = asyncio.create_task(first.run_once())
    await asyncio.wait_for(gate.wait(), 5)
    assert (await world.worker().run_once()).skipped
    release.set()
    await running
    await run_until_idle(world.worker())
    await assert_all_settled(world.db)
    assert await world.stake_of(RUNNER) == 10


# -- the signer --------------------------------------------------------------------------------


def test_the_signer_comes_from_a_private_key(tmp_path: Path):
    settings = make_settings("sqlite+aiosqlite:///x.db", tmp_path, settlement_private_key="a1" * 32)
    signer = load_settlement_signer(settings)
    assert signer is not None and signer.address == OWNER.address


def test_the_signer_comes_from_a_keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(keystore, "SCRYPT_N", 2**10)
    path = tmp_path / "owner.json"
    keystore.create_keystore(path, "pw", "0x" + "a1" * 32)
    settings = make_settings(
        "sqlite+aiosqlite:///x.db",
        tmp_path,
        settlement_keystore_path=path,
        settlement_keystore_password="pw",
    )
    signer = load_settlement_signer(settings)
    assert signer is not None and signer.address == OWNER.address
    wrong = make_settings(
        "sqlite+aiosqlite:///x.db",
        tmp_path,
        settlement_keystore_path=path,
        settlement_keystore_password="nope",
    )
    with pytest.raises(ConfigError, match="SETTLEMENT_KEYSTORE_PATH: wrong password"):
        load_settlement_signer(wrong)


def test_a_bad_or_doubled_signer_setting_is_refused(tmp_path: Path):
    bad = make_settings("sqlite+aiosqlite:///x.db", tmp_path, settlement_private_key="zz")
    with pytest.raises(ConfigError, match="SETTLEMENT_PRIVATE_KEY: invalid private key"):
        load_settlement_signer(bad)
    both = make_settings(
        "sqlite+aiosqlite:///x.db",
        tmp_path,
        settlement_private_key="a1" * 32,
        settlement_keystore_path=tmp_path / "k.json",
    )
    with pytest.raises(ConfigError, match="not both"):
        load_settlement_signer(both)
    assert load_settlement_signer(make_settings("sqlite+aiosqlite:///x.db", tmp_path)) is None


async def test_the_server_runs_the_worker_when_a_chain_and_a_signer_are_configured(
    database_url: str, tmp_path: Path, clock: FrozenClock
):
    from parity.app import create_app

    settings = make_settings(database_url, tmp_path / "home", settlement_private_key="a1" * 32)
    container = Container(settings=settings, db=Database(database_url), clock=clock)
    container.chain = FakeChainClient(FakeChain(owner=OWNER.address))
    app = create_app(container, run_migrations=False)
    async with app.router.lifespan_context(app):
        worker = container.settlement
        assert isinstance(worker, SettlementWorker) and worker.address == OWNER.address.lower()
    plain = Container(
        settings=make_settings(database_url, tmp_path / "h2"), db=Database(database_url)
    )
    plain.chain = FakeChainClient()
    app2 = create_app(plain, run_migrations=False)
    async with app2.router.lifespan_context(app2):
        assert plain.settlement is None


async def test_a_crash_while_bumping_stores_and_sends_nothing(world: World):
    world.chain.automine = False
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    await run_until_idle(world.worker(fee_bump_seconds=60))
    [s] = await settlements(world.db)
    world.clock.advance(61)
    with pytest.raises(Crash):
        await world.worker(fee_bump_seconds=60, hook=CrashAt("after_sign_before_record")).run_once()
    assert len(await transactions(world.db, s.id)) == 1
    assert world.chain.pending[(OWNER.address.lower(), 0)].tx_hash == s.tx_hash
    worker = world.worker(fee_bump_seconds=60)
    await run_until_idle(worker)
    world.clock.advance(61)
    assert (await worker.run_once()).bumped == 1
    world.chain.mine()
    await run_until_idle(worker)
    await assert_all_settled(world.db)
    assert await world.stake_of(RUNNER) == 10


async def test_a_nonce_taken_by_a_foreign_transaction_fails_the_settlement_with_an_alert(
    world: World,
):
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    with pytest.raises(Crash):
        await world.worker(hook=CrashAt("after_sign")).run_once()
    # Someone sends with the owner's key outside the worker, using the same nonce.
    await world.client.transact(OWNER, Call("token", "mint", (OWNER.address, 1)))
    await run_until_idle(world.worker())
    [s] = await settlements(world.db)
    assert s.status == "failed" and "did not sign" in (s.last_error or "")
    assert "settlement_nonce_taken" in [k for k, _ in world.alerts]
    assert await world.stake_of(RUNNER) == 0
    [credit] = [e for e in await entries(world.db) if e.role == "payee"]
    assert credit.settlement_id == s.id  # held for an operator, never paid twice


async def test_the_loop_settles_in_the_background_and_stops(world: World):
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    worker = world.worker(interval_seconds=0.01)
    worker.start()

    async def paid() -> bool:
        return await world.stake_of(RUNNER) == 10

    await until(paid)
    await worker.stop(timeout=5)
    await assert_all_settled(world.db)


async def test_a_signer_that_does_not_own_the_stake_wallet_is_alerted_at_once(world: World):
    worker = SettlementWorker(
        world.db,
        world.client,
        CLIENT,
        world.clock,
        SettlementConfig(confirmations=1),
        alert=lambda kind, data: world.alerts.append((kind, data)),
    )
    await worker.run_once()
    assert [kind for kind, _ in world.alerts] == ["settlement_signer_not_owner"]
    assert world.alerts[0][1]["owner"] == world.chain.owner


async def test_the_payee_and_the_payer_hear_of_a_settled_payment(world: World):
    await post(world.db, world.clock, PAYER, RUNNER, 100)
    deps = EventDeps(
        clock=world.clock,
        random_bytes=os.urandom,
        hub=EventHub(),
        admins=frozenset(),
        allow_private_webhooks=True,
        visibility_lag_seconds=0,
    )
    worker = SettlementWorker(
        world.db, world.client, OWNER, world.clock, SettlementConfig(confirmations=1), events=deps
    )
    await run_until_idle(worker)
    [s] = await settlements(world.db)
    async with world.db.read_session() as session:
        rows = (await session.scalars(select(Event).where(Event.type == "payment.settled"))).all()
    assert sorted(e.owner_address for e in rows) == sorted([PAYER, RUNNER])
    assert {e.data["amount"] for e in rows} == {"100"}
    assert {e.data["tx_hash"] for e in rows} == {s.tx_hash}


async def test_a_transaction_behind_nonces_the_chain_lost_is_alerted_once_and_not_bumped(
    world: World,
):
    # The database says nonces 0..4 were used (on a chain since reset, e.g. a restarted
    # dev-chain): the node holds nonce 5 behind a gap nothing fills.
    async with world.db.transaction() as s:
        s.add(
            SignerNonce(address=OWNER.address.lower(), next_nonce=5, updated_at=world.clock.now())
        )
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    worker = world.worker(fee_bump_seconds=60)
    await worker.run_once()
    world.clock.advance(61)
    assert (await worker.run_once()).bumped == 0
    await worker.run_once()
    [s] = await settlements(world.db)
    assert s.status == "broadcast" and s.nonce == 5
    assert (
        s.last_error is not None and "the chain's next nonce for that address is 0" in s.last_error
    )
    assert [kind for kind, _ in world.alerts] == ["settlement_nonce_gap"]
    assert len(await transactions(world.db, s.id)) == 1
    assert await world.stake_of(RUNNER) == 0

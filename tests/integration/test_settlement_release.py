"""An operator releases a ``failed`` settlement (its nonce was taken by a transaction this server
did not sign) through the API, and the worker pays its entries again, once, under a new nonce;
on SQLite and PostgreSQL, with the fake chain behind the port."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from parity.app import create_app
from parity.chain.fake import FakeChain, FakeChainClient
from parity.chain.ports import Call, Receipt
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.ledger.settlement import SettlementConfig, SettlementWorker
from tests.conftest import ADMIN, ALICE, BOB, bearer, make_settings, sign_in
from tests.integration.queue_helpers import claimed, create_task, device, register_runner
from tests.settlement_support import (
    Crash,
    CrashAt,
    assert_all_settled,
    entries,
    post,
    run_until_idle,
    settlements,
)

V1 = "/api/v1"
OWNER = Account.from_key("0x" + "a1" * 32)
PAYER = ALICE.address.lower()
RUNNER = BOB.address.lower()
PROTOCOL = "0x" + "fe" * 20
SETTINGS = {
    "FILECOIN_RPC": "http://chain.invalid",
    "FILECOIN_STAKE_WALLET_ADDRESS": "0x" + "5a" * 20,
    "STAKE_CACHE_SECONDS": "0",
    "PRICE_TASK_BASE": "100",
    "PRICE_CPU_CORE_SECOND": "10",
    "PROTOCOL_FEE_BPS": "1000",
    "PROTOCOL_FEE_ADDRESS": PROTOCOL,
}


@dataclass
class Ops:
    http: httpx.AsyncClient
    db: Database
    clock: FrozenClock
    chain: FakeChain
    client: FakeChainClient
    alerts: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)

    def worker(self, hook: Any = None) -> SettlementWorker:
        return SettlementWorker(
            self.db,
            self.client,
            OWNER,
            self.clock,
            SettlementConfig(confirmations=1),
            hook=hook,
            alert=lambda kind, _: self.alerts.append(kind),
        )

    async def stake(self, who: LocalAccount, amount: int) -> None:
        self.chain.mint(who.address, amount)
        await self.client.approve(who, amount)
        await self.client.add_funds(who, who.address.lower(), amount)

    async def token(self, who: LocalAccount) -> str:
        if who.address not in self.tokens:
            self.tokens[who.address] = await sign_in(self.http, who)
        return self.tokens[who.address]

    async def release(self, settlement_id: Any, who: LocalAccount = ADMIN) -> httpx.Response:
        path = f"{V1}/ledger/settlements/{settlement_id}/release"
        return await self.http.post(path, headers=bearer(await self.token(who)))

    async def failed_settlement(self, amount: int = 10) -> uuid.UUID:
        """A payment whose nonce a foreign transaction took between signing and broadcast."""
        await post(self.db, self.clock, PAYER, RUNNER, amount)
        with pytest.raises(Crash):
            await self.worker(hook=CrashAt("after_sign")).run_once()
        # Someone sends with the owner's key outside the worker, using the same nonce.
        await self.client.transact(OWNER, Call("token", "mint", (OWNER.address, 1)))
        await run_until_idle(self.worker())
        [failed] = [s for s in await settlements(self.db) if s.status == "failed"]
        return failed.id


@pytest.fixture
async def ops(database_url: str, tmp_path: Path, clock: FrozenClock) -> AsyncIterator[Ops]:
    settings = make_settings(database_url, tmp_path / "home", **SETTINGS)
    c = Container(settings=settings, db=Database(settings.resolved_database_url), clock=clock)
    chain = FakeChain(owner=OWNER.address)
    c.chain = client = FakeChainClient(chain)
    app = create_app(c, run_migrations=False, start_jobs=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://parity.test") as http,
    ):
        o = Ops(http, c.db, clock, chain, client)
        await o.stake(ALICE, 10_000)
        yield o
    await c.db.dispose()


async def test_a_released_settlement_is_paid_once_by_a_new_one_with_a_new_nonce(ops: Ops):
    failed_id = await ops.failed_settlement(10)
    assert "settlement_nonce_taken" in ops.alerts
    assert await ops.client.stake_of(RUNNER) == 0

    r = await ops.release(failed_id)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == str(failed_id) and body["status"] == "released"
    assert body["released_by"] == ADMIN.address.lower()
    assert body["released_at"] is not None and "did not sign" in body["last_error"]
    [credit] = [e for e in await entries(ops.db) if e.role == "payee"]
    assert credit.settlement_id is None and credit.settled_at is None

    await run_until_idle(ops.worker())
    await assert_all_settled(ops.db)
    assert await ops.client.stake_of(RUNNER) == 10  # paid exactly once
    assert await ops.client.stake_of(PAYER) == 9_990
    released, paid = await settlements(ops.db)
    assert (released.id, released.status) == (failed_id, "released")
    assert paid.status == "confirmed" and paid.ref != released.ref
    assert paid.nonce is not None and released.nonce is not None and paid.nonce > released.nonce
    [credit] = [e for e in await entries(ops.db) if e.role == "payee"]
    assert credit.settlement_id == paid.id
    # The worker never picks a released settlement up again.
    assert not (await ops.worker().run_once()).counts()
    assert await ops.client.stake_of(RUNNER) == 10


async def test_releasing_a_released_settlement_again_answers_the_same(ops: Ops):
    failed_id = await ops.failed_settlement()
    first = await ops.release(failed_id)
    assert first.status_code == 200, first.text
    ops.clock.advance(60)
    again = await ops.release(failed_id)
    assert again.status_code == 200 and again.json() == first.json()
    mirrored = await ops.http.post(
        f"/api/ledger/settlements/{failed_id}/release", headers=bearer(await ops.token(ADMIN))
    )
    assert mirrored.status_code == 200 and mirrored.json() == first.json()
    await run_until_idle(ops.worker())
    await assert_all_settled(ops.db)
    assert await ops.client.stake_of(RUNNER) == 10


async def test_only_operators_may_list_or_release_settlements(ops: Ops):
    failed_id = await ops.failed_settlement()
    r = await ops.release(failed_id, who=ALICE)
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"
    r = await ops.http.get(f"{V1}/ledger/settlements", headers=bearer(await ops.token(BOB)))
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"
    r = await ops.http.post(f"{V1}/ledger/settlements/{failed_id}/release")
    assert r.status_code == 401
    [s] = await settlements(ops.db)
    assert s.status == "failed" and s.released_by is None


async def test_only_a_failed_settlement_can_be_released(ops: Ops):
    await post(ops.db, ops.clock, PAYER, RUNNER, 10)
    await run_until_idle(ops.worker())
    [s] = await settlements(ops.db)
    r = await ops.release(s.id)
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "settlement_not_failed" and error["details"] == {"status": "confirmed"}
    await assert_all_settled(ops.db)


async def test_an_unknown_settlement_is_not_found(ops: Ops):
    r = await ops.release(uuid.uuid4())
    assert r.status_code == 404 and r.json()["error"]["code"] == "settlement_not_found"


async def test_a_failed_settlement_whose_transaction_was_mined_after_all_is_kept(ops: Ops):
    failed_id = await ops.failed_settlement()
    [s] = await settlements(ops.db)
    assert s.tx_hash is not None
    # A node that was behind answered "no receipt" when the worker looked; this one has it.
    ops.chain.receipts[s.tx_hash] = Receipt(s.tx_hash, 1, ops.chain.block, 21_000)
    r = await ops.release(failed_id)
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "settlement_paid_on_chain"
    assert error["details"]["tx_hash"] == s.tx_hash
    [credit] = [e for e in await entries(ops.db) if e.role == "payee"]
    assert credit.settlement_id == failed_id


async def test_operators_list_settlements_by_status_newest_first(ops: Ops):
    failed_id = await ops.failed_settlement()
    for amount in (20, 30):
        ops.clock.advance(1)
        await post(ops.db, ops.clock, PAYER, RUNNER, amount)
        await run_until_idle(ops.worker())
    admin = bearer(await ops.token(ADMIN))

    async def listed(**params: Any) -> dict[str, Any]:
        r = await ops.http.get(f"{V1}/ledger/settlements", params=params, headers=admin)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    page = await listed(status="failed")
    assert [s["id"] for s in page["items"]] == [str(failed_id)]
    assert page["items"][0]["nonce"] == 0 and page["next_cursor"] is None
    first = await listed(limit=2)
    assert [s["amount"] for s in first["items"]] == ["30", "20"]
    rest = await listed(limit=2, cursor=first["next_cursor"])
    assert [s["amount"] for s in rest["items"]] == ["10"] and rest["next_cursor"] is None
    assert (await ops.release(failed_id)).status_code == 200
    assert (await listed(status="failed"))["items"] == []
    assert [s["id"] for s in (await listed(status="released"))["items"]] == [str(failed_id)]
    r = await ops.http.get(f"{V1}/ledger/settlements?status=lost", headers=admin)
    assert r.status_code == 422


async def test_a_task_reward_reads_held_then_unsettled_then_paid(ops: Ops):
    alice, bob = await ops.token(ALICE), await ops.token(BOB)
    runner_token, _ = await register_runner(ops.http, bob, device())
    task = await create_task(ops.http, alice, timeout_seconds=60)
    got = await claimed(ops.http, runner_token, start="true")
    ops.clock.advance(10)
    done = await ops.http.post(
        f"{V1}/runners/tasks/{got['task']['id']}/complete",
        json={"claim_token": got["claim_token"], "output": "ok", "exit_code": 0},
        headers=bearer(runner_token),
    )
    assert done.status_code == 200, done.text
    with pytest.raises(Crash):  # one credit signed, not sent: a foreign mint takes its nonce
        await ops.worker(hook=CrashAt("after_sign")).run_once()
    await ops.client.transact(OWNER, Call("token", "mint", (OWNER.address, 1)))
    await run_until_idle(ops.worker())

    async def reward() -> dict[str, Any]:
        r = await ops.http.get(f"{V1}/tasks/{task['id']}/reward", headers=bearer(alice))
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    held = await reward()
    assert held["status"] == "settling" and "waits for an operator" in held["message"]
    [failed] = [s for s in held["settlements"] if s["status"] == "failed"]
    assert (await ops.release(failed["id"])).status_code == 200
    status = (await ops.http.get("/api/status")).json()["billing"]["settlement"]["by_status"]
    assert status["released"] == 1
    await run_until_idle(ops.worker())
    paid = await reward()
    assert paid["status"] == "paid" and paid["paid"] is True
    assert {s["status"] for s in paid["settlements"]} == {"confirmed"}
    await assert_all_settled(ops.db)
    # 100 + 10 s * 10 = 200; 10 % fee to the protocol.
    assert await ops.client.stake_of(RUNNER) == 180
    assert await ops.client.stake_of(PROTOCOL) == 20

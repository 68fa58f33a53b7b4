"""The chain reset under the server (a restarted dev-chain: no contracts, no blocks, nonces back
to 0): the settlement worker sends and confirms nothing while the StakeWallet has no code, and
once the contracts are deployed again the payments held behind the lost nonces are mined,
each credit paid once. On the fake chain, and on real anvil processes (skipped, with the
reason, when Node.js/npm or anvil are unavailable)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from parity.chain.devchain import Anvil, deploy_dev_contracts, dev_accounts, free_port
from parity.chain.fake import FakeChain, FakeChainClient
from parity.chain.ports import Call, ChainClient
from parity.chain.startup import check_chain, recheck
from parity.chain.web3_adapter import Web3ChainClient, Web3Options
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.ledger.models import SignerNonce
from parity.ledger.settlement import SettlementConfig, SettlementWorker
from tests.chain_support import anvil_binary
from tests.conftest import make_settings
from tests.integration.queue_helpers import served
from tests.settlement_support import (
    CLIENT,
    OWNER,
    PAYER,
    RUNNER,
    World,
    assert_all_settled,
    post,
    run_until_idle,
    settlements,
    transactions,
    world,
)

__all__ = ["world"]  # a fixture, used by name


async def assert_confirmed_on_chain(client: ChainClient, db: Database, since: set[str]) -> None:
    """Every settlement confirmed after the reset (not in ``since``) has its transaction
    mined, successfully, on the chain there is now."""
    for s in await settlements(db):
        if s.status == "confirmed" and str(s.id) not in since:
            receipt = await client.receipt(str(s.tx_hash))
            assert receipt is not None and receipt.ok, s


async def test_nothing_is_sent_or_confirmed_while_the_reset_chain_has_no_stake_wallet(
    world: World,
):
    await post(world.db, world.clock, PAYER, RUNNER, 100)
    worker = world.worker(confirmations=3)
    assert (await worker.run_once()).mined == 1  # mined, not yet at depth
    world.chain.reset()  # the node restarted: no blocks, no transactions, no contracts
    reports = []
    for _ in range(3):
        reports.append(await worker.run_once())
        world.chain.advance(3)
    [s] = await settlements(world.db)
    # A call to an address without code would be mined as a success that moves nothing.
    assert s.status != "confirmed"
    assert world.chain.txs == {}  # nothing was sent to a chain without the contract
    assert all(r.unavailable and not r.counts() for r in reports)
    assert world.kinds() == ["settlement_no_contract"]  # once, however many passes
    assert "no contract code at the StakeWallet address" in world.alerts[0][1]["error"]
    # The contracts are deployed again and the payer stakes again: the payment is made on the
    # chain there is now, once.
    world.chain.reset(redeploy=True)
    await world.stake(CLIENT, 1000)
    await run_until_idle(worker)
    world.chain.advance(3)
    await run_until_idle(worker)
    [s] = await settlements(world.db)
    assert s.status == "confirmed"
    assert await world.client.stake_of(RUNNER) == 100
    await assert_confirmed_on_chain(world.client, world.db, set())
    await assert_all_settled(world.db)


async def test_payments_behind_the_nonces_a_reset_chain_lost_are_mined_after_redeploy(
    world: World,
):
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    worker = world.worker()
    await run_until_idle(worker)
    [first] = await settlements(world.db)
    assert first.status == "confirmed" and first.nonce == 0
    world.chain.automine = False
    await post(world.db, world.clock, PAYER, RUNNER, 20)
    await run_until_idle(worker)
    held = next(s for s in await settlements(world.db) if s.status == "broadcast")
    assert held.nonce == 1
    # dev-chain restarted and deployed again at the same addresses; the payer staked again.
    world.chain.reset(redeploy=True)
    world.chain.automine = True
    await world.stake(CLIENT, 1000)
    await post(world.db, world.clock, PAYER, RUNNER, 30)
    await run_until_idle(worker)
    by_amount = {s.amount: s for s in await settlements(world.db)}
    assert {a: s.status for a, s in by_amount.items()} == {
        10: "confirmed",  # on the chain before the reset: not paid again
        20: "confirmed",
        30: "confirmed",
    }
    assert by_amount[30].nonce == 2  # no nonce of the database was reused for a payment
    assert await world.client.stake_of(RUNNER) == 50
    assert await world.client.stake_of(PAYER) == 950
    await assert_confirmed_on_chain(world.client, world.db, {str(first.id)})
    assert len(await transactions(world.db, held.id)) == 1  # the same transaction, mined
    assert "settlement_chain_reset" in world.kinds()
    assert "settlement_nonce_gap" not in world.kinds()
    await assert_all_settled(world.db)


async def test_nonces_no_payment_used_are_left_to_whoever_used_them_before(world: World):
    # The signer also deployed on the old chain (nonces 0..2); payments used 3 and 4.
    mint = Call("token", "mint", (OWNER.address, 1))
    for _ in range(3):
        await world.client.transact(OWNER, mint)
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    worker = world.worker()
    await run_until_idle(worker)
    world.chain.automine = False
    await post(world.db, world.clock, PAYER, RUNNER, 20)
    await run_until_idle(worker)
    world.chain.reset(redeploy=True)
    world.chain.automine = True
    await world.stake(CLIENT, 1000)
    await run_until_idle(worker)
    # Nonces 0..2 are not filled: the deployment may be using them right now.
    assert world.chain.nonces.get(OWNER.address.lower(), 0) == 0
    assert sorted(s.status for s in await settlements(world.db)) == ["broadcast", "confirmed"]
    assert "settlement_nonce_gap" in world.kinds()
    for _ in range(3):  # the deployment's own transactions, again
        await world.client.transact(OWNER, mint)
    await run_until_idle(worker)
    assert sorted(s.status for s in await settlements(world.db)) == ["confirmed", "confirmed"]
    assert await world.client.stake_of(RUNNER) == 20
    assert "settlement_chain_reset" in world.kinds()
    await assert_all_settled(world.db)


async def test_a_gap_without_a_lost_payment_is_alerted_not_filled(world: World):
    # Nonces 0..4 are below the database's next nonce, but no payment of ours was mined at
    # them: nothing proves the chain lost them, so they are not filled (the payment waits,
    # alerted, as before).
    async with world.db.transaction() as session:
        session.add(
            SignerNonce(address=OWNER.address.lower(), next_nonce=5, updated_at=world.clock.now())
        )
    await post(world.db, world.clock, PAYER, RUNNER, 10)
    await run_until_idle(world.worker())
    [s] = await settlements(world.db)
    assert s.status == "broadcast" and s.nonce == 5
    assert world.kinds() == ["settlement_nonce_gap"]
    assert world.chain.nonces.get(OWNER.address.lower(), 0) == 0


async def test_status_says_the_chain_was_reset_under_the_server(
    database_url: str, tmp_path: Path, clock: FrozenClock
):
    chain = FakeChain()
    settings = make_settings(
        database_url,
        tmp_path / "home",
        filecoin_rpc="http://node.test:8545",
        filecoin_stake_wallet_address=chain.stake_wallet_address,
    )
    c = Container(settings=settings, db=Database(settings.resolved_database_url), clock=clock)
    c.chain = FakeChainClient(chain)
    async with served(c) as client:
        body = (await client.get("/api/status")).json()
        assert body["backends"]["chain"] == "ok" and "reset" not in body["chain"]
        assert not [w for w in body["warnings"] if w.startswith("FILECOIN_RPC")]
        chain.reset()
        clock.advance(31)
        r = await client.get("/api/status")
        assert r.status_code == 200
        body = r.json()
        assert body["backends"]["chain"] == "no_contract"
        assert "started again from scratch" in body["chain"]["reset"]
        chain.reset(redeploy=True)  # deployed again: ok, and the reset still said
        clock.advance(31)
        body = (await client.get("/api/status")).json()
        assert body["backends"]["chain"] == "ok"
        assert "started again from scratch" in body["chain"]["reset"]
        [warning] = [w for w in body["warnings"] if w.startswith("FILECOIN_RPC")]
        assert "started again from scratch" in warning


# -- real anvil ------------------------------------------------------------------------------

A_OWNER, A_CLIENT, A_RUNNER = dev_accounts(3)
A_PAYER, A_PAYEE = A_CLIENT.address.lower(), A_RUNNER.address.lower()
TOKEN = 10**18
_ids = itertools.count(1)


def _rpc(node: Anvil, method: str, *params: Any) -> Any:
    body = {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": list(params)}
    answer = httpx.post(node.rpc_url, json=body, timeout=10).json()
    assert "error" not in answer, answer
    return answer["result"]


async def _deploy_and_stake(node: Anvil) -> Web3ChainClient:
    deployed = await deploy_dev_contracts(node.rpc_url, A_OWNER, [], 0)
    client = Web3ChainClient(
        node.rpc_url,
        chain_id=314159,
        stake_wallet_address=deployed.stake_wallet_address,
        options=Web3Options(receipt_timeout_seconds=30, poll_interval_seconds=0.05),
    )
    await client.transact(A_OWNER, Call("token", "mint", (A_CLIENT.address, 1000 * TOKEN)))
    await client.approve(A_CLIENT, 1000 * TOKEN)
    await client.add_funds(A_CLIENT, A_PAYER, 1000 * TOKEN)
    return client


@pytest.mark.db
async def test_a_restarted_anvil_under_the_worker_settles_every_payment_once(
    database_url: str, tmp_path: Path, clock: FrozenClock
):
    binary = anvil_binary()
    if isinstance(binary, str):
        pytest.skip(binary)
    port = free_port()
    db = Database(database_url)
    alerts: list[str] = []
    node = Anvil(binary, port=port).start()
    try:
        client = await _deploy_and_stake(node)
        worker = SettlementWorker(
            db,
            client,
            A_OWNER,
            clock,
            SettlementConfig(confirmations=2),
            alert=lambda kind, data: alerts.append(kind),
        )
        await post(db, clock, A_PAYER, A_PAYEE, 10 * TOKEN)
        await run_until_idle(worker)
        _rpc(node, "evm_mine")
        await run_until_idle(worker)
        [first] = await settlements(db)
        assert first.status == "confirmed"
        await post(db, clock, A_PAYER, A_PAYEE, 20 * TOKEN)
        await worker.run_once()  # mined, not yet at depth
        _rpc(node, "evm_setAutomine", False)
        await post(db, clock, A_PAYER, A_PAYEE, 30 * TOKEN)
        await worker.run_once()  # broadcast, held in the mempool
        statuses = sorted(s.status for s in await settlements(db))
        assert statuses == ["broadcast", "confirmed", "mined"]
        settings = make_settings(
            database_url,
            tmp_path / "home",
            filecoin_rpc=node.rpc_url,
            filecoin_stake_wallet_address=client.stake_wallet_address,
        )
        seen = await check_chain(client, settings)
        assert seen.state == "ok" and seen.reset is None

        node.stop()  # anvil restarted: everything gone
        # anvil's genesis block holds its start time in seconds: a restart within the same
        # second (only a test is that fast) would begin the very same chain again.
        stopped = int(time.time())
        while int(time.time()) == stopped:
            time.sleep(0.05)
        node = Anvil(binary, port=port).start()
        for _ in range(2):
            assert (await worker.run_once()).unavailable
            _rpc(node, "evm_mine")
        assert _rpc(node, "txpool_content")["queued"] == {}  # nothing sent meanwhile
        assert sorted(s.status for s in await settlements(db)) == statuses
        assert alerts == ["settlement_no_contract"]
        seen = await recheck(client, settings, seen)
        assert seen.state == "no_contract" and "from scratch" in str(seen.reset)

        await client.aclose()
        client = await _deploy_and_stake(node)  # the same addresses: same deployer, nonces
        assert client.stake_wallet_address == worker.ctx.chain.stake_wallet_address
        worker.ctx.chain = client
        await post(db, clock, A_PAYER, A_PAYEE, 40 * TOKEN)
        for _ in range(10):
            await run_until_idle(worker)
            _rpc(node, "evm_mine")
            clock.advance(3600)
            await run_until_idle(worker)
            if not [s for s in await settlements(db) if s.status not in ("confirmed", "reverted")]:
                break
        left = [(s.amount, s.status, s.last_error) for s in await settlements(db)]
        assert all(status in ("confirmed", "reverted") for _, status, _ in left), left
        # Everything owed since the reset is paid on the new chain, once.
        assert await client.stake_of(A_PAYEE) == 90 * TOKEN
        assert await client.stake_of(A_PAYER) == 910 * TOKEN
        await assert_confirmed_on_chain(client, db, {str(first.id)})
        await assert_all_settled(db)
        assert "settlement_chain_reset" in alerts
        await client.aclose()
    finally:
        node.stop()
        await db.dispose()

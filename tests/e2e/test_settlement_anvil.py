"""The settlement worker against a real anvil node (chain id 314159) with our compiled
contracts: crashes at every step, transactions held in the mempool and fee-bumped, dropped,
reorged away and reverted each end with every credit paid exactly once on chain. Skips, with
the reason printed, when Node.js/npm or anvil are unavailable."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount

from parity.chain.devchain import Anvil, deploy_dev_contracts, dev_accounts
from parity.chain.ports import Call
from parity.chain.web3_adapter import Web3ChainClient, Web3Options
from parity.clock import FrozenClock
from parity.db.session import Database
from parity.ledger.settlement import HOOK_POINTS, SettlementConfig, SettlementWorker
from tests.chain_support import anvil_node, require_anvil
from tests.settlement_support import (
    Crash,
    CrashAt,
    assert_all_settled,
    post,
    run_until_idle,
    settlements,
    transactions,
)

__all__ = ["anvil_node"]

OWNER, CLIENT, RUNNER_ACCOUNT, PROTOCOL_ACCOUNT = dev_accounts(4)
PAYER = CLIENT.address.lower()
RUNNER = RUNNER_ACCOUNT.address.lower()
PROTOCOL = PROTOCOL_ACCOUNT.address.lower()
TOKEN = 10**18
_ids = itertools.count(1)


@dataclass
class Anvilworld:
    node: Anvil
    db: Database
    clock: FrozenClock
    client: Web3ChainClient

    def rpc(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": list(params)}
        answer = httpx.post(self.node.rpc_url, json=body, timeout=10).json()
        assert "error" not in answer, answer
        return answer["result"]

    def worker(self, hook: Any = None, **config: Any) -> SettlementWorker:
        cfg = SettlementConfig(**{"confirmations": 1, **config})
        return SettlementWorker(self.db, self.client, OWNER, self.clock, cfg, hook=hook)

    async def stake(self, who: LocalAccount, amount: int) -> None:
        await self.client.transact(OWNER, Call("token", "mint", (who.address, amount)))
        await self.client.approve(who, amount)
        await self.client.add_funds(who, who.address.lower(), amount)

    async def stake_of(self, account: str) -> int:
        return await self.client.stake_of(account)

    async def assert_paid_once(self, expected: dict[str, int]) -> None:
        """Stakes on chain are as expected, every settlement's ref is used and each settlement
        that moved tokens has exactly one mined transaction, the one it records."""
        for account, amount in expected.items():
            assert await self.stake_of(account) == amount, account
        await assert_all_settled(self.db)
        for s in await settlements(self.db):
            if s.status != "confirmed":
                continue
            assert await self.client.ref_used(bytes.fromhex(s.ref[2:]))
            mined = [
                t.tx_hash
                for t in await transactions(self.db, s.id)
                if await self.client.receipt(t.tx_hash) is not None
            ]
            assert mined == [s.tx_hash]


@pytest.fixture
async def world(
    anvil_node: Anvil | str, database_url: str, clock: FrozenClock
) -> AsyncIterator[Anvilworld]:
    node = require_anvil(anvil_node)
    deployed = await deploy_dev_contracts(node.rpc_url, OWNER, [], 0)
    client = Web3ChainClient(
        node.rpc_url,
        chain_id=314159,
        stake_wallet_address=deployed.stake_wallet_address,
        options=Web3Options(receipt_timeout_seconds=30, poll_interval_seconds=0.05),
    )
    db = Database(database_url)
    w = Anvilworld(node, db, clock, client)
    await w.stake(CLIENT, 1000 * TOKEN)
    try:
        yield w
    finally:
        w.rpc("evm_setAutomine", True)
        await client.aclose()
        await db.dispose()


@pytest.mark.parametrize("point", HOOK_POINTS)
async def test_a_crash_at_any_point_pays_each_entry_once_on_anvil(world: Anvilworld, point: str):
    await post(world.db, world.clock, PAYER, RUNNER, 100 * TOKEN, fee=10 * TOKEN, protocol=PROTOCOL)
    await post(world.db, world.clock, PAYER, RUNNER, 50 * TOKEN)
    with pytest.raises(Crash):
        await world.worker(hook=CrashAt(point)).run_once()
    await run_until_idle(world.worker())  # the restarted process
    await world.assert_paid_once({RUNNER: 140 * TOKEN, PROTOCOL: 10 * TOKEN, PAYER: 850 * TOKEN})


async def test_a_held_transaction_is_fee_bumped_with_the_same_nonce_on_anvil(world: Anvilworld):
    await post(world.db, world.clock, PAYER, RUNNER, 7 * TOKEN)
    world.rpc("evm_setAutomine", False)
    worker = world.worker(fee_bump_seconds=60, fee_bump_percent=15)
    await run_until_idle(worker)
    [s] = await settlements(world.db)
    assert s.status == "broadcast" and s.tx_hash is not None
    assert world.rpc("eth_getTransactionByHash", s.tx_hash)["blockNumber"] is None
    world.clock.advance(61)
    assert (await worker.run_once()).bumped == 1
    first, bump = await transactions(world.db, s.id)
    assert bump.nonce == first.nonce and bump.max_fee_per_gas > first.max_fee_per_gas
    world.rpc("evm_mine")
    await run_until_idle(worker)
    [s] = await settlements(world.db)
    assert s.status == "confirmed" and s.tx_hash == bump.tx_hash
    assert await world.client.receipt(first.tx_hash) is None
    await world.assert_paid_once({RUNNER: 7 * TOKEN, PAYER: 993 * TOKEN})


async def test_a_dropped_transaction_is_rebroadcast_on_anvil(world: Anvilworld):
    await post(world.db, world.clock, PAYER, RUNNER, 3 * TOKEN)
    world.rpc("evm_setAutomine", False)
    worker = world.worker()
    await run_until_idle(worker)
    [s] = await settlements(world.db)
    world.rpc("anvil_dropTransaction", s.tx_hash)
    assert await world.client.get_transaction(str(s.tx_hash)) is None
    assert (await worker.run_once()).rebroadcast == 1
    assert await world.client.get_transaction(str(s.tx_hash)) is not None
    world.rpc("evm_mine")
    await run_until_idle(worker)
    await world.assert_paid_once({RUNNER: 3 * TOKEN, PAYER: 997 * TOKEN})
    assert len(await transactions(world.db, s.id)) == 1


async def test_a_reverted_block_is_caught_by_the_confirmation_recheck_on_anvil(
    world: Anvilworld,
):
    await post(world.db, world.clock, PAYER, RUNNER, 5 * TOKEN)
    snapshot = world.rpc("evm_snapshot")
    worker = world.worker(confirmations=3)
    report = await worker.run_once()
    assert report.mined == 1 and report.confirmed == 0
    [mined] = await settlements(world.db)
    assert await world.stake_of(RUNNER) == 5 * TOKEN
    assert world.rpc("evm_revert", snapshot) is True
    assert await world.stake_of(RUNNER) == 0
    assert (await worker.run_once()).reorged == 1  # the receipt vanished: sent again
    for _ in range(3):
        world.rpc("evm_mine")
    await run_until_idle(worker)
    [s] = await settlements(world.db)
    assert s.status == "confirmed" and s.tx_hash == mined.tx_hash
    await world.assert_paid_once({RUNNER: 5 * TOKEN, PAYER: 995 * TOKEN})


async def test_a_reverted_receipt_unsettles_and_pays_later_on_anvil(world: Anvilworld):
    await post(world.db, world.clock, PAYER, RUNNER, 600 * TOKEN)
    with pytest.raises(Crash):  # signed and stored, not yet sent
        await world.worker(hook=CrashAt("after_sign")).run_once()
    await world.client.withdraw(CLIENT, PAYER, 900 * TOKEN)  # short by the time it is mined
    await run_until_idle(world.worker(retry_base_seconds=10))
    by_status = {s.status: s for s in await settlements(world.db)}
    reverted, retry = by_status["reverted"], by_status["pending"]
    assert reverted.status == "reverted" and await world.stake_of(RUNNER) == 0
    # The entries went back to unsettled and form a new intent, waiting for the stake.
    assert retry.status == "pending" and "stake short" in (retry.last_error or "")
    receipt = await world.client.receipt(str(reverted.tx_hash))
    assert receipt is not None and not receipt.ok
    await world.stake(CLIENT, 1000 * TOKEN)
    world.clock.advance(3600)
    await run_until_idle(world.worker())
    statuses = sorted(s.status for s in await settlements(world.db))
    assert statuses == ["confirmed", "reverted"]
    await world.assert_paid_once({RUNNER: 600 * TOKEN, PAYER: 500 * TOKEN})
    assert not await world.client.ref_used(bytes.fromhex(reverted.ref[2:]))

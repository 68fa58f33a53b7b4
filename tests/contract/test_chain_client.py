"""The ChainClient contract: the fake and the web3 adapter (against a real anvil node with our
compiled contracts, chain id 314159) behave the same. The anvil half skips, with the reason
printed, when Node.js/npm or anvil are unavailable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from eth_account.signers.local import LocalAccount

from parity.chain.devchain import Anvil, deploy_dev_contracts, dev_accounts
from parity.chain.errors import ChainError, ContractReverted, NonceTooLow
from parity.chain.fake import FakeChain, FakeChainClient
from parity.chain.ports import Call, ChainClient, add_funds_call, approve_call
from parity.chain.stake_ids import stake_id
from parity.chain.web3_adapter import Web3ChainClient, Web3Options
from tests.chain_support import anvil_node, require_anvil

__all__ = ["anvil_node"]

TOKEN = 10**18
OWNER, ALICE, BOB = dev_accounts(3)


@dataclass
class Chain:
    client: ChainClient
    owner: LocalAccount  # owns both contracts: mints and settles
    alice: LocalAccount
    bob: LocalAccount

    async def mint(self, to: LocalAccount, amount: int) -> None:
        await self.client.transact(self.owner, Call("token", "mint", (to.address, amount)))

    async def stake(self, who: LocalAccount, amount: int) -> str:
        sid = stake_id(who.address)
        await self.mint(who, amount)
        await self.client.approve(who, amount)
        await self.client.add_funds(who, sid, amount)
        return sid


@pytest.fixture(params=["fake", "anvil"])
async def chain(request: pytest.FixtureRequest, anvil_node: Anvil | str) -> AsyncIterator[Chain]:
    if request.param == "fake":
        yield Chain(FakeChainClient(FakeChain(owner=OWNER.address)), OWNER, ALICE, BOB)
        return
    node = require_anvil(anvil_node)
    deployed = await deploy_dev_contracts(node.rpc_url, OWNER, [], 0)
    client = Web3ChainClient(
        node.rpc_url,
        chain_id=314159,
        stake_wallet_address=deployed.stake_wallet_address,
        options=Web3Options(receipt_timeout_seconds=30, poll_interval_seconds=0.05),
    )
    yield Chain(client, OWNER, ALICE, BOB)
    await client.aclose()


async def test_chain_id_is_314159(chain: Chain):
    assert await chain.client.chain_id() == 314159


async def test_token_has_18_decimals(chain: Chain):
    assert await chain.client.token_decimals() == 18


async def test_token_symbol_is_the_dev_chains_prty(chain: Chain):
    # Amounts are shown with the contract's own symbol, not a configured placeholder.
    assert await chain.client.token_symbol() == "PRTY"


async def test_contracts_have_code_and_the_stake_wallet_supports_payment_refs(chain: Chain):
    c = chain.client
    assert await c.code_at(c.stake_wallet_address) != b""
    assert await c.code_at(await c.token_address()) != b""
    assert await c.code_at("0x" + "ab" * 20) == b""
    assert await c.supports_payment_ref() is True


async def test_mint_approve_and_add_funds_raise_the_stake(chain: Chain):
    c, alice = chain.client, chain.alice
    await chain.mint(alice, 10 * TOKEN)
    assert await c.token_balance(alice.address) == 10 * TOKEN
    await c.approve(alice, 4 * TOKEN)
    assert await c.allowance(alice.address, c.stake_wallet_address) == 4 * TOKEN
    sid = stake_id(alice.address)
    receipt = await c.add_funds(alice, sid, 4 * TOKEN)
    assert receipt.ok and receipt.tx_hash.startswith("0x") and len(receipt.tx_hash) == 66
    assert await c.stake_of(sid) == 4 * TOKEN
    assert await c.token_balance(alice.address) == 6 * TOKEN
    assert await c.allowance(alice.address, c.stake_wallet_address) == 0


async def test_stake_of_reads_a_lowercase_address_id(chain: Chain):
    sid = await chain.stake(chain.alice, 3 * TOKEN)
    assert sid == chain.alice.address.lower() and sid != chain.alice.address
    info = await chain.client.wallet_info(sid)
    assert (info.balance, info.stake_id, info.wallet, info.exists) == (
        3 * TOKEN,
        sid,
        chain.alice.address.lower(),
        True,
    )
    # The checksummed spelling is another string, hence another (empty) stake.
    assert await chain.client.stake_of(chain.alice.address) == 0


async def test_an_unknown_stake_id_is_empty(chain: Chain):
    info = await chain.client.wallet_info("never-funded")
    assert (info.balance, info.exists, info.wallet) == (0, False, "0x" + "00" * 20)
    assert await chain.client.stake_of("never-funded") == 0


async def test_the_owner_withdraws_their_stake(chain: Chain):
    c, alice = chain.client, chain.alice
    sid = await chain.stake(alice, 5 * TOKEN)
    await c.withdraw(alice, sid, 2 * TOKEN)
    assert await c.stake_of(sid) == 3 * TOKEN
    assert await c.token_balance(alice.address) == 2 * TOKEN


async def test_a_stranger_cannot_withdraw_someone_elses_stake(chain: Chain):
    sid = await chain.stake(chain.alice, 5 * TOKEN)
    with pytest.raises(ChainError) as caught:
        await chain.client.withdraw(chain.bob, sid, TOKEN)
    assert isinstance(caught.value, ContractReverted)
    assert "does not own" in caught.value.reason
    assert await chain.client.stake_of(sid) == 5 * TOKEN


async def test_withdrawing_more_than_the_stake_reverts(chain: Chain):
    sid = await chain.stake(chain.alice, TOKEN)
    with pytest.raises(ContractReverted, match="insufficient stake"):
        await chain.client.withdraw(chain.alice, sid, TOKEN + 1)


async def test_add_funds_without_an_allowance_reverts(chain: Chain):
    await chain.mint(chain.alice, TOKEN)
    with pytest.raises(ContractReverted, match="ERC20InsufficientAllowance"):
        await chain.client.add_funds(chain.alice, stake_id(chain.alice.address), TOKEN)


async def test_nobody_can_claim_another_accounts_address_id(chain: Chain):
    c, bob = chain.client, chain.bob
    await chain.mint(bob, TOKEN)
    await c.approve(bob, TOKEN)
    with pytest.raises(ContractReverted, match="address id must be its own wallet"):
        await c.add_funds(bob, stake_id(chain.alice.address), TOKEN, wallet=bob.address)


async def test_transfer_payment_ref_moves_stake_and_refuses_a_reused_ref(chain: Chain):
    c = chain.client
    payer = await chain.stake(chain.alice, 10 * TOKEN)
    payee = stake_id(chain.bob.address)
    ref = bytes.fromhex("11" * 32)
    assert await c.ref_used(ref) is False
    await c.transfer_payment_ref(chain.owner, payer, payee, 3 * TOKEN, ref)
    assert await c.stake_of(payer) == 7 * TOKEN
    assert await c.stake_of(payee) == 3 * TOKEN
    assert await c.ref_used(ref) is True
    with pytest.raises(ContractReverted, match="ref already used"):
        await c.transfer_payment_ref(chain.owner, payer, payee, 3 * TOKEN, ref)
    assert await c.stake_of(payer) == 7 * TOKEN
    # The payee's new stake is bound to its own address: bob can withdraw what he earned.
    assert (await c.wallet_info(payee)).wallet == chain.bob.address.lower()
    await c.withdraw(chain.bob, payee, 3 * TOKEN)
    assert await c.token_balance(chain.bob.address) == 3 * TOKEN


async def test_only_the_contract_owner_can_settle_payments(chain: Chain):
    payer = await chain.stake(chain.alice, TOKEN)
    with pytest.raises(ContractReverted, match="OwnableUnauthorizedAccount"):
        await chain.client.transfer_payment_ref(
            chain.alice, payer, stake_id(chain.bob.address), TOKEN, b"\x02" * 32
        )


async def test_the_stake_wallet_names_its_owner(chain: Chain):
    assert await chain.client.stake_wallet_owner() == chain.owner.address.lower()


async def test_large_amounts_are_exact(chain: Chain):
    big = 10**24 + 7
    sid = await chain.stake(chain.alice, big)
    assert await chain.client.stake_of(sid) == big
    await chain.client.transfer_payment_ref(
        chain.owner, sid, stake_id(chain.bob.address), big - 1, b"\x03" * 32
    )
    assert await chain.client.stake_of(sid) == 1
    assert await chain.client.stake_of(stake_id(chain.bob.address)) == big - 1


async def test_a_raw_transaction_sent_twice_executes_once(chain: Chain):
    c, alice = chain.client, chain.alice
    await chain.mint(alice, 2 * TOKEN)
    before = await c.block_number()
    signed = await c.build_and_sign(alice, approve_call(c.stake_wallet_address, TOKEN))
    assert signed.sender == alice.address.lower()
    assert signed.fees.max_fee_per_gas >= signed.fees.max_priority_fee_per_gas > 0
    assert await c.send_raw(signed.raw) == signed.tx_hash
    receipt = await c.wait_for_receipt(signed.tx_hash)
    assert receipt.ok and receipt.block_number > before
    assert await c.send_raw(signed.raw) == signed.tx_hash  # a re-broadcast is harmless
    assert await c.receipt(signed.tx_hash) == receipt
    tx = await c.get_transaction(signed.tx_hash)
    assert tx is not None and (tx.sender, tx.nonce) == (alice.address.lower(), signed.nonce)
    assert tx.block_number == receipt.block_number
    assert await c.transaction_count(alice.address) == signed.nonce + 1


async def test_another_transaction_with_a_used_nonce_is_nonce_too_low(chain: Chain):
    c, alice = chain.client, chain.alice
    await chain.mint(alice, TOKEN)
    first = await c.build_and_sign(alice, approve_call(c.stake_wallet_address, 1))
    await c.send_raw(first.raw)
    await c.wait_for_receipt(first.tx_hash)
    second = await c.build_and_sign(
        alice, approve_call(c.stake_wallet_address, 2), nonce=first.nonce
    )
    with pytest.raises(NonceTooLow):
        await c.send_raw(second.raw)


async def test_a_call_that_would_revert_is_refused_before_broadcast(chain: Chain):
    c, alice = chain.client, chain.alice
    nonce = await c.transaction_count(alice.address)
    with pytest.raises(ContractReverted):
        await c.build_and_sign(alice, add_funds_call(TOKEN, stake_id(alice.address), alice.address))
    assert await c.transaction_count(alice.address) == nonce


async def test_unknown_transactions_have_no_receipt(chain: Chain):
    unknown = "0x" + "cd" * 32
    assert await chain.client.receipt(unknown) is None
    assert await chain.client.get_transaction(unknown) is None

"""What only the fake can show quickly: pending transactions, receipt timeouts, outages."""

from __future__ import annotations

import pytest
from eth_account import Account

from parity.chain.errors import ChainRetryableError, ContractReverted, ReceiptTimeout
from parity.chain.fake import FakeChain, FakeChainClient
from parity.chain.ports import approve_call, transfer_payment_ref_call

OWNER = Account.from_key("0x" + "44" * 32)
ALICE = Account.from_key("0x" + "55" * 32)


async def test_a_pending_transaction_has_no_receipt_until_mined():
    chain = FakeChain(owner=OWNER.address, automine=False)
    client = FakeChainClient(chain, receipt_timeout_seconds=0.05)
    signed = await client.build_and_sign(ALICE, approve_call(chain.stake_wallet_address, 5))
    await client.send_raw(signed.raw)
    assert await client.receipt(signed.tx_hash) is None
    tx = await client.get_transaction(signed.tx_hash)
    assert tx is not None and tx.block_number is None
    assert await client.transaction_count(ALICE.address) == 1
    assert await client.transaction_count(ALICE.address, pending=False) == 0
    with pytest.raises(ReceiptTimeout) as caught:
        await client.wait_for_receipt(signed.tx_hash)
    assert caught.value.retryable
    chain.mine()
    receipt = await client.wait_for_receipt(signed.tx_hash)
    assert receipt.ok
    assert await client.allowance(ALICE.address, chain.stake_wallet_address) == 5


async def test_a_same_nonce_replacement_takes_the_pending_slot():
    chain = FakeChain(owner=OWNER.address, automine=False)
    client = FakeChainClient(chain)
    first = await client.build_and_sign(ALICE, approve_call(chain.stake_wallet_address, 1))
    await client.send_raw(first.raw)
    other = await client.build_and_sign(
        ALICE, approve_call(chain.stake_wallet_address, 2), nonce=first.nonce
    )
    await client.send_raw(other.raw)
    chain.mine()
    assert await client.get_transaction(first.tx_hash) is None
    assert (await client.wait_for_receipt(other.tx_hash)).ok


async def test_a_transaction_that_reverts_in_its_block_has_status_zero():
    chain = FakeChain(owner=OWNER.address)
    client = FakeChainClient(chain)
    chain.mint(ALICE.address, 10)
    call = transfer_payment_ref_call("a", "b", 1, b"\x01" * 32)
    signed = await client.build_and_sign(OWNER, call, gas=50_000)  # no estimate: no revert yet
    await client.send_raw(signed.raw)
    receipt = await client.wait_for_receipt(signed.tx_hash)
    assert receipt.status == 0 and not receipt.ok
    with pytest.raises(ContractReverted, match="no such payer stake"):
        await client.transact(OWNER, call)


async def test_an_unreachable_chain_raises_retryable_errors():
    chain = FakeChain()
    chain.unreachable = True
    client = FakeChainClient(chain)
    with pytest.raises(ChainRetryableError):
        await client.chain_id()
    with pytest.raises(ChainRetryableError):
        await client.stake_of("x")


async def test_without_payment_refs_the_call_reverts_like_a_missing_function():
    chain = FakeChain(owner=OWNER.address, payment_ref=False)
    client = FakeChainClient(chain)
    assert await client.supports_payment_ref() is False
    with pytest.raises(ContractReverted):
        await client.ref_used(b"\x01" * 32)

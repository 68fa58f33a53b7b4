"""``sign_nonce_filler`` behaves the same on the fake and on a real anvil node: a signed,
not yet sent transaction at the given nonce that, once sent, uses the nonce up and moves
nothing; and a transaction held behind a nonce gap can be sent again. The anvil half skips,
with the reason printed, when Node.js/npm or anvil are unavailable."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from eth_account.signers.local import LocalAccount

from parity.chain.devchain import Anvil, deploy_dev_contracts, dev_accounts
from parity.chain.fake import FakeChain, FakeChainClient
from parity.chain.ports import ChainClient
from parity.chain.web3_adapter import Web3ChainClient, Web3Options
from tests.chain_support import anvil_node, require_anvil

__all__ = ["anvil_node"]

(SIGNER,) = dev_accounts(1)


@pytest.fixture(params=["fake", "anvil"])
async def client(
    request: pytest.FixtureRequest, anvil_node: Anvil | str
) -> AsyncIterator[ChainClient]:
    if request.param == "fake":
        yield FakeChainClient(FakeChain(owner=SIGNER.address))
        return
    node = require_anvil(anvil_node)
    deployed = await deploy_dev_contracts(node.rpc_url, SIGNER, [], 0)
    web3 = Web3ChainClient(
        node.rpc_url,
        chain_id=314159,
        stake_wallet_address=deployed.stake_wallet_address,
        options=Web3Options(receipt_timeout_seconds=30, poll_interval_seconds=0.05),
    )
    yield web3
    await web3.aclose()


async def test_a_nonce_filler_uses_its_nonce_up_and_moves_nothing(client: ChainClient):
    signer: LocalAccount = SIGNER
    address = signer.address.lower()
    nonce = await client.transaction_count(address)
    tokens = await client.token_balance(address)
    filler = await client.sign_nonce_filler(signer, nonce=nonce)
    assert filler.nonce == nonce and filler.sender == address
    assert await client.transaction_count(address) == nonce  # signed only: nothing sent
    assert await client.send_raw(filler.raw) == filler.tx_hash
    receipt = await client.wait_for_receipt(filler.tx_hash)
    assert receipt.ok
    info = await client.get_transaction(filler.tx_hash)
    assert info is not None and info.to == address and info.nonce == nonce
    assert await client.transaction_count(address) == nonce + 1
    assert await client.token_balance(address) == tokens


async def test_a_transaction_held_behind_a_nonce_gap_can_be_sent_again(client: ChainClient):
    # A re-broadcast of a transaction the node holds behind a missing nonce (as after a chain
    # reset) is harmless: the same hash, not a refusal.
    signer: LocalAccount = SIGNER
    ahead = await client.transaction_count(signer.address.lower()) + 1
    held = await client.sign_nonce_filler(signer, nonce=ahead)
    assert await client.send_raw(held.raw) == held.tx_hash
    assert await client.send_raw(held.raw) == held.tx_hash
    assert await client.receipt(held.tx_hash) is None
    gap = await client.sign_nonce_filler(signer, nonce=ahead - 1)
    await client.send_raw(gap.raw)
    assert (await client.wait_for_receipt(held.tx_hash)).ok

"""What only the web3 adapter has: a real node's start-up check, an unreachable node, and a
contract without transferPaymentRef. Uses the session's anvil (skips with the reason when it
cannot run)."""

from __future__ import annotations

import pytest

from parity.chain.devchain import Anvil, deploy_dev_contracts, dev_accounts, free_port
from parity.chain.errors import ChainRetryableError
from parity.chain.startup import check_chain
from parity.chain.web3_adapter import Web3ChainClient, Web3Options
from parity.config import load_settings
from tests.chain_support import anvil_node, require_anvil

__all__ = ["anvil_node"]

OWNER = dev_accounts(1)[0]


async def test_an_unreachable_node_is_a_retryable_error():
    client = Web3ChainClient(
        f"http://127.0.0.1:{free_port()}",
        chain_id=314159,
        stake_wallet_address="0x" + "11" * 20,
        options=Web3Options(request_timeout_seconds=2),
    )
    try:
        with pytest.raises(ChainRetryableError):
            await client.chain_id()
        with pytest.raises(ChainRetryableError):
            await client.stake_of("x")
    finally:
        await client.aclose()


async def test_start_up_check_against_anvil(anvil_node: Anvil | str):
    node = require_anvil(anvil_node)
    deployed = await deploy_dev_contracts(node.rpc_url, OWNER, [], 0)
    env = deployed.env()
    for expected_chain, token_at, state in [
        ("314159", deployed.token_address, "ok"),
        ("314", deployed.token_address, "wrong_chain"),
        ("314159", "0x" + "12" * 20, "no_contract"),
    ]:
        settings = load_settings(
            {**env, "FILECOIN_CHAIN_ID": expected_chain, "FILECOIN_TOKEN_ADDRESS": token_at},
            env_file=None,
        )
        client = Web3ChainClient(
            node.rpc_url,
            chain_id=settings.filecoin_chain_id,
            stake_wallet_address=settings.filecoin_stake_wallet_address,
            token_address=settings.filecoin_token_address,
        )
        try:
            status = await check_chain(client, settings)
        finally:
            await client.aclose()
        assert status.state == state, status
        if token_at != deployed.token_address:
            assert "is not the StakeWallet's token" in status.message
        if state == "ok":
            assert (status.decimals, status.payment_ref) == (18, True)


async def test_a_stake_wallet_without_payment_refs_is_detected(anvil_node: Anvil | str):
    node = require_anvil(anvil_node)
    deployed = await deploy_dev_contracts(node.rpc_url, OWNER, [], 0)
    # The token's code has no transferPaymentRef selector: it stands in for the old contract.
    client = Web3ChainClient(
        node.rpc_url,
        chain_id=314159,
        stake_wallet_address=deployed.token_address,
        token_address=deployed.token_address,
    )
    try:
        assert await client.supports_payment_ref() is False
    finally:
        await client.aclose()
    client = Web3ChainClient(
        node.rpc_url, chain_id=314159, stake_wallet_address=deployed.stake_wallet_address
    )
    try:
        assert await client.supports_payment_ref() is True
        assert await client.token_address() == deployed.token_address
    finally:
        await client.aclose()

"""The start-up check's verdicts, over the fake chain (the anvil case is in tests/contract)."""

from __future__ import annotations

import pytest

from parity.chain.fake import FakeChain, FakeChainClient
from parity.chain.startup import check_chain, refuse_wrong_chain
from parity.config import Settings, load_settings
from parity.errors import ConfigError

FAKE = FakeChain()


def _settings(**extra: str) -> Settings:
    env = {
        "FILECOIN_RPC": "http://node.test",
        "FILECOIN_CHAIN_ID": "314159",
        "FILECOIN_STAKE_WALLET_ADDRESS": FAKE.stake_wallet_address,
    }
    env.update(extra)
    return load_settings(env, env_file=None)


async def test_no_rpc_means_off():
    status = await check_chain(None, load_settings({}, env_file=None))
    assert status.state == "off"


async def test_a_good_chain_is_ok_and_describes_itself():
    status = await check_chain(FakeChainClient(FakeChain()), _settings())
    assert status.state == "ok"
    assert status.describe() == {
        "state": "ok",
        "chain_id": 314159,
        "expected_chain_id": 314159,
        "stake_wallet_address": FAKE.stake_wallet_address,
        "token_address": FAKE.token_address,
        "decimals": 18,
        "payment_ref": True,
    }
    refuse_wrong_chain(status)  # no error


async def test_another_chain_id_is_wrong_chain_and_refuses_start():
    status = await check_chain(FakeChainClient(FakeChain(chain_id=314)), _settings())
    assert status.state == "wrong_chain" and (status.chain_id, status.expected_chain_id) == (
        314,
        314159,
    )
    with pytest.raises(ConfigError, match=r"FILECOIN_CHAIN_ID is 314159 but .* serves chain 314"):
        refuse_wrong_chain(status)


async def test_missing_stake_wallet_code_is_no_contract():
    chain = FakeChain()
    chain.remove_code(chain.stake_wallet_address)
    status = await check_chain(FakeChainClient(chain), _settings())
    assert status.state == "no_contract" and "FILECOIN_STAKE_WALLET_ADDRESS" in status.message


async def test_missing_token_code_is_no_contract():
    chain = FakeChain()
    chain.remove_code(chain.token_address)
    status = await check_chain(FakeChainClient(chain), _settings())
    assert status.state == "no_contract" and "token" in status.message


async def test_an_unset_stake_wallet_address_is_no_contract():
    status = await check_chain(
        FakeChainClient(FakeChain()), _settings(FILECOIN_STAKE_WALLET_ADDRESS="")
    )
    assert status.state == "no_contract" and "not set" in status.message


async def test_a_node_that_does_not_answer_is_unreachable_and_start_goes_on():
    chain = FakeChain()
    chain.unreachable = True
    status = await check_chain(FakeChainClient(chain), _settings())
    assert status.state == "unreachable"
    refuse_wrong_chain(status)


async def test_the_originally_deployed_contract_is_ok_without_payment_refs():
    status = await check_chain(FakeChainClient(FakeChain(payment_ref=False)), _settings())
    assert status.state == "ok" and status.payment_ref is False

"""Amounts are shown with the token contract's own symbol; FILECOIN_TOKEN_SYMBOL is only the
fallback when no chain is configured or the token cannot answer."""

from __future__ import annotations

from parity.chain.fake import FakeChain, FakeChainClient
from parity.ledger.deps import StakeReader


async def test_the_symbol_comes_from_the_contract() -> None:
    reader = StakeReader(lambda: FakeChainClient(FakeChain(symbol="PRTY")), 0)
    assert await reader.symbol("TOKEN") == "PRTY"


async def test_without_a_chain_the_configured_symbol_is_used() -> None:
    assert await StakeReader(lambda: None, 0).symbol("TOKEN") == "TOKEN"


async def test_an_unreachable_chain_falls_back_to_the_configured_symbol() -> None:
    chain = FakeChain()
    chain.unreachable = True
    assert await StakeReader(lambda: FakeChainClient(chain), 0).symbol("TOKEN") == "TOKEN"

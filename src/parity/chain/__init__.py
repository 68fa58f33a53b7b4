"""The chain: token balances and stakes on an EVM chain (Filecoin FEVM in production, anvil in
development). :mod:`parity.chain.ports` is the port; :mod:`parity.chain.web3_adapter` and
:mod:`parity.chain.fake` implement it; both pass tests/contract/test_chain_client.py."""

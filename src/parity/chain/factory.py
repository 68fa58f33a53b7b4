"""Which chain client the settings select."""

from __future__ import annotations

from parity.chain.ports import ChainClient
from parity.config import Settings


def open_chain_client(settings: Settings) -> ChainClient | None:
    """The web3 adapter when FILECOIN_RPC is set, else None (chain features off)."""
    if not settings.filecoin_rpc:
        return None
    # Imported here: web3 takes a second or two to import, and most processes never need it.
    from parity.chain.web3_adapter import Web3ChainClient, Web3Options

    return Web3ChainClient(
        settings.filecoin_rpc,
        chain_id=settings.filecoin_chain_id,
        stake_wallet_address=settings.filecoin_stake_wallet_address,
        token_address=settings.filecoin_token_address,
        options=Web3Options(
            request_timeout_seconds=settings.filecoin_rpc_timeout_seconds,
            receipt_timeout_seconds=settings.filecoin_receipt_timeout_seconds,
            poll_interval_seconds=settings.filecoin_receipt_poll_seconds,
            gas_margin=settings.filecoin_gas_margin,
        ),
    )

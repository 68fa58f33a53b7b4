"""dev-chain writes its addresses into .env and keeps every other line."""

from __future__ import annotations

from pathlib import Path

from parity.chain.devchain import dev_accounts, update_env_text, write_env_file

VALUES = {"FILECOIN_RPC": "http://127.0.0.1:8545", "FILECOIN_CHAIN_ID": "314159"}


def test_existing_keys_are_replaced_in_place_and_others_kept():
    text = (
        "# my settings\nLOG_LEVEL=debug\nFILECOIN_RPC=https://old\n"
        "export FILECOIN_CHAIN_ID=1\n# FILECOIN_RPC=commented stays\nSERVER_PORT=9000\n"
    )
    assert update_env_text(text, VALUES) == (
        "# my settings\nLOG_LEVEL=debug\nFILECOIN_RPC=http://127.0.0.1:8545\n"
        "FILECOIN_CHAIN_ID=314159\n# FILECOIN_RPC=commented stays\nSERVER_PORT=9000\n"
    )


def test_missing_keys_are_appended_and_duplicates_dropped():
    text = "FILECOIN_RPC=a\nLOG_LEVEL=info\nFILECOIN_RPC=b"
    assert update_env_text(text, VALUES) == (
        "FILECOIN_RPC=http://127.0.0.1:8545\nLOG_LEVEL=info\n\n"
        "# written by `parity-server dev-chain`\nFILECOIN_CHAIN_ID=314159\n"
    )


def test_the_env_file_is_created_when_absent(tmp_path: Path):
    path = tmp_path / ".env"
    write_env_file(path, VALUES)
    write_env_file(path, VALUES)  # idempotent
    assert path.read_text() == (
        "# written by `parity-server dev-chain`\n"
        "FILECOIN_RPC=http://127.0.0.1:8545\nFILECOIN_CHAIN_ID=314159\n"
    )


def test_dev_accounts_are_anvils_well_known_ones():
    first = dev_accounts(2)
    assert first[0].address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert first[1].address == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"

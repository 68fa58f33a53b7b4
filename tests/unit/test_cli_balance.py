"""`parity-server balance --keystore X` shows X's account only: the chain's numbers for X's
address and the ledger's, asked with X's own session; amounts carry the token's own symbol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from eth_account import Account
from typer.testing import CliRunner

from parity.chain import keystore
from parity.chain.fake import FakeChain, FakeChainClient
from parity.cli import chain as chain_cli
from parity.cli import ledger_view
from parity.cli.chain import register_chain_commands
from parity.cli.credentials import save_token

SERVER = "http://parity.test:8080"
TOKEN = 10**18
CLIENT = Account.from_key("0x" + "22" * 32)
RUNNER = Account.from_key("0x" + "44" * 32)
EXPIRES = "2030-01-01T00:00:00Z"


class Ledger:
    """GET /api/v1/ledger/balance answering per session token."""

    def __init__(self) -> None:
        self.tokens_seen: list[str] = []
        self.by_token = {
            "client-token": {"available": str(40 * TOKEN), "pending_earnings": "0"},
            "runner-token": {"available": str(3 * TOKEN), "pending_earnings": str(TOKEN // 4)},
        }

    def get(self, url: str, *, headers: dict[str, str], **_: Any) -> httpx.Response:
        assert url == SERVER + "/api/v1/ledger/balance"
        token = headers["Authorization"].removeprefix("Bearer ")
        self.tokens_seen.append(token)
        body = {**self.by_token[token], "settled_earnings": "0", "symbol": "PRTY"}
        return httpx.Response(200, json=body)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Ledger]:
    monkeypatch.setattr(keystore, "SCRYPT_N", 2**10)
    monkeypatch.delenv("PARITY_SERVER_URL", raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("PARITY_HOME", str(home))  # never the developer's ~/.parity
    keystore.create_keystore(home / "keystore.json", "pw", "0x" + bytes(CLIENT.key).hex())
    keystore.create_keystore(home / "runner.json", "pw", "0x" + bytes(RUNNER.key).hex())
    creds = home / "credentials.json"
    save_token(creds, SERVER, RUNNER.address, "runner-token", EXPIRES)
    save_token(creds, SERVER, CLIENT.address, "client-token", EXPIRES)  # the latest sign-in

    chain = FakeChain()
    chain.mint(CLIENT.address, 100 * TOKEN)
    chain.mint(RUNNER.address, 7 * TOKEN)
    monkeypatch.setattr(chain_cli, "open_chain_client", lambda _settings: FakeChainClient(chain))
    ledger = Ledger()
    monkeypatch.setattr(ledger_view.httpx, "get", ledger.get)

    config = tmp_path / "chain.env"
    config.write_text(
        "FILECOIN_RPC=http://chain.invalid\n"
        f"FILECOIN_STAKE_WALLET_ADDRESS={chain.stake_wallet_address}\n"
    )
    monkeypatch.setenv("PARITY_CONFIG_PATH", str(config))
    return home, ledger


def _balance(*args: str) -> tuple[int, str]:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Keeps `balance` a subcommand."""

    register_chain_commands(app)
    result = CliRunner().invoke(app, ["balance", *args])
    return result.exit_code, result.output


def test_balance_of_a_second_keystore_shows_that_account_only(
    setup: tuple[Path, Ledger],
) -> None:
    home, ledger = setup

    code, out = _balance("--keystore", str(home / "runner.json"), "--server", SERVER)

    assert code == 0, out
    assert f"address: {RUNNER.address.lower()}" in out
    assert "wallet: 7.0 PRTY" in out
    assert "available after reservations: 3.0 PRTY" in out
    assert "pending earnings: 0.25 PRTY" in out
    assert ledger.tokens_seen == ["runner-token"]  # never the other account's session


def test_without_server_the_last_sign_in_is_asked_with_the_keystores_session(
    setup: tuple[Path, Ledger],
) -> None:
    home, ledger = setup

    code, out = _balance("--keystore", str(home / "keystore.json"))

    assert code == 0, out
    assert "wallet: 100.0 PRTY" in out
    assert "available after reservations: 40.0 PRTY" in out
    assert ledger.tokens_seen == ["client-token"]


def test_an_address_without_a_session_is_not_shown_anothers_ledger(
    setup: tuple[Path, Ledger], tmp_path: Path
) -> None:
    _, ledger = setup
    stranger = Account.from_key("0x" + "55" * 32)

    code, out = _balance("--address", stranger.address, "--server", SERVER)

    assert code == 0, out
    assert "available after reservations: n/a (ledger not available)" in out
    assert f"{stranger.address} is not signed in to {SERVER}" in out
    assert ledger.tokens_seen == []


def test_an_unsigned_keystore_is_told_the_command_with_its_own_path(
    setup: tuple[Path, Ledger], tmp_path: Path
) -> None:
    stranger = Account.from_key("0x" + "55" * 32)
    path = tmp_path / "elsewhere" / "wallet.json"
    keystore.create_keystore(path, "pw", "0x" + bytes(stranger.key).hex())

    code, out = _balance("--keystore", str(path), "--server", SERVER)

    assert code == 0, out
    assert f"run `parity-server auth --keystore {path} --server {SERVER}`" in out
    assert "KEYSTORE" not in out

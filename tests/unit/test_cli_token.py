"""`parity-server token` prints the session stored for the keystore's address on the chosen
server, and says how to sign in when there is none (or it expired)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from parity.chain import keystore
from parity.chain.keystore import create_keystore
from parity.cli.credentials import save_token
from parity.cli.main import app

SERVER = "http://127.0.0.1:9999"
KEY_A = "0x" + "a1" * 32
KEY_B = "0x" + "b2" * 32


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(keystore, "SCRYPT_N", 2**10)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PARITY_HOME", str(tmp_path / "parity"))
    monkeypatch.delenv("PARITY_SERVER_URL", raising=False)
    monkeypatch.chdir(tmp_path)


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["token", *args])
    return result.exit_code, result.stdout, result.stderr


def test_prints_the_session_of_the_keystores_address(tmp_path: Path):
    home = tmp_path / "parity"
    a = create_keystore(home / "keystore.json", "pw", KEY_A)
    b = create_keystore(home / "runner.json", "pw", KEY_B)
    save_token(home / "credentials.json", SERVER, a, "ps_sess_aaaa", "2999-01-01T00:00:00Z")
    save_token(home / "credentials.json", SERVER, b, "ps_sess_bbbb", "2999-01-01T00:00:00Z")

    assert _run("--server", SERVER) == (0, "ps_sess_aaaa\n", "")
    code, out, _ = _run("--keystore", str(home / "runner.json"))  # server: the last sign-in
    assert (code, out) == (0, "ps_sess_bbbb\n")


def test_without_a_session_it_says_how_to_sign_in(tmp_path: Path):
    create_keystore(tmp_path / "parity" / "keystore.json", "pw", KEY_A)
    code, out, err = _run("--server", SERVER)
    assert (code, out) == (1, "")
    assert "no session for 0x" in err
    assert f"parity-server auth --server {SERVER}" in err


def test_an_expired_session_is_not_printed(tmp_path: Path):
    home = tmp_path / "parity"
    a = create_keystore(home / "keystore.json", "pw", KEY_A)
    save_token(home / "credentials.json", SERVER, a, "ps_sess_old", "2001-01-01T00:00:00Z")
    code, out, err = _run("--server", SERVER)
    assert (code, out) == (1, "")
    assert "expired at 2001-01-01T00:00:00Z" in err

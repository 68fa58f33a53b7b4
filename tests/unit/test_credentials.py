"""credentials.json keeps one session per (server, address), and still reads the old
one-session-per-server files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from parity.cli.credentials import (
    CredentialsError,
    credentials_path,
    last_server,
    load_token,
    remove_token,
    save_token,
)

SERVER = "http://parity.test:8080"
OTHER_SERVER = "http://other.test"
CLIENT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
RUNNER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
EXPIRES = "2030-01-01T00:00:00Z"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "credentials.json"


def test_two_addresses_on_one_server_keep_their_own_sessions(path: Path) -> None:
    save_token(path, SERVER, CLIENT, "client-token", EXPIRES)
    save_token(path, SERVER, RUNNER, "runner-token", EXPIRES)

    client = load_token(path, SERVER, CLIENT)
    runner = load_token(path, SERVER, RUNNER)
    assert client is not None and (client.address, client.token) == (CLIENT, "client-token")
    assert runner is not None and (runner.address, runner.token) == (RUNNER, "runner-token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_address_is_one_account_whatever_its_case(path: Path) -> None:
    save_token(path, SERVER, CLIENT, "first", EXPIRES)
    save_token(path, SERVER + "/", CLIENT.lower(), "second", EXPIRES)

    stored = load_token(path, SERVER, CLIENT.upper().replace("0X", "0x"))
    assert stored is not None and stored.token == "second"
    assert len(json.loads(path.read_text())["sessions"][SERVER]) == 1


def test_another_addresses_session_never_stands_in(path: Path) -> None:
    save_token(path, SERVER, CLIENT, "client-token", EXPIRES)
    assert load_token(path, SERVER, RUNNER) is None
    assert load_token(path, OTHER_SERVER, CLIENT) is None


def test_without_an_address_the_session_saved_last_for_that_server_is_used(path: Path) -> None:
    save_token(path, SERVER, CLIENT, "client-token", EXPIRES)
    save_token(path, SERVER, RUNNER, "runner-token", EXPIRES)
    save_token(path, OTHER_SERVER, CLIENT, "elsewhere", EXPIRES)

    latest = load_token(path, SERVER)
    assert latest is not None and latest.token == "runner-token"
    save_token(path, SERVER, CLIENT, "client-again", EXPIRES)
    latest = load_token(path, SERVER)
    assert latest is not None and latest.token == "client-again"


def test_the_server_signed_in_to_last_is_remembered(path: Path) -> None:
    assert last_server(path) is None
    save_token(path, SERVER + "/", CLIENT, "a", EXPIRES)
    assert last_server(path) == SERVER
    save_token(path, OTHER_SERVER, RUNNER, "b", EXPIRES)
    assert last_server(path) == OTHER_SERVER


def test_removing_one_addresses_session_keeps_the_others(path: Path) -> None:
    save_token(path, SERVER, CLIENT, "client-token", EXPIRES)
    save_token(path, SERVER, RUNNER, "runner-token", EXPIRES)

    assert remove_token(path, SERVER, CLIENT) is True
    assert load_token(path, SERVER, CLIENT) is None
    assert load_token(path, SERVER, RUNNER) is not None
    assert remove_token(path, SERVER, CLIENT) is False
    assert remove_token(path, SERVER) is True  # every session on the server
    assert load_token(path, SERVER) is None


def test_a_file_in_the_old_one_session_per_server_layout_is_still_read(path: Path) -> None:
    path.parent.mkdir(parents=True)
    old = {"servers": {SERVER: {"address": CLIENT, "token": "old-token", "expires_at": EXPIRES}}}
    path.write_text(json.dumps(old))

    stored = load_token(path, SERVER, CLIENT)
    assert stored is not None and stored.token == "old-token"
    assert load_token(path, SERVER, RUNNER) is None
    assert last_server(path) == SERVER  # the only server it knew

    # The next save writes the current layout and keeps the migrated session.
    save_token(path, SERVER, RUNNER, "runner-token", EXPIRES)
    doc = json.loads(path.read_text())
    assert "servers" not in doc and doc["version"] == 2
    kept = load_token(path, SERVER, CLIENT)
    assert kept is not None and kept.token == "old-token"


def test_an_unreadable_file_gives_a_message_naming_it(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(CredentialsError, match=f"credentials file {path} is not valid JSON"):
        load_token(path, SERVER, CLIENT)
    path.write_text(json.dumps({"servers": {SERVER: {"token": "t"}}}))
    with pytest.raises(CredentialsError, match="incomplete entry"):
        load_token(path, SERVER)


def test_the_credentials_file_lives_beside_the_keystore(tmp_path: Path) -> None:
    assert credentials_path(tmp_path / "keys" / "runner.json") == (
        tmp_path / "keys" / "credentials.json"
    )

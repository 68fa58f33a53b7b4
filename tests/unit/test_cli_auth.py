from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import typer
from eth_account import Account
from eth_account.messages import encode_defunct
from typer.testing import CliRunner

from parity.chain import keystore
from parity.chain.keystore import create_keystore, read_address
from parity.cli import auth
from parity.cli.auth import SignInError, register_auth_command, sign_in
from parity.cli.credentials import load_token, remove_token, save_token

TEST_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
TEST_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
SERVER = "http://parity.test"
EXPIRES_AT = "2030-01-01T00:00:00Z"


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keystore, "SCRYPT_N", 2**10)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never touch the developer's real ~/.parity.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PARITY_HOME", raising=False)
    monkeypatch.delenv("PARITY_KEYSTORE_PASSWORD", raising=False)


def _envelope(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "details": {}}})


class FakeAuthServer:
    """The nonce/token endpoints, verifying EIP-191 signatures for real."""

    def __init__(self, prefix: str = "/api/v1") -> None:
        self.prefix = prefix
        self.nonces: dict[str, tuple[str, str]] = {}  # nonce -> (address, message)
        self.issued: dict[str, str] = {}  # token -> address
        self.timeouts: list[object] = []
        self.corrupt_messages = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.timeouts.append(request.extensions.get("timeout"))
        body = json.loads(request.content)
        if request.method == "POST" and request.url.path == f"{self.prefix}/auth/nonce":
            nonce = secrets.token_hex(16)
            message = f"Sign in to parity\nAddress: {body['address']}\nNonce: {nonce}"
            # Simulates a server whose record differs from what it sent.
            stored = message + " (altered)" if self.corrupt_messages else message
            self.nonces[nonce] = (body["address"], stored)
            return httpx.Response(200, json={"nonce": nonce, "message": message})
        if request.method == "POST" and request.url.path == f"{self.prefix}/auth/token":
            entry = self.nonces.pop(body["nonce"], None)
            if entry is None or entry[0] != body["address"]:
                return _envelope(401, "invalid_nonce", "unknown or expired nonce")
            recovered = Account.recover_message(
                encode_defunct(text=entry[1]), signature=body["signature"]
            )
            if recovered != body["address"]:
                return _envelope(401, "bad_signature", "signature does not match address")
            token = secrets.token_urlsafe(16)
            self.issued[token] = recovered
            return httpx.Response(200, json={"token": token, "expires_at": EXPIRES_AT})
        return _envelope(404, "not_found", "no such route")

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(base_url=SERVER, transport=httpx.MockTransport(handler))


# --- sign_in -----------------------------------------------------------------


def test_sign_in_returns_token_for_valid_signature() -> None:
    server = FakeAuthServer()
    account = Account.from_key(TEST_KEY)

    with _client(server.handler) as client:
        token, expires_at = sign_in(client, account)

    assert server.issued[token] == TEST_ADDRESS
    assert expires_at == EXPIRES_AT
    assert server.nonces == {}  # the nonce was consumed


def test_sign_in_sets_ten_second_timeout_on_every_request() -> None:
    server = FakeAuthServer()
    with _client(server.handler) as client:
        sign_in(client, Account.from_key(TEST_KEY))

    assert len(server.timeouts) == 2
    for timeout in server.timeouts:
        assert isinstance(timeout, dict)
        assert set(timeout.values()) == {10.0}


def test_sign_in_honours_custom_api_prefix() -> None:
    server = FakeAuthServer(prefix="/v2")
    with _client(server.handler) as client:
        token, _ = sign_in(client, Account.from_key(TEST_KEY), api_prefix="/v2/")
    assert token in server.issued


def test_sign_in_rejected_signature_raises_with_server_message() -> None:
    server = FakeAuthServer()
    server.corrupt_messages = True

    with _client(server.handler) as client, pytest.raises(SignInError) as info:
        sign_in(client, Account.from_key(TEST_KEY))

    assert "signature does not match address" in str(info.value)
    assert info.value.status_code == 401
    assert info.value.code == "bad_signature"
    assert server.issued == {}


def test_sign_in_server_401_envelope_on_nonce_raises_sign_in_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return _envelope(401, "unauthorized", "address is banned")

    with _client(handler) as client, pytest.raises(SignInError, match="address is banned"):
        sign_in(client, Account.from_key(TEST_KEY))


def test_sign_in_non_json_error_reports_http_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    with _client(handler) as client, pytest.raises(SignInError, match="HTTP 502"):
        sign_in(client, Account.from_key(TEST_KEY))


def test_sign_in_incomplete_success_answer_raises_sign_in_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"nonce": "abc"})

    with _client(handler) as client, pytest.raises(SignInError, match="lacks nonce, message"):
        sign_in(client, Account.from_key(TEST_KEY))


# --- credentials ---------------------------------------------------------------


def test_credentials_round_trip_private_and_per_server(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "credentials.json"
    save_token(path, "https://a.example/", TEST_ADDRESS, "tok-a", EXPIRES_AT)
    save_token(path, "https://b.example", TEST_ADDRESS, "tok-b", EXPIRES_AT)

    stored = load_token(path, "https://a.example")
    assert stored is not None
    assert (stored.token, stored.address, stored.expires_at) == ("tok-a", TEST_ADDRESS, EXPIRES_AT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    assert remove_token(path, "https://a.example") is True
    assert load_token(path, "https://a.example") is None
    b = load_token(path, "https://b.example")
    assert b is not None and b.token == "tok-b"
    assert remove_token(path, "https://a.example") is False


def test_load_token_without_file_returns_none(tmp_path: Path) -> None:
    assert load_token(tmp_path / "credentials.json", SERVER) is None


# --- the `auth` command -----------------------------------------------------------


def _app(transport: httpx.BaseTransport | None = None) -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Keeps `auth` a subcommand instead of Typer's single-command shortcut."""

    register_auth_command(app, transport=transport)
    return app


def _invoke(
    args: list[str], password: str | None = "s3cret", transport: httpx.BaseTransport | None = None
) -> tuple[int, str]:
    env = {"PARITY_KEYSTORE_PASSWORD": password} if password is not None else {}
    result = CliRunner().invoke(_app(transport), ["auth", *args], env=env)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_auth_new_creates_keystore_non_interactively(tmp_path: Path) -> None:
    path = tmp_path / "ks" / "keystore.json"

    code, output = _invoke(["--keystore", str(path), "--new"])

    assert code == 0, output
    address = read_address(path)
    assert address in output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keystore.load_account(path, "s3cret").address == address


def test_auth_imports_private_key_and_prints_its_address(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"

    code, output = _invoke(["--keystore", str(path), "--private-key", TEST_KEY])

    assert code == 0, output
    assert TEST_ADDRESS in output
    assert read_address(path) == TEST_ADDRESS
    assert TEST_KEY[2:].encode() not in path.read_bytes()


@pytest.mark.parametrize("extra", [[], ["--server", SERVER], ["--sign-in"]])
def test_auth_without_new_refuses_a_keystore_path_with_no_file(
    tmp_path: Path, extra: list[str]
) -> None:
    """A mistyped --keystore is an error naming the path and the flags that create one, not a
    fresh empty wallet signed in under the typo."""
    path = tmp_path / "walet.json"
    server = FakeAuthServer()

    code, output = _invoke(
        ["--keystore", str(path), *extra], password=None, transport=server.transport()
    )

    assert code == 1
    assert f"error: keystore not found at {path}; use --new to create one" in output
    assert "--private-key" in output
    assert "Keystore password" not in output  # said before any prompt
    assert not path.exists() and not (tmp_path / "credentials.json").exists()
    assert server.issued == {}


def test_auth_loads_existing_keystore(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    create_keystore(path, "s3cret", TEST_KEY)
    before = path.read_bytes()

    code, output = _invoke(["--keystore", str(path)])

    assert code == 0, output
    assert TEST_ADDRESS in output
    assert path.read_bytes() == before


def test_auth_wrong_password_exits_1_with_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    create_keystore(path, "right", TEST_KEY)

    code, output = _invoke(["--keystore", str(path)], password="wrong")

    assert code == 1
    assert f"error: wrong password for keystore {path}" in output
    assert TEST_ADDRESS not in output


def test_auth_malformed_private_key_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    code, output = _invoke(["--keystore", str(path), "-k", "0xdeadbeef"])
    assert code == 1
    assert "invalid private key" in output
    assert not path.exists()


def test_auth_new_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    create_keystore(path, "s3cret", TEST_KEY)

    code, output = _invoke(["--keystore", str(path), "--new"])
    assert code == 1
    assert "already exists" in output and "--force" in output
    assert read_address(path) == TEST_ADDRESS

    code, output = _invoke(["--keystore", str(path), "--new", "--force"])
    assert code == 0, output
    assert read_address(path) != TEST_ADDRESS
    assert read_address(path) in output


def test_auth_reimporting_the_stored_key_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    create_keystore(path, "s3cret", TEST_KEY)
    before = path.read_bytes()

    code, output = _invoke(["--keystore", str(path), "-k", TEST_KEY], password=None)

    assert code == 0, output
    assert TEST_ADDRESS in output
    assert path.read_bytes() == before


def test_auth_importing_a_different_key_over_keystore_needs_force(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    original = create_keystore(path, "s3cret")

    code, output = _invoke(["--keystore", str(path), "-k", TEST_KEY])

    assert code == 1
    assert "already exists" in output
    assert read_address(path) == original


def test_auth_default_keystore_honours_parity_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "parity-home"
    monkeypatch.setenv("PARITY_HOME", str(home))

    code, output = _invoke(["-k", TEST_KEY])

    assert code == 0, output
    assert read_address(home / "keystore.json") == TEST_ADDRESS


def test_auth_with_server_signs_in_and_stores_token(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    server = FakeAuthServer()

    code, output = _invoke(
        ["--keystore", str(path), "-k", TEST_KEY, "--server", SERVER],
        transport=server.transport(),
    )

    assert code == 0, output
    assert f"signed in to {SERVER} as {TEST_ADDRESS}, token expires at {EXPIRES_AT}" in output
    creds = tmp_path / "credentials.json"
    stored = load_token(creds, SERVER)
    assert stored is not None
    assert server.issued[stored.token] == TEST_ADDRESS
    assert stored.token not in output  # the bearer token stays out of the terminal
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600


def test_auth_uses_monkeypatched_client_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FakeAuthServer()
    seen: list[str] = []

    def factory(base_url: str, transport: httpx.BaseTransport | None) -> httpx.Client:
        seen.append(base_url)
        return httpx.Client(base_url=base_url, transport=server.transport())

    monkeypatch.setattr(auth, "_client_factory", factory)
    code, output = _invoke(["--keystore", str(tmp_path / "k.json"), "--new", "--server", SERVER])

    assert code == 0, output
    assert seen == [SERVER]
    assert len(server.issued) == 1


def test_auth_server_refusal_exits_1_with_server_message(tmp_path: Path) -> None:
    server = FakeAuthServer()
    server.corrupt_messages = True

    code, output = _invoke(
        ["--keystore", str(tmp_path / "k.json"), "--new", "--server", SERVER],
        transport=server.transport(),
    )

    assert code == 1
    assert "signature does not match address" in output
    assert not (tmp_path / "credentials.json").exists()


def test_auth_unreachable_server_exits_1_with_one_line_error(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    code, output = _invoke(
        ["--keystore", str(tmp_path / "k.json"), "--new", "--server", SERVER],
        transport=httpx.MockTransport(refuse),
    )

    assert code == 1
    assert f"error: cannot reach {SERVER} (from --server): connection refused" in output
    # The keystore was still created; only the sign-in failed.
    assert (tmp_path / "k.json").exists()


def test_sign_in_that_cannot_reach_its_server_says_where_the_url_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setenv("PARITY_SERVER_URL", SERVER)
    code, output = _invoke(
        ["--keystore", str(tmp_path / "k.json"), "--new", "--sign-in"],
        transport=httpx.MockTransport(refuse),
    )

    assert code == 1
    assert f"error: cannot reach {SERVER} (from PARITY_SERVER_URL): connection refused" in output


def test_auth_server_timeout_exits_1(tmp_path: Path) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    code, output = _invoke(
        ["--keystore", str(tmp_path / "k.json"), "--new", "--server", SERVER],
        transport=httpx.MockTransport(slow),
    )

    assert code == 1
    assert f"error: timed out talking to {SERVER}" in output


@pytest.mark.parametrize("bad_url", ["parity.test:8000", "ftp://parity.test", "http://[::1"])
def test_auth_invalid_server_url_exits_1_before_touching_keystore(
    tmp_path: Path, bad_url: str
) -> None:
    path = tmp_path / "k.json"
    code, output = _invoke(["--keystore", str(path), "--server", bad_url])
    assert code == 1
    assert "invalid --server URL" in output
    assert not path.exists()


def test_auth_prompts_for_password_with_confirmation_when_env_unset(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    result = CliRunner().invoke(
        _app(), ["auth", "--keystore", str(path), "-k", TEST_KEY], input="pw\nxx\npw\npw\n"
    )
    assert result.exit_code == 0, result.output
    assert "Repeat for confirmation" in result.output
    assert "do not match" in result.output  # a mistyped confirmation is asked again
    assert "pw" not in result.output  # hidden input is not echoed
    assert keystore.load_account(path, "pw").address == TEST_ADDRESS


# --- a second keystore instead of --force; sessions per (server, address) -------------


def test_auth_refusal_suggests_a_second_keystore_and_says_force_destroys(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    original = create_keystore(path, "s3cret")

    code, output = _invoke(["--keystore", str(path), "--private-key", TEST_KEY])

    assert code == 1
    assert f"--keystore {tmp_path / 'OTHER.json'}" in output
    assert "destroys its key" in output
    assert read_address(path) == original


def test_auth_force_still_replaces_but_warns_the_old_key_is_destroyed(tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    original = create_keystore(path, "s3cret")

    code, output = _invoke(["--keystore", str(path), "--private-key", TEST_KEY, "--force"])

    assert code == 0, output
    assert f"the key of {original} is destroyed" in output
    assert read_address(path) == TEST_ADDRESS


def test_auth_help_says_force_destroys_the_key() -> None:
    result = CliRunner().invoke(_app(), ["auth", "--help"], env={"COLUMNS": "200"})
    assert "DESTROYED" in result.output and "--keystore" in result.output


def test_two_keystores_in_one_folder_keep_a_session_each(tmp_path: Path) -> None:
    server = FakeAuthServer()
    first, second = tmp_path / "keystore.json", tmp_path / "runner.json"

    code, output = _invoke(
        ["--keystore", str(first), "--new", "--server", SERVER], transport=server.transport()
    )
    assert code == 0, output
    code, output = _invoke(
        ["--keystore", str(second), "-k", TEST_KEY, "--server", SERVER],
        transport=server.transport(),
    )
    assert code == 0, output

    creds = tmp_path / "credentials.json"
    mine = load_token(creds, SERVER, read_address(first))
    runners = load_token(creds, SERVER, TEST_ADDRESS)
    assert mine is not None and runners is not None
    assert server.issued[mine.token] == read_address(first)
    assert server.issued[runners.token] == TEST_ADDRESS


def test_auth_sign_in_without_a_url_uses_the_server_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FakeAuthServer()
    path = tmp_path / "keystore.json"
    monkeypatch.setenv("PARITY_SERVER_URL", SERVER)

    code, output = _invoke(
        ["--keystore", str(path), "-k", TEST_KEY, "--sign-in"], transport=server.transport()
    )

    assert code == 0, output
    assert f"signed in to {SERVER} as {TEST_ADDRESS}" in output
    assert load_token(tmp_path / "credentials.json", SERVER, TEST_ADDRESS) is not None


def test_a_keystore_that_cannot_be_written_is_named_not_its_temporary_file(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "ro"
    blocked.mkdir()
    blocked.chmod(0o500)  # no new files in it (root ignores modes: a file is in the way below)
    path = blocked / "k.json"
    if os.access(blocked, os.W_OK):
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "k.json"  # its parent is a file: nothing can be made there
    code, output = _invoke(["--keystore", str(path), "--new"])
    assert code == 1
    assert output.strip().endswith(f": {path}"), output
    assert ".tmp" not in output

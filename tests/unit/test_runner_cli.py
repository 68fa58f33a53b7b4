"""The runner's client side: registering without push when the server refuses the webhook,
`parity-runner status` showing what the wallet's runners earned (with the stored session, the
password only without one), and its flags' usage errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from parity.agent import RUNNER_VERSION
from parity.agent import cli as runner_cli
from parity.agent.client import ServerClient, ServerError
from parity.chain import keystore
from parity.cli.credentials import load_token, save_token

KEY = "0x" + "44" * 32
REFUSED = {
    "error": {
        "code": "webhook_url_refused",
        "message": "webhook: 127.0.0.1 resolves to 127.0.0.1, a loopback address",
        "details": {"field": "webhook"},
    }
}
REGISTERED = {"runner": {"id": "r1"}, "runner_token": "ps_run_x", "claims": []}


def _client(handler: Any) -> ServerClient:
    return ServerClient("http://parity.test", transport=httpx.MockTransport(handler))


async def test_a_refused_webhook_registers_again_without_it_and_says_so() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        return httpx.Response(
            422 if "webhook" in body else 201, json=REFUSED if "webhook" in body else REGISTERED
        )

    client = _client(handler)
    refusals: list[ServerError] = []
    client.on_push_refused = refusals.append
    try:
        reg = await client.register({"device_id": "d", "webhook": "http://127.0.0.1:9/webhook"})
    finally:
        await client.close()
    assert reg["runner"]["id"] == "r1" and client.runner_token == "ps_run_x"
    assert [("webhook" in b) for b in bodies] == [True, False]
    assert [r.code for r in refusals] == ["webhook_url_refused"]


async def test_a_validation_error_on_the_webhook_field_is_a_refusal_of_push_too() -> None:
    invalid = {
        "error": {
            "code": "validation_error",
            "message": "invalid request",
            "details": {"errors": [{"field": "webhook", "message": "too long"}]},
        }
    }

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        return (
            httpx.Response(422, json=invalid)
            if "webhook" in body
            else httpx.Response(201, json=REGISTERED)
        )

    client = _client(handler)
    refusals: list[ServerError] = []
    client.on_push_refused = refusals.append
    try:
        await client.register({"device_id": "d", "webhook": "http://x/" + "a" * 3000})
    finally:
        await client.close()
    assert len(refusals) == 1


async def test_other_refusals_still_stop_the_registration() -> None:
    owned = {"error": {"code": "device_owned_by_other_wallet", "message": "no", "details": {}}}
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(409, json=owned)

    client = _client(handler)
    client.on_push_refused = lambda refusal: pytest.fail("not a webhook refusal")
    try:
        with pytest.raises(ServerError, match="device_owned_by_other_wallet"):
            await client.register({"device_id": "d", "webhook": "http://127.0.0.1:9/webhook"})
    finally:
        await client.close()
    assert calls == [1]


class FakeServer:
    def __init__(self, balance: httpx.Response) -> None:
        self.balance = balance

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/auth/nonce":
            return httpx.Response(200, json={"nonce": "n", "message": "sign me"})
        if path == "/api/v1/auth/token":
            return httpx.Response(200, json={"token": "ps_sess_x", "expires_at": "2030"})
        if path == "/api/v1/runners":
            runner = {
                "id": "r1",
                "device_id": "d" * 64,
                "status": "online",
                "active_claims": 0,
                "max_concurrent_tasks": 1,
                "last_heartbeat": "2030-01-01T00:00:00Z",
                "runner_version": "2.0.0",
            }
            return httpx.Response(200, json={"items": [runner]})
        if path == "/api/v1/ledger/balance":
            return self.balance
        return httpx.Response(404)


def _status(server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setattr(keystore, "SCRYPT_N", 2**10)
    path = tmp_path / "runner.json"
    keystore.create_keystore(path, "pw", KEY)
    monkeypatch.setattr(
        runner_cli,
        "ServerClient",
        lambda url: ServerClient(url, transport=httpx.MockTransport(server.handler)),
    )
    args = ["status", "--server", "http://parity.test", "--keystore", str(path)]
    result = CliRunner().invoke(runner_cli.app, args, env={"PARITY_KEYSTORE_PASSWORD": "pw"})
    return result.exit_code, result.output


def test_status_shows_the_wallets_pending_and_paid_earnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    balance = {
        "pending_earnings": "0",
        "settled_earnings": "95000000000000000",
        "symbol": "PRTY",
        "display": {"pending_earnings": "0.0", "settled_earnings": "0.095"},
    }
    code, out = _status(FakeServer(httpx.Response(200, json=balance)), tmp_path, monkeypatch)
    assert code == 0, out
    assert "not priced" not in out
    assert "pending 0.0 PRTY, paid 0.095 PRTY" in out


def test_status_says_not_priced_only_when_the_server_has_no_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_chain = {"error": {"code": "chain_not_configured", "message": "no chain", "details": {}}}
    code, out = _status(FakeServer(httpx.Response(409, json=no_chain)), tmp_path, monkeypatch)
    assert code == 0, out
    assert "earnings: not priced (the server has no chain configured" in out


# --- `parity-runner status`: the stored session first, the password only without one ---------


class CountingServer(FakeServer):
    """FakeServer that records the sign-ins and the bearer tokens it was shown, refusing the
    ones listed in ``revoked``."""

    def __init__(self, revoked: frozenset[str] = frozenset()) -> None:
        super().__init__(httpx.Response(200, json={"display": {}, "symbol": "PRTY"}))
        self.revoked = revoked
        self.sign_ins = 0
        self.bearers: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/auth/token":
            self.sign_ins += 1
            return httpx.Response(
                200,
                json={"token": f"ps_sess_{self.sign_ins}", "expires_at": "2099-01-01T00:00:00Z"},
            )
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if bearer:
            self.bearers.append(bearer)
        if bearer in self.revoked:
            body = {"error": {"code": "token_invalid", "message": "token revoked", "details": {}}}
            return httpx.Response(401, json=body)
        return super().handler(request)


def _status_with(
    server: CountingServer,
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    monkeypatch.setattr(
        runner_cli,
        "ServerClient",
        lambda url: ServerClient(url, transport=httpx.MockTransport(server.handler)),
    )
    monkeypatch.delenv("PARITY_KEYSTORE_PASSWORD", raising=False)
    args = ["status", "--server", "http://parity.test", "--keystore", str(path)]
    result = CliRunner().invoke(runner_cli.app, args, env=env or {}, input="")
    return result.exit_code, result.output


@pytest.mark.parametrize("content", [None, b'{"not": "a keystore"}'])
def test_status_says_a_missing_or_malformed_keystore_before_asking_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes | None
) -> None:
    path = tmp_path / "runner.json"
    if content is not None:
        path.write_bytes(content)
    server = CountingServer()

    code, out = _status_with(server, path, monkeypatch)

    assert code == 1
    assert "Keystore password" not in out
    why = f"keystore not found at {path}" if content is None else f"{path} is not a V3 keystore"
    assert out.startswith(f"error: {why}"), out
    assert server.sign_ins == 0


def test_status_reuses_the_stored_session_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keystore, "SCRYPT_N", 2**10)
    path = tmp_path / "runner.json"
    address = keystore.create_keystore(path, "pw", KEY)
    save_token(
        tmp_path / "credentials.json",
        "http://parity.test",
        address,
        "ps_sess_stored",
        "2099-01-01T00:00:00Z",
    )
    server = CountingServer()

    code, out = _status_with(server, path, monkeypatch)  # no password anywhere

    assert code == 0, out
    assert "status=online" in out
    assert server.sign_ins == 0
    assert set(server.bearers) == {"ps_sess_stored"}


def test_status_signs_in_once_and_keeps_the_session_for_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keystore, "SCRYPT_N", 2**10)
    path = tmp_path / "runner.json"
    address = keystore.create_keystore(path, "pw", KEY)
    save_token(  # a session the server has revoked since
        tmp_path / "credentials.json",
        "http://parity.test",
        address,
        "ps_sess_revoked",
        "2099-01-01T00:00:00Z",
    )
    server = CountingServer(revoked=frozenset({"ps_sess_revoked"}))

    code, out = _status_with(server, path, monkeypatch, {"PARITY_KEYSTORE_PASSWORD": "pw"})
    assert code == 0, out
    assert server.sign_ins == 1
    stored = load_token(tmp_path / "credentials.json", "http://parity.test", address)
    assert stored is not None and stored.token == "ps_sess_1"

    code, out = _status_with(server, path, monkeypatch)  # no password needed any more
    assert code == 0, out
    assert server.sign_ins == 1
    assert server.bearers[-1] == "ps_sess_1"


# --- flags ------------------------------------------------------------------------------------


def test_an_unknown_sandbox_is_a_usage_error_listing_the_choices(tmp_path: Path) -> None:
    args = ["--keystore", str(tmp_path / "none.json"), "--sandbox", "weird"]
    result = CliRunner().invoke(runner_cli.app, args, input="")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is not None
    for choice in ("bwrap", "uid", "none"):
        assert f"'{choice}'" in result.output
    assert "Keystore password" not in result.output


def test_version_flag_and_the_device_id_help() -> None:
    result = CliRunner().invoke(runner_cli.app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"parity-runner {RUNNER_VERSION}"
    shown = CliRunner().invoke(runner_cli.app, ["--help"], env={"COLUMNS": "300"})
    assert "keeps one runner per device id" in " ".join(shown.output.replace("│", " ").split())

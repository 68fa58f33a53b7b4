"""The runner's client side: registering without push when the server refuses the webhook,
and `parity-runner status` showing what the wallet's runners earned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from parity.agent import cli as runner_cli
from parity.agent.client import ServerClient, ServerError
from parity.chain import keystore

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

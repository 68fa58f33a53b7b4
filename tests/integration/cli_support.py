"""What the tests of the client commands (`storage`, `llm`, `fl`, `task`) share: a real server
process signed in to as ALICE, the environment a command runs in against it, a runner registered
over HTTP, and a scripted stand-in for the server (an httpx MockTransport) where a live server
does not produce what a test needs.

A test module takes the ``server`` fixture by importing :func:`server_fixture` as itself (an
explicit re-export, so that the import does not read as unused)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account.messages import encode_defunct
from typer.testing import CliRunner, Result

from parity.cli import client as cli_client
from parity.cli.main import app as cli_app
from parity.cli.server_url import ServerChoice
from tests.conftest import ALICE
from tests.e2e.procs import ServerProcess

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(name="server")
def server_fixture(tmp_path: Path, fresh_database_url: str) -> Iterator[ServerProcess]:
    """A server process on a fresh database, healthy, stopped after the test."""
    proc = ServerProcess(tmp_path / "home", fresh_database_url).start()
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.stop()


def sign_in(url: str) -> str:
    """A session token for ALICE on the server at ``url`` (Sign-In with Ethereum)."""
    with httpx.Client(base_url=url, timeout=10) as client:
        challenge = client.post("/api/v1/auth/nonce", json={"address": ALICE.address}).json()
        sig = ALICE.sign_message(encode_defunct(text=challenge["message"])).signature.hex()
        r = client.post(
            "/api/v1/auth/token",
            json={"address": ALICE.address, "signature": sig, "nonce": challenge["nonce"]},
        )
        return str(r.json()["token"])


def cli_env(server: ServerProcess, token: str | None = None) -> dict[str, str]:
    """The environment of a command against ``server``: its URL, ``token`` (else a new session
    of ALICE's), its home, and no .env file."""
    return {
        "PARITY_SERVER_URL": server.url,
        "PARITY_TOKEN": token or sign_in(server.url),
        "PARITY_HOME": server.env["PARITY_HOME"],
        "PARITY_CONFIG_PATH": os.devnull,
    }


def cli_for(group: str, env: dict[str, str]) -> Callable[..., Result]:
    """Runs `parity-server GROUP ARGS...` in ``env``."""

    def cli(*args: str) -> Result:
        return CliRunner().invoke(cli_app, [group, *args], env=env)

    return cli


def register_runner(url: str, token: str, **body: Any) -> str:
    """Register a runner (``body``: the fields of POST /runners) as the owner of ``token``;
    its runner token."""
    with httpx.Client(base_url=url, timeout=10) as http:
        r = http.post("/api/v1/runners", json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        return str(r.json()["runner_token"])


def answer_from(monkeypatch: pytest.MonkeyPatch, handler: Handler) -> None:
    """Send the commands' requests to ``handler`` instead of the network: the chosen server's
    URL and the bearer token as the commands' own client has them."""

    def open_client(
        choice: ServerChoice,
        token: str | None,
        sign_in_hint: str | None = None,
        *,
        read_timeout: float = cli_client.READ_TIMEOUT_S,
    ) -> httpx.Client:
        return httpx.Client(
            base_url=choice.url,
            transport=httpx.MockTransport(handler),
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )

    monkeypatch.setattr(cli_client, "open_client", open_client)

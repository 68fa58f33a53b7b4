"""`parity-server storage put/get/pin/info/unpin/gc` against a real server process."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account.messages import encode_defunct
from typer.testing import CliRunner, Result

from parity.cli import storage as storage_cli
from parity.cli.main import app as cli_app
from parity.cli.server_url import ServerChoice
from tests.conftest import ALICE
from tests.contract.vectors import HELLO, MULTI_MIB
from tests.e2e.procs import ServerProcess, run_with


def _sign_in(url: str) -> str:
    with httpx.Client(base_url=url, timeout=10) as client:
        challenge = client.post("/api/v1/auth/nonce", json={"address": ALICE.address}).json()
        sig = ALICE.sign_message(encode_defunct(text=challenge["message"])).signature.hex()
        r = client.post(
            "/api/v1/auth/token",
            json={"address": ALICE.address, "signature": sig, "nonce": challenge["nonce"]},
        )
        return str(r.json()["token"])


@pytest.fixture
def server(tmp_path: Path, fresh_database_url: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "home", fresh_database_url).start()
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.stop()


def test_put_get_pin_unpin_and_gc_from_the_command_line(server: ServerProcess, tmp_path: Path):
    token = _sign_in(server.url)
    env = {
        "PARITY_SERVER_URL": server.url,
        "PARITY_TOKEN": token,
        "PARITY_HOME": server.env["PARITY_HOME"],
        "DATABASE_URL": server.env.get("DATABASE_URL", ""),
        "PARITY_CONFIG_PATH": os.devnull,  # no .env
    }
    runner = CliRunner()

    def cli(*args: str) -> Result:
        return runner.invoke(cli_app, ["storage", *args], env=env)

    src = tmp_path / "data.bin"
    src.write_bytes(MULTI_MIB.data())
    put = cli("put", str(src))
    assert put.exit_code == 0, put.output
    assert put.stdout.strip() == MULTI_MIB.v1
    assert MULTI_MIB.v0 in put.stderr

    out = tmp_path / "copy.bin"
    get = cli("get", MULTI_MIB.v0, "-o", str(out), "-q")
    assert get.exit_code == 0, get.output
    assert out.read_bytes() == MULTI_MIB.data()

    hello = tmp_path / "hello.txt"
    hello.write_bytes(HELLO.data())
    assert cli("put", str(hello), "--no-pin", "-q").stdout.strip() == HELLO.v1
    info = json.loads(cli("info", HELLO.v1).stdout)
    assert info["pinned"] is False and info["size"] == 12
    get = cli("get", HELLO.v0, "-o", "-")
    assert get.exit_code == 0 and get.stdout_bytes == b"hello world\n"

    pin = cli("pin", HELLO.v1, "--name", "greeting")
    assert pin.exit_code == 0, pin.output
    assert json.loads(pin.stdout)["name"] == "greeting"
    assert cli("unpin", HELLO.v1).exit_code == 0

    # gc runs on this machine, against the server's database and blockstore (like migrate).
    gc = run_with(server.env, ["storage", "gc", "--grace-seconds", "0"], tmp_path)
    assert gc.returncode == 0, gc.stderr
    report = json.loads(gc.stdout)
    assert report["removed_blocks"] == 1
    # The local store says what it did to its packs (kubo answers null for both).
    assert isinstance(report["compacted_packs"], int) and isinstance(report["merged_packs"], int)
    get = cli("get", HELLO.v1, "-o", "-")
    assert get.exit_code == 1 and "content_not_found" in get.stderr
    out.unlink()
    get = cli("get", MULTI_MIB.v1, "-o", str(out), "-q")
    assert get.exit_code == 0 and out.read_bytes() == MULTI_MIB.data()  # still pinned


def test_get_refuses_bytes_that_do_not_hash_to_the_cid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def lying(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"not hello")

    def fake_client(
        choice: ServerChoice, token: str | None, sign_in_hint: str | None = None
    ) -> httpx.Client:
        return httpx.Client(base_url=choice.url, transport=httpx.MockTransport(lying))

    monkeypatch.setattr(storage_cli, "_client", fake_client)
    out = tmp_path / "x"
    result = CliRunner().invoke(
        cli_app, ["storage", "get", HELLO.v1, "-o", str(out), "--token", "t", "-q"]
    )
    assert result.exit_code == 1
    assert "hash to" in result.output
    assert not out.exists() and not (tmp_path / "x.part").exists()


def test_client_commands_need_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PARITY_HOME", str(tmp_path))
    monkeypatch.delenv("PARITY_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["storage", "info", HELLO.v1, "--server", "http://x.test"])
    assert result.exit_code == 1
    assert "parity-server auth --server http://x.test" in result.output

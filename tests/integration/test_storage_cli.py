"""`parity-server storage put/get/pin/info/unpin/gc` against a real server process."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from parity.cli.main import app as cli_app
from tests.contract.vectors import HELLO, MULTI_MIB
from tests.e2e.procs import ServerProcess, run_with
from tests.integration.cli_support import answer_from, cli_env, cli_for
from tests.integration.cli_support import server_fixture as server_fixture  # the `server` fixture


def test_put_get_pin_unpin_and_gc_from_the_command_line(server: ServerProcess, tmp_path: Path):
    env = {**cli_env(server), "DATABASE_URL": server.env.get("DATABASE_URL", "")}
    cli = cli_for("storage", env)

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

    answer_from(monkeypatch, lying)
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

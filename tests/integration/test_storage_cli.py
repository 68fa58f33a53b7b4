"""`parity-server storage put/get/pin/info/unpin/gc` against a real server process."""

from __future__ import annotations

import json
import os
import threading
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


def test_get_leaves_no_part_file_when_the_server_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def missing(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "content_not_found", "message": "no content", "details": {}}}
        return httpx.Response(404, json=body)

    answer_from(monkeypatch, missing)
    monkeypatch.chdir(tmp_path)
    for args in (["-o", "x.bin"], []):  # a named file and the default ./CID
        result = CliRunner().invoke(
            cli_app, ["storage", "get", HELLO.v1, *args, "--token", "t", "-q"]
        )
        assert result.exit_code == 1 and "content_not_found" in result.output
        assert list(tmp_path.iterdir()) == []


def test_get_into_a_directory_or_a_missing_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    answer_from(monkeypatch, lambda request: httpx.Response(200, content=HELLO.data()))
    get = ["storage", "get", HELLO.v1, "--token", "t", "-q", "-o"]
    result = CliRunner().invoke(cli_app, [*get, str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / HELLO.v1).read_bytes() == HELLO.data()

    missing = tmp_path / "no" / "such" / "dir" / "x"
    result = CliRunner().invoke(cli_app, [*get, str(missing)])
    assert result.exit_code == 1
    assert f"cannot write {missing}" in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback


def test_client_commands_need_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PARITY_HOME", str(tmp_path))
    monkeypatch.delenv("PARITY_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["storage", "info", HELLO.v1, "--server", "http://x.test"])
    assert result.exit_code == 1
    assert "parity-server auth --server http://x.test" in result.output


def test_gc_on_a_database_with_no_schema_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARITY_HOME", str(tmp_path / "home"))
    for key in ("DATABASE_URL", "DATABASE_HOST", "STORAGE_PATH", "FILECOIN_IPFS_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    result = CliRunner().invoke(cli_app, ["storage", "gc"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert "has no schema" in result.output and "parity-server migrate" in result.output
    assert not (tmp_path / "home" / "parity.db").exists()  # nothing created on the way


def test_put_names_the_pin_after_a_file_name_with_a_newline_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    names: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/usage"):
            return httpx.Response(200, json={"max_upload_bytes": 1 << 30})
        names.append(request.url.params.get("name"))
        doc = {"cid": HELLO.v1, "cid_v0": HELLO.v0, "size": 12, "pinned": True}
        return httpx.Response(201, json=doc)

    answer_from(monkeypatch, server)
    src = tmp_path / "two\nlines\t.txt"  # legal on Linux, not as a pin name
    src.write_bytes(HELLO.data())
    result = CliRunner().invoke(cli_app, ["storage", "put", str(src), "--token", "t", "-q"])
    assert result.exit_code == 0, result.output
    assert names == ["two?lines?.txt"]


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_put_of_a_file_that_changes_while_uploading_stores_nothing_and_says_so(
    change: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    src = tmp_path / "log.txt"
    src.write_bytes(MULTI_MIB.data())
    received: list[int] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/usage"):  # after put measured the file, before it sends
            _change(src, change)
            return httpx.Response(200, json={"max_upload_bytes": 1 << 30})
        received.append(len(request.read()))
        return httpx.Response(201, json={"cid": "x", "size": 0, "pinned": True})

    answer_from(monkeypatch, server)
    result = CliRunner().invoke(cli_app, ["storage", "put", str(src), "--token", "t", "-q"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert f"{src} changed while it was uploaded" in result.output
    assert "nothing was stored" in result.output
    assert received == []  # the request never completed, so the server kept nothing


def _change(path: Path, how: str) -> None:
    if how == "grow":
        with open(path, "ab") as f:
            f.write(b"more")
    else:
        os.truncate(path, 1000)


def test_put_of_a_pipe_is_refused_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    requests: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        requests.append(request.url.path)
        return httpx.Response(404)

    answer_from(monkeypatch, server)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # A writer, so that a command that (wrongly) reads the pipe gets bytes and ends.
    writer = threading.Thread(target=fifo.write_bytes, args=(b"hello",), daemon=True)
    writer.start()
    result = CliRunner().invoke(cli_app, ["storage", "put", str(fifo), "--token", "t", "-q"])
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets a still waiting writer go
    writer.join()
    os.close(reader)
    assert result.exit_code == 1
    assert f"{fifo} is not a regular file" in result.output
    assert requests == []

"""A session the server refuses (401: expired, revoked, unknown) is said by `storage`, `llm`, `fl`
and `task` with what to run next: sign in again with the keystore's own path, or, for a token
given with --token / PARITY_TOKEN, pass another or leave it out; a streamed answer (a download,
a prompt's tokens, a task's logs) as well as a plain one. Other refusals stay one plain line."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from parity.chain import keystore
from parity.cli.credentials import save_token
from parity.cli.main import app as cli_app
from parity.cli.server_url import ServerChoice, ServerHttpClient
from parity.cli.session import refusal_text

KEY = "0x" + "66" * 32
CID = "bafkreie5sn5r5bsykbpcz645iivozoz6kymqiv4lxfkfwgvnc744prrire"
TASK = "5f0c1c2e-0000-4000-8000-0000000000aa"
COMMANDS = [
    ["storage", "info", CID],
    ["storage", "get", CID, "-o", "-"],
    ["llm", "models"],
    ["llm", "prompt", "--model", "m", "--stream", "hi"],
    ["fl", "list"],
    ["task", "list"],
    ["task", "logs", TASK, "--follow"],
]


class _Refusing(BaseHTTPRequestHandler):
    """Answers every request 401 token_invalid, as the server does for a revoked session."""

    status = 401
    body = {"error": {"code": "token_invalid", "message": "token revoked", "details": {}}}

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        payload = json.dumps(self.body).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(keystore, "SCRYPT_N", 2**10)
    for name in ("PARITY_TOKEN", "PARITY_SERVER_URL", "PARITY_KEYSTORE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("PARITY_HOME", str(home))
    monkeypatch.setenv("PARITY_CONFIG_PATH", "/dev/null")
    return home


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_refused_stored_session_says_to_sign_in_again(
    server: str, home: Path, command: list[str]
) -> None:
    path = home / "keystore.json"
    address = keystore.create_keystore(path, "pw", KEY)
    save_token(
        home / "credentials.json", server, address, "ps_sess_revoked", "2099-01-01T00:00:00Z"
    )

    result = CliRunner().invoke(cli_app, [*command, "--server", server])

    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (
        f"error: token revoked (token_invalid); sign in again: run "
        f"`parity-server auth --server {server} --keystore {path}`"
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_refused_token_given_on_the_command_line_says_so(
    server: str, home: Path, command: list[str]
) -> None:
    result = CliRunner().invoke(cli_app, [*command, "--server", server, "--token", "ps_sess_x"])

    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert line.startswith("error: token revoked (token_invalid); the token given with --token ")
    assert f"`parity-server auth --server {server} --keystore {home / 'keystore.json'}`" in line


def test_other_refusals_carry_no_sign_in_hint() -> None:
    client = ServerHttpClient(
        ServerChoice("http://x.test", "--server"),
        "t",
        read_timeout=1,
        connect_timeout=1,
        sign_in_hint="sign in again: run `parity-server auth`",
    )
    forbidden = httpx.Response(
        403, json={"error": {"code": "admin_required", "message": "operators only"}}
    )
    assert refusal_text(forbidden, client) == "operators only (admin_required)"
    assert refusal_text(httpx.Response(401, text="<html>"), client) == (
        "HTTP 401; sign in again: run `parity-server auth`"
    )
    assert refusal_text(httpx.Response(502, text="<html>"), client) == "HTTP 502"

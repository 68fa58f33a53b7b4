"""What the client commands (`storage`, `llm`, `fl`, `task`) share: their common options, the
HTTP client for the chosen server with the session's bearer token (:mod:`parity.cli.session`),
and how a refusal or a server that gives no answer ends the command: one ``error:`` line on
stderr and exit status 1 (2 for a mistake in the command's own arguments)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn

from parity.cli.server_url import ServerChoice, ServerHttpClient, no_answer
from parity.cli.session import SessionError, open_session, refusal_text

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0
PIECE = 1 << 20  # how much of a file an upload or a download moves at a time

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        metavar="URL",
        help="Base URL of the server (default: PARITY_SERVER_URL, else the last sign-in, else "
        "SERVER_PUBLIC_URL or SERVER_HOST:SERVER_PORT of the settings).",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="PARITY_TOKEN",
        help="Bearer token (default: the session `parity-server auth --server URL` stored for "
        "the keystore's address).",
    ),
]
KeystoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--keystore",
        metavar="PATH",
        help="Whose session to use: this keystore's address (default: $PARITY_HOME/"
        "keystore.json, else ~/.parity/keystore.json). No password is needed.",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say ``error: message`` on stderr; the exit to raise, with ``code``."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def open_client(
    choice: ServerChoice,
    token: str | None,
    sign_in_hint: str | None = None,
    *,
    read_timeout: float = READ_TIMEOUT_S,
) -> httpx.Client:
    """The HTTP client of every client command: the chosen server, the bearer token, and what
    to run when the server refuses that token. (Tests replace it to answer from a stand-in.)"""
    return ServerHttpClient(
        choice,
        token,
        read_timeout=read_timeout,
        connect_timeout=CONNECT_TIMEOUT_S,
        sign_in_hint=sign_in_hint,
    )


def connect(
    server: str | None,
    keystore: Path | None,
    token: str | None,
    *,
    read_timeout: float = READ_TIMEOUT_S,
) -> httpx.Client:
    """A client for the server the options choose, with ``--token``, else the session stored
    for the keystore's address (with no keystore file, the session saved last for that server);
    no usable server or session ends the command with what to run."""
    try:
        session = open_session(server, keystore, token)
    except SessionError as exc:
        raise fail(str(exc)) from None
    return open_client(
        session.choice, session.token, session.sign_in_hint, read_timeout=read_timeout
    )


def refused(response: httpx.Response, client: httpx.Client) -> typer.Exit:
    """The error envelope's message and code (the HTTP status when there is none), and what to
    run when the server refused the token. The body of a streamed answer is read first."""
    response.read()
    return fail(refusal_text(response, client))


def call(
    client: httpx.Client, method: str, path: str, *, doing: str = "the request", **kw: Any
) -> httpx.Response:
    """One request, answered whatever its status; a server that gives no (complete) answer ends
    the command, naming what it was ``doing``."""
    try:
        return client.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise fail(no_answer(client, exc, doing)) from None


def send(client: httpx.Client, method: str, path: str, ok: int = 200, **kw: Any) -> httpx.Response:
    """One request answered ``ok``; a refusal or an unreachable server ends the command."""
    r = call(client, method, path, **kw)
    if r.status_code != ok:
        raise refused(r, client)
    return r


def json_answer(client: httpx.Client, response: httpx.Response, method: str, path: str) -> Any:
    """The JSON document of ``response`` to ``method path``; an answer that is not JSON ends the
    command."""
    try:
        return response.json()
    except ValueError:
        raise fail(f"{client.base_url} answered {method} {path} with something not JSON") from None


def request_json(client: httpx.Client, method: str, path: str, ok: int = 200, **kw: Any) -> Any:
    """The JSON answer of one request answered ``ok`` (see :func:`send`)."""
    return json_answer(client, send(client, method, path, ok, **kw), method, path)


def print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2))


def progress(quiet: bool, *columns: ProgressColumn, soft_wrap: bool = False) -> Progress:
    """A progress bar on stderr (stdout carries the answer): a description, the bar, then
    ``columns``."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        *columns,
        console=Console(stderr=True, soft_wrap=soft_wrap),
        disable=quiet,
    )


class FileChanged(Exception):
    """The file being uploaded changed size after it was measured (a log still written to)."""


def file_pieces(
    path: Path, advance: Callable[[int], None], size: int | None = None
) -> Iterator[bytes]:
    """The bytes of ``path`` as an upload streams them, :data:`PIECE` at a time, each piece's
    size told to ``advance`` (a progress bar's) as it is read. With ``size`` (the declared
    Content-Length), FileChanged when the file turns out longer or shorter: each piece is held
    back until the next read, so the last one is never sent and the server stores nothing."""
    with open(path, "rb") as f:
        sent, held = 0, b""
        while True:
            piece = f.read(PIECE)
            sent += len(piece)
            if size is not None and (sent > size or (not piece and sent < size)):
                raise FileChanged(_changed(path, size, sent))
            if held:
                advance(len(held))
                yield held
            if not piece:
                return
            held = piece


def _changed(path: Path, size: int, read: int) -> str:
    how = "grew past" if read > size else f"shrank to {read} of"
    return (
        f"{path} changed while it was uploaded (it {how} the {size} bytes it had at the start); "
        "nothing was stored: upload it again once nothing writes to it"
    )


def output_file(output: Path | None, name: str) -> Path:
    """Where a download is written: ``output`` (``~`` expanded), ``name`` inside it when it is
    a directory (as ``cp`` takes one), or ``./name`` when none is given."""
    path = output.expanduser() if output is not None else Path(name)
    return path / name if path.is_dir() else path


def part_file(final: Path) -> Path:
    """The ``.part`` file beside ``final`` a download goes to until it is checked."""
    return final.with_name(final.name + ".part")


def upload_headers(size: int) -> dict[str, str]:
    """The headers of a streamed raw upload of ``size`` bytes."""
    return {"Content-Length": str(size), "Content-Type": "application/octet-stream"}

"""Which server a client command talks to and with which bearer token: ``--token`` when given,
else the session ``parity-server auth --server URL`` stored for the keystore's address on that
server (the server chosen by :mod:`parity.cli.server_url`). A refusal of that token (401) is
said with what to run next."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from parity.chain.keystore import KeystoreError, read_address
from parity.cli.auth import default_keystore_path
from parity.cli.credentials import CredentialsError, credentials_path, load_token
from parity.cli.server_url import (
    ServerChoice,
    ServerHttpClient,
    ServerUrlError,
    resolve_server_url,
)


class SessionError(Exception):
    """No usable server or session; the message says what to run."""


@dataclass(frozen=True)
class Session:
    choice: ServerChoice
    token: str
    # What to run when the server refuses ``token`` (expired, revoked, unknown).
    sign_in_hint: str


def sign_in_hint(choice: ServerChoice, keystore: Path, token_given: bool) -> str:
    """What to do about a refused bearer token: sign in again, or (for a ``--token`` /
    ``PARITY_TOKEN`` the user gave) pass another or fall back to the stored session."""
    command = f"`parity-server auth --server {choice.url} --keystore {keystore}`"
    if token_given:
        return (
            "the token given with --token or PARITY_TOKEN is not accepted: pass a current one, "
            f"or leave both out to use the session {command} stores"
        )
    return f"sign in again: run {command}"


def open_session(server: str | None, keystore: Path | None, token: str | None) -> Session:
    """The server chosen, the bearer token and the hint for its refusal; :class:`SessionError`
    naming the fix when there is no usable server or session. An empty ``token`` (``--token ""``,
    an empty PARITY_TOKEN) is none given."""
    path = keystore.expanduser() if keystore is not None else default_keystore_path()
    try:
        choice = resolve_server_url(server, credentials=credentials_path(path))
        if token:
            return Session(choice, token, sign_in_hint(choice, path, token_given=True))
        address = read_address(path) if path.exists() else None
        stored = load_token(credentials_path(path), choice.url, address)
    except (ServerUrlError, CredentialsError, KeystoreError) as exc:
        raise SessionError(str(exc)) from None
    if stored is None:
        who = f" as {address}" if address else ""
        raise SessionError(
            f"no session{who} on {choice.describe()}: run `parity-server auth --server "
            f"{choice.url} --keystore {path}` or pass --token"
        )
    return Session(choice, stored.token, sign_in_hint(choice, path, token_given=False))


def refusal_text(response: httpx.Response, client: httpx.Client | None = None) -> str:
    """A refusal in one line: the error envelope's ``message (code)``, the HTTP status when
    there is none. A 401 (the bearer token expired, was revoked or is unknown) adds what to run,
    when ``client`` was opened for a :class:`Session`."""
    status = response.status_code
    message = f"HTTP {status}"
    try:
        err = response.json().get("error", {})
        message = f"{err.get('message', message)} ({err.get('code', status)})"
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        pass
    hint = client.sign_in_hint if isinstance(client, ServerHttpClient) else None
    if status == 401 and hint:
        message += f"; {hint}"
    return message

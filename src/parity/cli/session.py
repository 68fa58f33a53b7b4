"""Which server a client command talks to and with which bearer token: ``--token`` when given,
else the session ``parity-server auth --server URL`` stored for the keystore's address on that
server (the server chosen by :mod:`parity.cli.server_url`)."""

from __future__ import annotations

from pathlib import Path

from parity.chain.keystore import KeystoreError, read_address
from parity.cli.auth import default_keystore_path
from parity.cli.credentials import CredentialsError, credentials_path, load_token
from parity.cli.server_url import ServerChoice, ServerUrlError, resolve_server_url


class SessionError(Exception):
    """No usable server or session; the message says what to run."""


def resolve_session(
    server: str | None, keystore: Path | None, token: str | None
) -> tuple[ServerChoice, str]:
    """``(the server chosen, bearer token)``, or :class:`SessionError` naming the fix."""
    path = keystore.expanduser() if keystore is not None else default_keystore_path()
    try:
        choice = resolve_server_url(server, credentials=credentials_path(path))
        if token is not None:
            return choice, token
        address = read_address(path) if path.exists() else None
        stored = load_token(credentials_path(path), choice.url, address)
    except (ServerUrlError, CredentialsError, KeystoreError) as exc:
        raise SessionError(str(exc)) from None
    if stored is None:
        raise SessionError(
            f"no session on {choice.describe()}: run `parity-server auth --server "
            f"{choice.url} --keystore {path}` or pass --token"
        )
    return choice, stored.token

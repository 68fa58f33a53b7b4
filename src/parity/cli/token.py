"""`parity-server token`: print the session token `parity-server auth --server URL` stored for
the keystore's address, for ``Authorization: Bearer`` in curl and scripts (the API has no other
client command for tasks, events or keys). The server is chosen by the rule of
:mod:`parity.cli.server_url`; nothing is decrypted, so no password is asked."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from parity.chain.keystore import KeystoreError, read_address
from parity.cli.auth import default_keystore_path
from parity.cli.credentials import CredentialsError, credentials_path, expired, load_token
from parity.cli.server_url import ServerUrlError, resolve_server_url


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def register_token_command(app: typer.Typer) -> None:
    @app.command("token")
    def token(
        server: Annotated[
            str | None,
            typer.Option(
                "--server",
                metavar="URL",
                help="Base URL of the server (default: PARITY_SERVER_URL, else the last "
                "sign-in, else SERVER_PUBLIC_URL or SERVER_HOST:SERVER_PORT of the settings).",
            ),
        ] = None,
        keystore: Annotated[
            Path | None,
            typer.Option(
                "--keystore",
                metavar="PATH",
                help="Whose session: this keystore's address (default: $PARITY_HOME/"
                "keystore.json, else ~/.parity/keystore.json).",
            ),
        ] = None,
    ) -> None:
        """Print the stored session token for the keystore's address on the server (sign in
        first with `parity-server auth --server URL`): TOKEN=$(parity-server token)."""
        path = keystore.expanduser() if keystore is not None else default_keystore_path()
        try:
            choice = resolve_server_url(server, credentials=credentials_path(path))
            address = read_address(path) if path.exists() else None
            stored = load_token(credentials_path(path), choice.url, address)
        except (ServerUrlError, CredentialsError, KeystoreError) as exc:
            raise _fail(str(exc)) from None
        sign_in = f"run `parity-server auth --server {choice.url} --keystore {path}`"
        if stored is None:
            who = f" for {address}" if address else ""
            raise _fail(f"no session{who} on {choice.describe()}: {sign_in}")
        if expired(stored.expires_at, datetime.now(UTC)):
            raise _fail(f"the session on {choice.url} expired at {stored.expires_at}: {sign_in}")
        typer.echo(stored.token)

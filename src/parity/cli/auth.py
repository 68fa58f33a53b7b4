"""Wallet sign-in: prove control of an Ethereum account to a parity server.

The server hands out a one-time nonce message, the client signs it (EIP-191
personal_sign) and trades the signature for a bearer token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

from parity.chain.keystore import (
    DEFAULT_KEYSTORE,
    KeystoreError,
    account_from_private_key,
    create_keystore,
    load_account,
    read_address,
)
from parity.cli.credentials import CredentialsError, credentials_path, save_token
from parity.cli.passwords import password_from_env_or_prompt
from parity.cli.server_url import ServerUrlError, resolve_server_url

REQUEST_TIMEOUT_S = 10.0
HOME_ENV = "PARITY_HOME"


class SignInError(Exception):
    """The server refused the sign-in or answered something unusable."""

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code


def _error_from_response(step: str, response: httpx.Response) -> SignInError:
    message = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    code: str | None = None
    try:
        envelope = response.json().get("error")
    except (ValueError, AttributeError):
        envelope = None
    if isinstance(envelope, dict):
        if isinstance(envelope.get("message"), str):
            message = envelope["message"]
        if isinstance(envelope.get("code"), str):
            code = envelope["code"]
    return SignInError(f"{step}: {message}", status_code=response.status_code, code=code)


def _json_fields(step: str, response: httpx.Response, *fields: str) -> dict[str, Any]:
    if not response.is_success:
        raise _error_from_response(step, response)
    try:
        body = response.json()
    except ValueError:
        raise SignInError(f"{step}: server answered with non-JSON content") from None
    if not isinstance(body, dict) or any(body.get(f) in (None, "") for f in fields):
        raise SignInError(f"{step}: server answer lacks {', '.join(fields)}")
    return body


def sign_in(
    client: httpx.Client, account: LocalAccount, api_prefix: str = "/api/v1"
) -> tuple[str, str]:
    """Run the nonce/signature exchange and return ``(token, expires_at)``.

    Transport errors (``httpx.HTTPError``) propagate unchanged so callers can
    tell "server said no" from "server unreachable".
    """
    from eth_account.messages import encode_defunct  # slow to import: only where signing

    prefix = api_prefix.rstrip("/")
    nonce_resp = client.post(
        f"{prefix}/auth/nonce",
        json={"address": account.address},
        timeout=REQUEST_TIMEOUT_S,
    )
    challenge = _json_fields("nonce request refused", nonce_resp, "nonce", "message")
    if not isinstance(challenge["message"], str):
        raise SignInError("nonce request refused: server sent a non-text message to sign")
    signed = account.sign_message(encode_defunct(text=challenge["message"]))
    token_resp = client.post(
        f"{prefix}/auth/token",
        json={
            "address": account.address,
            "signature": "0x" + bytes(signed.signature).hex(),
            "nonce": challenge["nonce"],
        },
        timeout=REQUEST_TIMEOUT_S,
    )
    grant = _json_fields("sign-in refused", token_resp, "token", "expires_at")
    return str(grant["token"]), str(grant["expires_at"])


def _client_factory(base_url: str, transport: httpx.BaseTransport | None) -> httpx.Client:
    # Module-level so tests can swap in an in-process server.
    return httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S, transport=transport)


def default_keystore_path() -> Path:
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / "keystore.json"
    return DEFAULT_KEYSTORE.expanduser()


def _is_http_url(value: str) -> bool:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return False
    return url.scheme in ("http", "https") and bool(url.host)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _obtain_account(
    keystore: Path, private_key: str | None, new: bool, force: bool
) -> LocalAccount:
    exists = keystore.exists()
    if private_key is None and not new:
        if not exists:
            # Without --new or --private-key, auth unlocks: a mistyped path is an error, not a
            # fresh empty wallet signed in under the typo.
            raise KeystoreError(
                f"keystore not found at {keystore}; use --new to create one (or --private-key "
                "HEX to import a key)"
            )
        account = load_account(keystore, password_from_env_or_prompt(confirm=False))
        typer.echo(f"unlocked keystore {keystore}", err=True)
        return account
    if exists and not force:
        if private_key is not None and not new:
            # Re-running the legacy `auth -k KEY` must stay harmless when the
            # keystore already holds that very key.
            candidate = account_from_private_key(private_key)
            if read_address(keystore) == candidate.address:
                typer.echo(f"keystore {keystore} already holds this key", err=True)
                return candidate
        raise KeystoreError(
            f"keystore already exists at {keystore} (address {read_address(keystore)}); "
            f"to keep it and add another key, pass --keystore {keystore.parent / 'OTHER.json'} "
            "(a second keystore); --force overwrites this one and destroys its key unless "
            "you backed it up"
        )
    if exists:
        typer.echo(
            f"warning: --force overwrites {keystore}: the key of {read_address(keystore)} is "
            "destroyed unless you backed it up",
            err=True,
        )
    password = password_from_env_or_prompt(confirm=True)
    address = create_keystore(keystore, password, private_key, overwrite=force)
    verb = "imported key into" if private_key is not None else "created new key in"
    typer.echo(f"{verb} keystore {keystore}", err=True)
    # Reload from disk: proves the file we just wrote decrypts before we rely on it.
    account = load_account(keystore, password)
    if account.address != address:
        raise KeystoreError(f"keystore {keystore} did not round-trip; remove it and retry")
    return account


def register_auth_command(
    app: typer.Typer, *, transport: httpx.BaseTransport | None = None
) -> None:
    """Add the ``auth`` command to ``app``.

    ``transport`` is handed to the HTTP client, letting tests plug in
    ``httpx.MockTransport`` without a network.
    """

    @app.command("auth")
    def auth(
        private_key: Annotated[
            str | None,
            typer.Option(
                "--private-key",
                "-k",
                metavar="HEX",
                help="Import this private key (visible in shell history; prefer --new).",
            ),
        ] = None,
        keystore: Annotated[
            Path | None,
            typer.Option(
                "--keystore",
                metavar="PATH",
                help="Keystore file (default: $PARITY_HOME/keystore.json, else "
                "~/.parity/keystore.json).",
            ),
        ] = None,
        server: Annotated[
            str | None,
            typer.Option(
                "--server",
                metavar="URL",
                help="Sign in to this server and store the session in credentials.json "
                "beside the keystore (one session per server and address).",
            ),
        ] = None,
        sign_in_again: Annotated[
            bool,
            typer.Option(
                "--sign-in",
                help="Sign in without naming the server: PARITY_SERVER_URL, else the last "
                "sign-in, else SERVER_PUBLIC_URL or SERVER_HOST:SERVER_PORT of the settings.",
            ),
        ] = False,
        new: Annotated[
            bool,
            typer.Option(
                "--new",
                help="Create a fresh key in a new keystore (without --new or --private-key, "
                "the keystore must exist: it is unlocked).",
            ),
        ] = False,
        force: Annotated[
            bool,
            typer.Option(
                "--force",
                help="Overwrite an existing keystore: its key is DESTROYED unless backed up. "
                "To keep both keys, give the new one its own --keystore file instead.",
            ),
        ] = False,
        api_prefix: Annotated[
            str, typer.Option("--api-prefix", hidden=True, help="API path prefix.")
        ] = "/api/v1",
    ) -> None:
        """Unlock the wallet keystore, create one (--new) or import a key (--private-key),
        and optionally sign in."""
        if new and private_key is not None:
            raise _fail("--new and --private-key are mutually exclusive")
        if server is not None and not _is_http_url(server):
            # Checked before unlocking, so a typo doesn't cost a password prompt.
            raise _fail(f"invalid --server URL {server!r}: expected http(s)://host[:port]")
        path = keystore.expanduser() if keystore is not None else default_keystore_path()
        where = f"{server} (from --server)"  # the server, and why that one, for messages
        if server is None and sign_in_again:
            try:
                choice = resolve_server_url(None, credentials=credentials_path(path))
            except ServerUrlError as exc:
                raise _fail(str(exc)) from None
            server, where = choice.url, choice.describe()
        try:
            account = _obtain_account(path, private_key, new, force)
            typer.echo(account.address)
            if server is None:
                return
            with _client_factory(server, transport) as client:
                token, expires_at = sign_in(client, account, api_prefix)
            save_token(credentials_path(path), server, account.address, token, expires_at)
        except (KeystoreError, SignInError, CredentialsError) as exc:
            raise _fail(str(exc)) from None
        except httpx.TimeoutException:
            raise _fail(f"timed out talking to {where}") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _fail(f"cannot reach {where}: {exc}") from None
        except OSError as exc:
            raise _fail(f"{exc.strerror or exc}: {_file_of(exc, path)}") from None
        typer.echo(f"signed in to {server} as {account.address}, token expires at {expires_at}")


def _file_of(exc: OSError, keystore: Path) -> str:
    """The file an OSError is about, as the user knows it: the keystore, not the temporary
    file it is written through (``.NAME.XXXX.tmp`` beside it)."""
    name = str(exc.filename or keystore)
    if Path(name).name.startswith(f".{keystore.name}.") and name.endswith(".tmp"):
        return str(keystore)
    return name

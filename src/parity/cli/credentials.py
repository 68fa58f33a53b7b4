"""Per-server API tokens obtained by signing in, kept in ``~/.parity/credentials.json``.

Tokens are bearer secrets, so the file gets the same 0600/atomic treatment as
the keystore.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from parity.cli.keystore import write_private_file

DEFAULT_CREDENTIALS = Path("~/.parity/credentials.json")


class CredentialsError(Exception):
    """The credentials file exists but cannot be used; the message is user-facing."""


@dataclass(frozen=True)
class StoredToken:
    server_url: str
    address: str
    token: str
    expires_at: str


def _server_key(server_url: str) -> str:
    # "https://x/" and "https://x" are the same server; don't store two tokens.
    return server_url.strip().rstrip("/")


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CredentialsError(f"credentials file {path} is not valid JSON; remove it") from None
    servers = doc.get("servers") if isinstance(doc, dict) else None
    if not isinstance(servers, dict):
        raise CredentialsError(f"credentials file {path} has an unexpected layout; remove it")
    return {k: v for k, v in servers.items() if isinstance(v, dict)}


def _write(path: Path, servers: dict[str, dict[str, Any]]) -> None:
    data = json.dumps({"servers": servers}, indent=2, sort_keys=True).encode("utf-8")
    write_private_file(path, data, overwrite=True)


def save_token(path: Path, server_url: str, address: str, token: str, expires_at: str) -> None:
    """Store (or replace) the token for ``server_url``, keeping other servers' tokens."""
    path = Path(path).expanduser()
    servers = _read(path)
    key = _server_key(server_url)
    entry = StoredToken(server_url=key, address=address, token=token, expires_at=expires_at)
    servers[key] = {k: v for k, v in asdict(entry).items() if k != "server_url"}
    _write(path, servers)


def load_token(path: Path, server_url: str) -> StoredToken | None:
    """The stored token for ``server_url``, or None if there is none."""
    path = Path(path).expanduser()
    key = _server_key(server_url)
    entry = _read(path).get(key)
    if entry is None:
        return None
    try:
        return StoredToken(
            server_url=key,
            address=str(entry["address"]),
            token=str(entry["token"]),
            expires_at=str(entry["expires_at"]),
        )
    except KeyError:
        raise CredentialsError(
            f"credentials file {path} has an incomplete entry for {key}; remove it"
        ) from None


def remove_token(path: Path, server_url: str) -> bool:
    """Forget the token for ``server_url``; True if one was stored."""
    path = Path(path).expanduser()
    servers = _read(path)
    if servers.pop(_server_key(server_url), None) is None:
        return False
    _write(path, servers)
    return True

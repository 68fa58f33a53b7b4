"""Sessions obtained by signing in, kept in ``credentials.json`` beside the keystore.

Sessions are keyed by (server, address): two keystores in one folder (say ``keystore.json`` and
``runner.json``) keep one session each on the same server, and a command run with
``--keystore X`` uses X's address's session only. The file also remembers the server signed in
to last, the third step of the server rule (:mod:`parity.cli.server_url`).

Files written before sessions were keyed by address (``{"servers": {url: {address, token,
expires_at}}}``) are still read; the next save writes the current layout.

Tokens are bearer secrets, so the file gets the same 0600/atomic treatment as the keystore.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from parity.chain.keystore import write_private_file

CREDENTIALS_FILE = "credentials.json"
LAYOUT_VERSION = 2

# {server: {address (lowercase): {"address", "token", "expires_at", "seq"}}}
Sessions = dict[str, dict[str, dict[str, Any]]]


class CredentialsError(Exception):
    """The credentials file exists but cannot be used; the message is user-facing."""


@dataclass(frozen=True)
class StoredToken:
    server_url: str
    address: str
    token: str
    expires_at: str


@dataclass
class _Doc:
    sessions: Sessions
    last_server: str | None


def credentials_path(keystore: Path) -> Path:
    """The credentials file that goes with ``keystore``: the one beside it."""
    return Path(keystore).expanduser().parent / CREDENTIALS_FILE


def _server_key(server_url: str) -> str:
    # "https://x/" and "https://x" are the same server; don't store two sessions.
    return server_url.strip().rstrip("/")


def _address_key(address: str) -> str:
    # Checksummed and lowercase spellings are one account (the server stores lowercase too).
    return address.strip().lower()


def _migrate_by_server(path: Path, servers: dict[str, Any]) -> _Doc:
    """The first layout held one session per server; each becomes that address's session."""
    sessions: Sessions = {}
    for url, entry in servers.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            raise CredentialsError(
                f"credentials file {path} has an incomplete entry for {url}; remove it"
            )
        sessions[_server_key(url)] = {_address_key(entry["address"]): {**entry, "seq": 0}}
    # Which server was used last was not recorded; with one server the answer is plain.
    only = next(iter(sessions)) if len(sessions) == 1 else None
    return _Doc(sessions, only)


def _read(path: Path) -> _Doc:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _Doc({}, None)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CredentialsError(f"credentials file {path} is not valid JSON; remove it") from None
    if isinstance(doc, dict) and isinstance(doc.get("sessions"), dict):
        sessions: Sessions = {
            server: {a: s for a, s in by_address.items() if isinstance(s, dict)}
            for server, by_address in doc["sessions"].items()
            if isinstance(by_address, dict)
        }
        last = doc.get("last_server")
        return _Doc(sessions, last if isinstance(last, str) else None)
    if isinstance(doc, dict) and isinstance(doc.get("servers"), dict):
        return _migrate_by_server(path, doc["servers"])
    raise CredentialsError(f"credentials file {path} has an unexpected layout; remove it")


def _write(path: Path, doc: _Doc) -> None:
    body = {"version": LAYOUT_VERSION, "last_server": doc.last_server, "sessions": doc.sessions}
    write_private_file(path, json.dumps(body, indent=2, sort_keys=True).encode("utf-8"))


def save_token(path: Path, server_url: str, address: str, token: str, expires_at: str) -> None:
    """Store (or replace) ``address``'s session on ``server_url``, keeping every other
    session, and remember ``server_url`` as the server signed in to last."""
    path = Path(path).expanduser()
    doc = _read(path)
    server = _server_key(server_url)
    # A counter, not a clock, orders the sessions: "the latest" is the one saved last.
    seq = 1 + max(
        (int(s.get("seq", 0)) for by in doc.sessions.values() for s in by.values()), default=0
    )
    doc.sessions.setdefault(server, {})[_address_key(address)] = {
        "address": address,
        "token": token,
        "expires_at": expires_at,
        "seq": seq,
    }
    doc.last_server = server
    _write(path, doc)


def load_token(path: Path, server_url: str, address: str | None = None) -> StoredToken | None:
    """``address``'s session on ``server_url``; with no address, the session saved last for
    that server. None when there is none (another address's session never stands in)."""
    path = Path(path).expanduser()
    server = _server_key(server_url)
    by_address = _read(path).sessions.get(server, {})
    if address is not None:
        entry = by_address.get(_address_key(address))
    else:
        entry = max(by_address.values(), key=lambda s: int(s.get("seq", 0)), default=None)
    if entry is None:
        return None
    try:
        return StoredToken(
            server_url=server,
            address=str(entry["address"]),
            token=str(entry["token"]),
            expires_at=str(entry["expires_at"]),
        )
    except KeyError:
        raise CredentialsError(
            f"credentials file {path} has an incomplete entry for {server}; remove it"
        ) from None


def remove_token(path: Path, server_url: str, address: str | None = None) -> bool:
    """Forget ``address``'s session on ``server_url`` (every session on it when no address is
    given); True if one was stored."""
    path = Path(path).expanduser()
    doc = _read(path)
    server = _server_key(server_url)
    by_address = doc.sessions.get(server)
    if not by_address:
        return False
    if address is None:
        del doc.sessions[server]
    elif by_address.pop(_address_key(address), None) is None:
        return False
    elif not by_address:
        del doc.sessions[server]
    _write(path, doc)
    return True


def last_server(path: Path) -> str | None:
    """The server signed in to last (None when the file is missing or does not say)."""
    return _read(Path(path).expanduser()).last_server


def expired(expires_at: str, now: datetime | None = None) -> bool:
    """Whether a session's ``expires_at`` (ISO 8601, as the server gave it) has passed; an
    unreadable time is the server's to judge (not expired)."""
    try:
        when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return False
    now = datetime.now(UTC) if now is None else now
    return (when if when.tzinfo else when.replace(tzinfo=UTC)) <= now

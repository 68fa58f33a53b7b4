"""The server ledger's view of one account, for `parity-server balance`: asked with that
account's own session only, so one keystore's numbers never show under another's address."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from parity.cli.credentials import CredentialsError, load_token
from parity.cli.server_url import ServerChoice
from parity.core.billing.units import AmountError, parse_base_units

LEDGER_BALANCE_PATH = "/api/v1/ledger/balance"
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0
AMOUNT_KEYS = ("available", "pending_earnings", "settled_earnings")


@dataclass(frozen=True)
class LedgerView:
    amounts: dict[str, int] = field(default_factory=dict)  # base units, by BalanceRead key
    symbol: str | None = None
    why_not: str | None = None  # set when the ledger could not be asked; says why


def _error_text(response: httpx.Response) -> str:
    try:
        err = response.json().get("error", {})
        return f"{response.status_code} {err.get('code')}: {err.get('message')}"
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}"


def ledger_balance(
    server: ServerChoice, credentials: Path, address: str, keystore: Path | None = None
) -> LedgerView:
    """``address``'s ledger balance on ``server``, with the session ``credentials`` holds for
    exactly that (server, address); an empty view with the reason otherwise. ``keystore`` is
    the address's own keystore when known, for the command that signs it in."""
    try:
        stored = load_token(credentials, server.url, address)
    except CredentialsError as exc:
        return LedgerView(why_not=str(exc))
    if stored is None:
        if keystore is not None:
            run = f"`parity-server auth --keystore {keystore} --server {server.url}`"
        else:  # an --address whose keystore this command was not given
            run = (
                f"`parity-server auth --keystore KEYSTORE --server {server.url}` with its "
                f"keystore, in {credentials.parent} (where this command reads sessions)"
            )
        return LedgerView(why_not=f"{address} is not signed in to {server.describe()}: run {run}")
    try:
        response = httpx.get(
            server.url + LEDGER_BALANCE_PATH,
            headers={"Authorization": f"Bearer {stored.token}"},
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )
    except httpx.HTTPError as exc:
        return LedgerView(why_not=f"cannot reach {server.describe()}: {exc}")
    if response.status_code != 200:
        return LedgerView(why_not=f"{server.url} answered {_error_text(response)}")
    try:
        doc: Any = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return LedgerView(why_not=f"{server.url} answered something that is not a balance")
    found: dict[str, int] = {}
    for key in AMOUNT_KEYS:
        raw = doc.get(key)
        try:
            if isinstance(raw, str):
                # "available" goes below zero when debits and reservations pass the stake.
                negative = raw.startswith("-")
                amount = parse_base_units(raw.removeprefix("-"))
                found[key] = -amount if negative else amount
        except AmountError:
            continue
    symbol = doc.get("symbol")
    return LedgerView(found, symbol if isinstance(symbol, str) else None)

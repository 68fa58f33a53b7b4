"""EIP-4361 (Sign-In with Ethereum) message construction. Pure functions; bearer tokens are in
``parity.core.tokens``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

STATEMENT = "Sign in to Parity Server."
NONCE_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


@dataclass(frozen=True)
class SiweRequest:
    domain: str
    address: str  # EIP-55 checksummed
    uri: str
    chain_id: int
    nonce: str
    issued_at: datetime
    expiration_time: datetime


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def build_message(req: SiweRequest) -> str:
    """The EIP-4361 message text, field order and line layout as the EIP specifies:
    ``{domain} wants you to sign in with your Ethereum account:\\n{address}\\n\\n{statement}\\n\\n``
    followed by URI, Version (1), Chain ID, Nonce, Issued At and Expiration Time lines."""
    return (
        f"{req.domain} wants you to sign in with your Ethereum account:\n"
        f"{req.address}\n\n"
        f"{STATEMENT}\n\n"
        f"URI: {req.uri}\n"
        f"Version: 1\n"
        f"Chain ID: {req.chain_id}\n"
        f"Nonce: {req.nonce}\n"
        f"Issued At: {_iso(req.issued_at)}\n"
        f"Expiration Time: {_iso(req.expiration_time)}"
    )


def make_nonce(random_bytes: bytes) -> str:
    """An alphanumeric nonce (EIP-4361 requires at least 8 alphanumerics); one character per
    input byte, so 16 random bytes give ~94 bits."""
    n = len(NONCE_ALPHABET)
    return "".join(NONCE_ALPHABET[b % n] for b in random_bytes)

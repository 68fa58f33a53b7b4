"""EIP-4361 (Sign-In with Ethereum) message construction and token formats. Pure functions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

STATEMENT = "Sign in to Parity Server."
NONCE_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"

TOKEN_PREFIXES = {"session": "ps_sess_", "runner": "ps_run_", "api_key": "ps_key_"}


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


def make_token(kind: str, random_bytes: bytes) -> str:
    """An opaque bearer token: kind prefix + 256 random bits in hex."""
    if len(random_bytes) < 32:
        raise ValueError("a token needs at least 256 random bits")
    return TOKEN_PREFIXES[kind] + random_bytes.hex()


def hash_token(token: str) -> str:
    """SHA-256 hex of the whole token. Tokens carry 256 random bits, so a fast hash is enough;
    a slow password hash would cost 100+ ms on every request."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_kind(token: str) -> str | None:
    for kind, prefix in TOKEN_PREFIXES.items():
        if token.startswith(prefix):
            return kind
    return None

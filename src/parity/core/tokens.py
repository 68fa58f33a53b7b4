"""Bearer token formats: session, runner and API-key tokens, and the claim tokens that fence
a task's lease, are stored and looked up by the same hash. Pure functions."""

from __future__ import annotations

import hashlib

TOKEN_PREFIXES = {"session": "ps_sess_", "runner": "ps_run_", "api_key": "ps_key_"}


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

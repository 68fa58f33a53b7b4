"""Standard Webhooks signing and verification (ARCHITECTURE §4, "Webhooks").

A message carries three headers: ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``, a space-separated list of ``v1,<base64 HMAC-SHA256>`` entries over
``f"{id}.{timestamp}.".encode() + body``. Secrets are ``"whsec_" + base64(key)``; during a
rotation two secrets are valid, and the sender may list one signature per secret.

See https://www.standardwebhooks.com/ (spec.md, "Signature scheme"). Stdlib only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "MIN_SECRET_BYTES",
    "SECRET_PREFIX",
    "SignatureInvalid",
    "headers",
    "new_secret",
    "sign",
    "verify",
]

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
DEFAULT_TOLERANCE_SECONDS = 300

_HEADER_ID = "webhook-id"
_HEADER_TIMESTAMP = "webhook-timestamp"
_HEADER_SIGNATURE = "webhook-signature"
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


class SignatureInvalid(Exception):
    """A webhook message failed verification; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_secret(random_bytes: bytes) -> str:
    """Return a secret ``"whsec_" + base64(random_bytes)``.

    The caller supplies the randomness (e.g. ``secrets.token_bytes(32)``) so this stays
    deterministic; fewer than 24 bytes is refused with ValueError.
    """
    if len(random_bytes) < MIN_SECRET_BYTES:
        raise ValueError(f"a webhook secret needs at least {MIN_SECRET_BYTES} random bytes")
    return SECRET_PREFIX + base64.b64encode(random_bytes).decode("ascii")


def _key(secret: str) -> bytes:
    """Decode the HMAC key from ``"whsec_<base64>"``; ValueError when malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return ``"v1,<base64(HMAC-SHA256(key, f"{msg_id}.{timestamp}." + body))>"``."""
    return "v1," + _signature(_key(secret), msg_id, timestamp, body)


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Return the three Standard Webhooks headers for one message signed with ``secret``."""
    return {
        _HEADER_ID: msg_id,
        _HEADER_TIMESTAMP: str(timestamp),
        _HEADER_SIGNATURE: sign(secret, msg_id, timestamp, body),
    }


def verify(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now: int,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Check a received message; raise SignatureInvalid unless it is authentic and fresh.

    ``headers`` is looked up case-insensitively. The timestamp must be within ``tolerance``
    seconds of ``now`` in either direction. Any ``v1`` signature in the header matching any of
    ``secrets`` (the current one and, during rotation, the previous one) is accepted; entries of
    other versions are skipped. De-duplicating ``webhook-id`` is the receiver's job.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = _required(lowered, _HEADER_ID)
    raw_ts = _required(lowered, _HEADER_TIMESTAMP).strip()
    raw_sigs = _required(lowered, _HEADER_SIGNATURE)

    if not _TIMESTAMP.fullmatch(raw_ts):
        raise SignatureInvalid(f"{_HEADER_TIMESTAMP} is not an integer")
    timestamp = int(raw_ts)
    if timestamp < now - tolerance:
        raise SignatureInvalid(f"{_HEADER_TIMESTAMP} is too old (more than {tolerance}s ago)")
    if timestamp > now + tolerance:
        raise SignatureInvalid(f"{_HEADER_TIMESTAMP} is too far in the future")

    candidates = [
        entry[3:].encode() for entry in raw_sigs.split() if entry.startswith("v1,") and entry[3:]
    ]
    if not candidates:
        raise SignatureInvalid(f"{_HEADER_SIGNATURE} has no v1 signature")
    if not secrets:
        raise SignatureInvalid("no secret to verify against")

    matched = False
    for secret in secrets:
        expected = _signature(_key(secret), msg_id, timestamp, body).encode("ascii")
        for candidate in candidates:
            # No early exit: keep the work independent of which entry matches.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureInvalid("no signature matches")


def _required(lowered: Mapping[str, str], name: str) -> str:
    value = lowered.get(name)
    if value is None or value == "":
        raise SignatureInvalid(f"missing header {name}")
    return value

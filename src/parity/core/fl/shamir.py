"""Shamir secret sharing over the prime field GF(2^521 - 1).

A secret of up to 64 bytes (SecAgg+ shares 32-byte X25519 private keys and 32-byte mask seeds)
is one field element, so it is shared whole, never cut into chunks. :func:`split_secret` puts it
at f(0) of a random polynomial of degree ``threshold - 1`` and hands out ``f(1) .. f(n)``; any
``threshold`` shares give it back by Lagrange interpolation at 0 (:func:`combine`), fewer reveal
nothing about it.

Checks: :func:`combine` refuses fewer than ``threshold`` distinct shares, two different values
for one index, and — when it has more shares than it needs — shares that do not lie on one
polynomial of degree ``threshold - 1``. With exactly ``threshold`` shares a wrong share cannot be
seen from the shares alone; the caller's ``check`` (does the key match its published public key,
does the seed match its commitment) catches it, and :func:`combine_robust` then searches for a
subset of shares that passes and names the shares it had to leave out.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from parity.core.fl.privacy_errors import ShamirError

__all__ = [
    "MAX_SECRET_BYTES",
    "PRIME",
    "Share",
    "combine",
    "combine_robust",
    "split_secret",
]

# The Mersenne prime 2^521 - 1: larger than any 64-byte secret.
PRIME = 2**521 - 1
MAX_SECRET_BYTES = 64
_VALUE_BYTES = 66  # ceil(521 / 8)
# combine_robust tries at most this many subsets: C(11, 5) = 462, C(15, 7) = 6435 (SecAgg+
# neighbourhoods are small); beyond it the caller gets an error rather than a long search.
MAX_SUBSETS = 10_000


@dataclass(frozen=True)
class Share:
    """The point ``(index, f(index))``; ``index`` is 1-based and identifies the holder."""

    index: int
    value: int

    def to_bytes(self) -> bytes:
        return self.index.to_bytes(2, "big") + self.value.to_bytes(_VALUE_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != 2 + _VALUE_BYTES:
            raise ShamirError("shares", f"a share is {2 + _VALUE_BYTES} bytes, got {len(data)}")
        index = int.from_bytes(data[:2], "big")
        value = int.from_bytes(data[2:], "big")
        if index == 0 or value >= PRIME:
            raise ShamirError("shares", "a share's index is 0 or its value is outside the field")
        return cls(index, value)


def split_secret(
    secret: bytes,
    threshold: int,
    holders: int | Sequence[int],
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> list[Share]:
    """Shares of ``secret``, any ``threshold`` of which recover it: at x = 1..n for an int n, or
    at the given distinct positive ``holders`` indices (in that order). ``randbelow`` draws the
    polynomial's coefficients (a CSPRNG by default; tests may pass a seeded one)."""
    indices = list(range(1, holders + 1)) if isinstance(holders, int) else list(holders)
    if len(secret) > MAX_SECRET_BYTES:
        raise ShamirError("secret", f"secrets are at most {MAX_SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(indices):
        raise ShamirError("threshold", "need 1 <= threshold <= the number of shares")
    if len(set(indices)) != len(indices) or not all(0 < i < 2**16 for i in indices):
        raise ShamirError("holders", "share indices must be distinct, from 1 to 65535")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [randbelow(PRIME) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coefficients, x)) for x in indices]


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):  # Horner
        result = (result * x + coefficient) % PRIME
    return result


def _interpolate(points: Sequence[Share], x: int) -> int:
    """The value at ``x`` of the polynomial of degree ``len(points) - 1`` through ``points``."""
    total = 0
    for i, pi in enumerate(points):
        numerator, denominator = 1, 1
        for j, pj in enumerate(points):
            if i != j:
                numerator = numerator * (x - pj.index) % PRIME
                denominator = denominator * (pi.index - pj.index) % PRIME
        total = (total + pi.value * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total


def _distinct(shares: Iterable[Share]) -> list[Share]:
    by_index: dict[int, Share] = {}
    for share in shares:
        seen = by_index.get(share.index)
        if seen is not None and seen.value != share.value:
            raise ShamirError("shares", f"two different shares with index {share.index}")
        by_index[share.index] = share
    return [by_index[i] for i in sorted(by_index)]


def _to_secret(value: int, secret_length: int) -> bytes:
    if value >= 256**secret_length:
        raise ShamirError("shares", "the shares do not combine to a secret of the expected size")
    return value.to_bytes(secret_length, "big")


def combine(shares: Iterable[Share], threshold: int, secret_length: int = 32) -> bytes:
    """The secret from at least ``threshold`` shares, all of which must agree."""
    points = _distinct(shares)
    if len(points) < threshold:
        raise ShamirError(
            "shares", f"{len(points)} share(s) for a secret that needs {threshold} to rebuild"
        )
    base = points[:threshold]
    wrong = [p.index for p in points[threshold:] if _interpolate(base, p.index) != p.value]
    if wrong:
        raise ShamirError(
            "shares", f"the shares are inconsistent (index {wrong[0]} disagrees with the others)"
        )
    return _to_secret(_interpolate(base, 0), secret_length)


def combine_robust(
    shares: Iterable[Share],
    threshold: int,
    check: Callable[[bytes], bool],
    secret_length: int = 32,
) -> tuple[bytes, list[int]]:
    """The secret that passes ``check``, and the indices of shares that disagree with it.

    Tries all shares first; if they are inconsistent or fail the check, tries subsets of
    ``threshold`` shares (at most :data:`MAX_SUBSETS`). Fails when no subset passes, which is
    the case once fewer than ``threshold`` honest shares are left."""
    points = _distinct(shares)
    if len(points) < threshold:
        raise ShamirError(
            "shares", f"{len(points)} share(s) for a secret that needs {threshold} to rebuild"
        )
    try:
        secret = combine(points, threshold, secret_length)
        if check(secret):
            return secret, []
    except ShamirError:
        pass
    for tried, subset in enumerate(itertools.combinations(points, threshold)):
        if tried >= MAX_SUBSETS:
            break
        value = _interpolate(subset, 0)
        if value >= 256**secret_length:
            continue
        secret = value.to_bytes(secret_length, "big")
        if check(secret):
            wrong = [p.index for p in points if _interpolate(subset, p.index) != p.value]
            return secret, wrong
    raise ShamirError(
        "shares",
        f"no {threshold} of the {len(points)} shares rebuild a secret that passes its check",
    )

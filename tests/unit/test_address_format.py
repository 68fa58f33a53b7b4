"""Addresses and signatures are read whole: a trailing newline is not part of a valid value
(a `$` in a pattern matches before one; the address was then told it failed its checksum)."""

from __future__ import annotations

import pytest

from parity.auth.errors import InvalidAddress, InvalidSignature
from parity.auth.signatures import normalize_address, recover_signer

ADDRESS = "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"


def test_a_checksummed_address_is_read_lowercase() -> None:
    assert normalize_address(ADDRESS) == ADDRESS.lower()


@pytest.mark.parametrize("value", [ADDRESS + "\n", ADDRESS.lower() + "\n", " " + ADDRESS])
def test_an_address_with_anything_around_it_is_not_an_address(value: str) -> None:
    with pytest.raises(InvalidAddress) as refused:
        normalize_address(value)
    assert "must be a 0x-prefixed 20-byte hex address" in str(refused.value)


def test_a_signature_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        recover_signer("message", "0x" + "ab" * 65 + "\n")

"""Address validation and EIP-191 signer recovery (eth-account does the secp256k1 work)."""

from __future__ import annotations

import re
from typing import cast

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import is_checksum_address, to_checksum_address

from parity.auth.errors import InvalidAddress, InvalidSignature

_ADDR = re.compile(r"^0x[0-9a-fA-F]{40}\Z")
_SIG = re.compile(r"^(0x)?[0-9a-fA-F]{130}\Z")


def normalize_address(value: str, field: str = "address") -> str:
    """Lowercase form of a 0x address; mixed case must pass the EIP-55 checksum."""
    if not isinstance(value, str) or not _ADDR.match(value):
        raise InvalidAddress(field, "must be a 0x-prefixed 20-byte hex address")
    body = value[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(value):
        raise InvalidAddress(field, "mixed-case address fails its EIP-55 checksum")
    return value.lower()


def checksum(address: str) -> str:
    return cast(str, to_checksum_address(address))


def recover_signer(message: str, signature: str) -> str:
    """The lowercase address that signed ``message`` under EIP-191 (personal_sign).

    ``v`` may be 0/1 or 27/28 and the hex may come with or without ``0x``."""
    if not isinstance(signature, str) or not _SIG.match(signature):
        raise InvalidSignature("signature must be 65 bytes of hex (r, s, v)")
    raw = bytearray(bytes.fromhex(signature.removeprefix("0x")))
    if raw[64] in (0, 1):
        raw[64] += 27
    if raw[64] not in (27, 28):
        raise InvalidSignature("signature has an invalid recovery id (v)")
    try:
        signer = Account.recover_message(encode_defunct(text=message), signature=bytes(raw))
    except Exception as exc:  # eth-keys raises several types for malformed points
        raise InvalidSignature("signature could not be verified") from exc
    return cast(str, signer).lower()

"""Stake ids: the ONE function that names a stake, used by stake, balance and settlement.

The StakeWallet keys stakes by string. New stakes use the account's lowercase ``0x`` address
(our StakeWallet binds such an id to that address, so nobody can claim it first).
``STAKE_ID_MODE=device`` uses the runner's device id instead, only to reach stakes the original
runner made (it staked under its device id).
"""

from __future__ import annotations

from typing import Literal

StakeIdMode = Literal["address", "device"]


class StakeIdError(ValueError):
    """The inputs cannot name a stake; the message says why."""


def stake_id(address: str, mode: StakeIdMode = "address", device_id: str | None = None) -> str:
    """The stake id for ``address`` (a 20-byte 0x address; mixed case must be EIP-55).

    ``mode="address"`` → ``address.lower()``; ``mode="device"`` → ``device_id`` exactly as the
    original runner passed it (required then)."""
    if not _is_address(address):
        raise StakeIdError(f"not a 0x address: {address!r}")
    if mode == "address":
        return address.lower()
    if mode == "device":
        if not device_id:
            raise StakeIdError("STAKE_ID_MODE=device needs a device id (--device-id)")
        return device_id
    raise StakeIdError(f"unknown STAKE_ID_MODE {mode!r}; expected address or device")


def _is_address(value: str) -> bool:
    if len(value) != 42 or not value.startswith(("0x", "0X")):
        return False
    digits = value[2:]
    try:
        int(digits, 16)
    except ValueError:
        return False
    # All-lower or all-upper hex carries no checksum; mixed case must be a valid EIP-55 one.
    if digits.lower() == digits or digits.upper() == digits:
        return True
    from eth_utils.address import is_checksum_address  # slow to import: only when needed

    return bool(is_checksum_address(value))

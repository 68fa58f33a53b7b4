"""The one function that names a stake."""

from __future__ import annotations

import pytest

from parity.chain.stake_ids import StakeIdError, stake_id

CHECKSUMMED = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def test_address_mode_gives_the_lowercase_address():
    assert stake_id(CHECKSUMMED) == CHECKSUMMED.lower()
    assert stake_id(CHECKSUMMED.lower(), "address") == CHECKSUMMED.lower()
    assert stake_id(CHECKSUMMED, "address", device_id="ignored") == CHECKSUMMED.lower()


def test_device_mode_gives_the_device_id_unchanged():
    assert stake_id(CHECKSUMMED, "device", device_id="ab12CD") == "ab12CD"


def test_device_mode_needs_a_device_id():
    with pytest.raises(StakeIdError, match="device id"):
        stake_id(CHECKSUMMED, "device")


@pytest.mark.parametrize(
    "bad", ["", "0x123", "f39fd6e51aad88f6f4ce6ab8827279cfffb92266xx", "0x" + "g" * 40]
)
def test_non_addresses_are_refused(bad: str):
    with pytest.raises(StakeIdError):
        stake_id(bad)


def test_a_mixed_case_address_must_carry_a_valid_checksum():
    broken = "0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    with pytest.raises(StakeIdError):
        stake_id(broken)
    assert stake_id(CHECKSUMMED.upper().replace("0X", "0x")) == CHECKSUMMED.lower()


def test_an_unknown_mode_is_refused():
    with pytest.raises(StakeIdError, match="STAKE_ID_MODE"):
        stake_id(CHECKSUMMED, "wallet")  # type: ignore[arg-type]

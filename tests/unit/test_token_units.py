"""Token amounts: exact base-unit ints, text only at the edges, floats refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity.core.billing.units import (
    MAX_UINT256,
    AmountError,
    format_base_units,
    format_token_amount,
    parse_base_units,
    parse_token_amount,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5", 5 * 10**18),
        ("1.5", 15 * 10**17),
        ("0.000000000000000001", 1),
        (".5", 5 * 10**17),
        ("5.", 5 * 10**18),
        ("  2.25 ", 225 * 10**16),
        ("1000000", 10**24),
        ("1.500000000000000000000", 15 * 10**17),
    ],
)
def test_token_amounts_parse_to_exact_base_units(text: str, expected: int):
    assert parse_token_amount(text, 18) == expected


@pytest.mark.parametrize(
    "text", ["", ".", "-1", "+1", "1e18", "1,5", "1_000", "0x10", "1.2.3", "nan", "inf", " "]
)
def test_malformed_token_amounts_are_refused(text: str):
    with pytest.raises(AmountError):
        parse_token_amount(text, 18)


def test_more_decimal_places_than_the_token_has_are_refused_not_rounded():
    with pytest.raises(AmountError, match="19 decimal places; the token has 18"):
        parse_token_amount("0.0000000000000000001", 18)
    with pytest.raises(AmountError, match="3 decimal places; the token has 2"):
        parse_token_amount("1.005", 2)


def test_floats_are_refused_everywhere():
    for call in (
        lambda: parse_token_amount(1.5, 18),  # type: ignore[arg-type]
        lambda: parse_base_units(1.0),  # type: ignore[arg-type]
        lambda: parse_base_units(True),
        lambda: format_token_amount(1.5, 18),  # type: ignore[arg-type]
        lambda: format_base_units(2.0),  # type: ignore[arg-type]
    ):
        with pytest.raises(AmountError, match="refused"):
            call()


def test_zero_is_refused_for_token_amounts_unless_allowed():
    with pytest.raises(AmountError, match="greater than zero"):
        parse_token_amount("0.0", 18)
    assert parse_token_amount("0", 18, allow_zero=True) == 0


def test_base_unit_strings_are_digits_only_within_uint256():
    assert parse_base_units("1000000000000000000000000") == 10**24
    assert parse_base_units(7) == 7
    assert parse_base_units(str(MAX_UINT256)) == MAX_UINT256
    for bad in ("1.0", "1e3", "-5", "", "0x1f", str(MAX_UINT256 + 1)):
        with pytest.raises(AmountError):
            parse_base_units(bad)
    with pytest.raises(AmountError, match="greater than zero"):
        parse_base_units("0", allow_zero=False)


def test_formatting_keeps_one_decimal_and_every_significant_digit():
    assert format_token_amount(5 * 10**18, 18) == "5.0"
    assert format_token_amount(15 * 10**17, 18) == "1.5"
    assert format_token_amount(1, 18) == "0.000000000000000001"
    assert format_token_amount(0, 18) == "0.0"
    assert format_token_amount(-25, 1) == "-2.5"
    assert format_token_amount(42, 0) == "42.0"
    assert format_base_units(10**24) == "1000000000000000000000000"


@given(st.integers(min_value=1, max_value=MAX_UINT256), st.integers(min_value=0, max_value=30))
def test_format_then_parse_round_trips(base_units: int, decimals: int):
    assert parse_token_amount(format_token_amount(base_units, decimals), decimals) == base_units

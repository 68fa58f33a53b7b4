"""Token amounts: Python ``int`` in base units everywhere; text only at the edges.

Two text forms exist and they must never be confused:

* **base units** (the wire): a decimal integer string such as ``"1500000000000000000"``; what the
  API sends and accepts (§4: "token amounts on the wire are decimal strings in the token's base
  unit").
* **token units** (people): ``"1.5"`` with at most ``decimals`` fractional digits, what a CLI user
  types; ``1.5 * 10**decimals`` base units.

Floats are refused in both directions: 18 decimals exceed a double's 53-bit mantissa (``0.1``
tokens is not representable), so a float amount is always a bug upstream.
"""

from __future__ import annotations

import re

MAX_UINT256 = 2**256 - 1

_BASE_UNITS = re.compile(r"[0-9]+")
_TOKEN_UNITS = re.compile(r"(?P<whole>[0-9]*)(?:\.(?P<frac>[0-9]*))?")


class AmountError(ValueError):
    """An amount is malformed, negative, too precise or out of range; the message says which."""


def _refuse_non_text(value: object, what: str) -> None:
    if isinstance(value, bool | float):
        raise AmountError(f"{what}: {type(value).__name__} amounts are refused; use a string")


def parse_base_units(value: str | int, *, allow_zero: bool = True) -> int:
    """A wire amount (decimal base-unit string, or an ``int``) as an ``int``.

    Refuses floats, booleans, signs, fractions, exponents, whitespace-only and anything above
    ``2**256 - 1`` (the EVM's uint256 limit)."""
    _refuse_non_text(value, "amount")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if not _BASE_UNITS.fullmatch(text):
            raise AmountError(
                f"amount {value!r} is not a whole number of base units (digits only, no sign, "
                "no decimal point)"
            )
        number = int(text)
    else:
        raise AmountError(f"amount: {type(value).__name__} is not a base-unit string")
    return _check_range(number, allow_zero)


def parse_token_amount(text: str, decimals: int, *, allow_zero: bool = False) -> int:
    """``"1.5"`` tokens → ``1.5 * 10**decimals`` base units, exactly.

    At most ``decimals`` significant fractional digits (more would need rounding, which
    silently moves money); no sign, exponent or thousands separator. Zero is refused unless
    ``allow_zero``."""
    _refuse_non_text(text, "amount")
    if not isinstance(text, str):
        raise AmountError(f"amount: {type(text).__name__} is not a token amount string")
    if decimals < 0:
        raise AmountError(f"decimals must be >= 0, got {decimals}")
    stripped = text.strip()
    match = _TOKEN_UNITS.fullmatch(stripped)
    if match is None or stripped in ("", "."):
        raise AmountError(
            f"amount {text!r} is not a plain decimal number of tokens (e.g. 5 or 1.25)"
        )
    whole = match.group("whole") or "0"
    # Trailing zeros are exact at any precision ("1.50" with 1 decimal is 15 units).
    frac = (match.group("frac") or "").rstrip("0")
    if len(frac) > decimals:
        raise AmountError(
            f"amount {text!r} has {len(frac)} decimal places; the token has {decimals}"
        )
    number = int(whole) * 10**decimals + int(frac.ljust(decimals, "0") or "0")
    return _check_range(number, allow_zero)


def format_token_amount(base_units: int, decimals: int) -> str:
    """Base units → token units, exact, with at least one fractional digit: ``5 * 10**18`` →
    ``"5.0"``, ``15 * 10**17`` → ``"1.5"``, ``1`` → ``"0.000000000000000001"``."""
    _refuse_non_text(base_units, "amount")
    if decimals < 0:
        raise AmountError(f"decimals must be >= 0, got {decimals}")
    sign = "-" if base_units < 0 else ""
    whole, frac = divmod(abs(base_units), 10**decimals)
    digits = str(frac).rjust(decimals, "0").rstrip("0") if decimals else ""
    return f"{sign}{whole}.{digits or '0'}"


def format_base_units(base_units: int) -> str:
    """The wire form: a decimal integer string."""
    _refuse_non_text(base_units, "amount")
    return str(int(base_units))


def _check_range(number: int, allow_zero: bool) -> int:
    if number < 0:
        raise AmountError(f"amount {number} is negative")
    if number == 0 and not allow_zero:
        raise AmountError("amount must be greater than zero")
    if number > MAX_UINT256:
        raise AmountError("amount exceeds 2**256 - 1, the largest uint256")
    return number

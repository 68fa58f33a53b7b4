"""The 409 ``insufficient_funds`` a person reads: amounts in tokens with the symbol (and base
units), the default timeout named when it is what made the escrow large, and what to change."""

from __future__ import annotations

from parity.core.billing.pricing import reservation_amount
from parity.ledger.errors import Shortfall

TOKEN = 10**18


def _shortfall(**over: object) -> Shortfall:
    fields: dict[str, object] = {
        "account": "0xc1",
        "required": reservation_amount(TOKEN // 10, TOKEN, 3600),  # 0.1 + 0.001/s * 3600 s
        "available": 3 * TOKEN,
        "stake": 3 * TOKEN,
        "reserved": 0,
        "unsettled_debits": 0,
        "base": TOKEN // 10,
        "rate_milli": TOKEN,  # 0.001 token per second
        "timeout_seconds": 3600,
        "timeout_is_default": True,
        "decimals": 18,
        "symbol": "PRTY",
    }
    fields.update(over)
    return Shortfall(**fields)  # type: ignore[arg-type]


def test_message_speaks_tokens_with_the_symbol_and_keeps_base_units():
    error = _shortfall().error()
    assert error.code == "insufficient_funds"
    assert "up to 3.7 PRTY (3700000000000000000 base units)" in error.message
    assert "0.1 PRTY per task + 0.001 PRTY per second" in error.message
    assert "0xc1 has 3.0 PRTY available" in error.message
    assert "0.7 PRTY (700000000000000000 base units) missing" in error.message
    assert error.details["missing"] == str(7 * TOKEN // 10)
    assert (error.details["symbol"], error.details["decimals"]) == ("PRTY", 18)


def test_message_names_the_default_timeout_and_the_settings_to_change():
    message = _shortfall().error().message
    assert "timeout_seconds of 3600 (the server's default, BILLING_DEFAULT_TIMEOUT_SECONDS" in (
        message
    )
    assert "PRICE_*" in message
    assert "set the task's timeout_seconds to at most 2900" in message
    assert "stake at least 0.7 PRTY more (parity-server stake)" in message


def test_the_suggested_timeout_is_the_longest_that_fits():
    short = _shortfall(available=TOKEN)
    fits = short.fitting_timeout
    assert reservation_amount(short.base, short.rate_milli, fits) <= TOKEN
    assert reservation_amount(short.base, short.rate_milli, fits + 1) > TOKEN
    assert short.error().details["fitting_timeout_seconds"] == fits


def test_an_explicit_timeout_is_not_called_the_default():
    message = _shortfall(timeout_is_default=False).error().message
    assert "BILLING_DEFAULT_TIMEOUT_SECONDS" not in message


def test_when_no_timeout_fits_only_staking_is_suggested():
    short = _shortfall(available=TOKEN // 20, rate_milli=0, required=TOKEN // 10)
    message = short.error().message
    assert short.fitting_timeout == 0
    assert "timeout_seconds to at most" not in message and "fewer resources" not in message
    assert "To fit, stake at least 0.05 PRTY more" in message

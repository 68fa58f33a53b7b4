"""Secrets never reach a log line; public values named like them (the token's contract
address, its symbol) do."""

from __future__ import annotations

import io
import json
import sys

import pytest

from parity.logging import configure_logging, get_logger, is_secret_key


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "runner_token",
        "claim_token",
        "sessionToken",
        "authorization",
        "Authorization",
        "signature",
        "password",
        "keystore_password",
        "password_hash",
        "secret",
        "webhook_secret",
        "private_key",
        "settlement_private_key",
        "api_key",
        "x-api-key",
        "cookie",
        "set-cookie",
    ],
)
def test_secret_keys_are_recognised(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "token_address",
        "token_symbol",
        "token_decimals",
        "stake_wallet_address",
        "prompt_tokens",
        "max_tokens",
        "token_hash",
        "key",
        "signer",
        "device_id",
    ],
)
def test_public_keys_are_not_redacted(key: str) -> None:
    assert not is_secret_key(key)


def test_a_chain_check_log_line_shows_the_token_address_and_hides_the_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    configure_logging("info", "json")
    address = "0x" + "70" * 20
    get_logger("test").info(
        "chain_checked",
        token_address=address,
        runner_token="ps_run_" + "ab" * 16,
        detail="sent ps_sess_" + "cd" * 16,
    )
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["token_address"] == address
    assert line["runner_token"] == "[redacted]"
    assert line["detail"] == "sent ps_sess_[redacted]"

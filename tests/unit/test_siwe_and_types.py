from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from parity.core import tokens
from parity.core.identity import siwe


def test_message_layout_follows_eip4361():
    t = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    msg = siwe.build_message(
        siwe.SiweRequest(
            domain="example.org",
            address="0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
            uri="https://example.org",
            chain_id=314159,
            nonce="abcDEF123",
            issued_at=t,
            expiration_time=t + timedelta(minutes=5),
        )
    )
    assert msg.splitlines() == [
        "example.org wants you to sign in with your Ethereum account:",
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "",
        siwe.STATEMENT,
        "",
        "URI: https://example.org",
        "Version: 1",
        "Chain ID: 314159",
        "Nonce: abcDEF123",
        "Issued At: 2026-01-02T03:04:05.678Z",
        "Expiration Time: 2026-01-02T03:09:05.678Z",
    ]


def test_nonce_is_alphanumeric_and_as_long_as_its_entropy():
    n = siwe.make_nonce(bytes(range(16)))
    assert len(n) == 16 and n.isalnum()


def test_tokens_carry_kind_prefix_and_hash_to_sha256():
    tok = tokens.make_token("runner", b"\x01" * 32)
    assert tok == "ps_run_" + "01" * 32
    assert tokens.token_kind(tok) == "runner"
    assert len(tokens.hash_token(tok)) == 64
    assert tokens.token_kind("sk-other") is None
    with pytest.raises(ValueError):
        tokens.make_token("session", b"short")

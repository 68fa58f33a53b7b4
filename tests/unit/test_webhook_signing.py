"""Standard Webhooks signatures: known vector, verification, rotation and refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from parity.webhooks.signing import SignatureInvalid, headers, new_secret, sign, verify

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OTHER_SECRET = new_secret(b"\x07" * 32)
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
TS = 1_700_000_000
BODY = b'{"type":"task.offered","data":{"id":"42"}}'


def _expected_signature(key: bytes, msg_id: str, ts: int, body: bytes) -> str:
    mac = hmac.new(key, msg_id.encode() + b"." + str(ts).encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def test_new_secret_is_whsec_prefixed_base64_of_the_bytes() -> None:
    raw = b"\x01" * 24
    secret = new_secret(raw)
    assert secret.startswith("whsec_")
    assert base64.b64decode(secret[len("whsec_") :]) == raw


def test_new_secret_refuses_fewer_than_24_bytes() -> None:
    with pytest.raises(ValueError):
        new_secret(b"\x01" * 23)


def test_sign_matches_independently_computed_hmac() -> None:
    assert sign(SECRET, MSG_ID, TS, BODY) == _expected_signature(KEY, MSG_ID, TS, BODY)


def test_sign_matches_the_standard_webhooks_reference_vector() -> None:
    # Vector from the standard-webhooks reference libraries' test suites.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    body = b'{"test": 2432232314}'
    assert sign(secret, msg_id, 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_headers_carry_id_timestamp_and_signature() -> None:
    assert headers(SECRET, MSG_ID, TS, BODY) == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TS),
        "webhook-signature": _expected_signature(KEY, MSG_ID, TS, BODY),
    }


def test_verify_accepts_a_fresh_correct_message() -> None:
    verify([SECRET], headers(SECRET, MSG_ID, TS, BODY), BODY, now=TS + 10)


def test_verify_looks_headers_up_case_insensitively() -> None:
    sent = {k.title(): v for k, v in headers(SECRET, MSG_ID, TS, BODY).items()}
    verify([SECRET], sent, BODY, now=TS)


@pytest.mark.parametrize("signed_with", [SECRET, OTHER_SECRET])
def test_verify_accepts_either_secret_during_rotation(signed_with: str) -> None:
    verify([OTHER_SECRET, SECRET], headers(signed_with, MSG_ID, TS, BODY), BODY, now=TS)


def test_verify_refuses_a_retired_secret() -> None:
    with pytest.raises(SignatureInvalid, match="no signature matches"):
        verify([OTHER_SECRET], headers(SECRET, MSG_ID, TS, BODY), BODY, now=TS)


def test_verify_refuses_a_tampered_body() -> None:
    sent = headers(SECRET, MSG_ID, TS, BODY)
    with pytest.raises(SignatureInvalid, match="no signature matches"):
        verify([SECRET], sent, BODY.replace(b"42", b"43"), now=TS)


def test_verify_refuses_a_changed_message_id() -> None:
    sent = headers(SECRET, MSG_ID, TS, BODY) | {"webhook-id": "msg_other"}
    with pytest.raises(SignatureInvalid, match="no signature matches"):
        verify([SECRET], sent, BODY, now=TS)


def test_verify_refuses_a_timestamp_older_than_tolerance() -> None:
    with pytest.raises(SignatureInvalid, match="too old"):
        verify([SECRET], headers(SECRET, MSG_ID, TS, BODY), BODY, now=TS + 301)


def test_verify_refuses_a_timestamp_in_the_future_beyond_tolerance() -> None:
    with pytest.raises(SignatureInvalid, match="future"):
        verify([SECRET], headers(SECRET, MSG_ID, TS, BODY), BODY, now=TS - 301)


@pytest.mark.parametrize("offset", [-300, 300])
def test_verify_accepts_a_timestamp_exactly_at_tolerance(offset: int) -> None:
    verify([SECRET], headers(SECRET, MSG_ID, TS, BODY), BODY, now=TS + offset)


def test_verify_honours_a_custom_tolerance() -> None:
    sent = headers(SECRET, MSG_ID, TS, BODY)
    with pytest.raises(SignatureInvalid):
        verify([SECRET], sent, BODY, now=TS + 61, tolerance=60)


def test_verify_accepts_a_matching_signature_among_several() -> None:
    sent = headers(SECRET, MSG_ID, TS, BODY)
    good = sent["webhook-signature"]
    bad = "v1," + base64.b64encode(b"\x00" * 32).decode()
    sent["webhook-signature"] = f"v2,whatever {bad} {good} v1a,junk"
    verify([SECRET], sent, BODY, now=TS)


def test_verify_refuses_when_only_non_v1_signatures_are_present() -> None:
    sent = headers(SECRET, MSG_ID, TS, BODY)
    sent["webhook-signature"] = sent["webhook-signature"].replace("v1,", "v2,")
    with pytest.raises(SignatureInvalid, match="no v1 signature"):
        verify([SECRET], sent, BODY, now=TS)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_refuses_a_missing_header(missing: str) -> None:
    sent = headers(SECRET, MSG_ID, TS, BODY)
    del sent[missing]
    with pytest.raises(SignatureInvalid, match=f"missing header {missing}"):
        verify([SECRET], sent, BODY, now=TS)


@pytest.mark.parametrize("bad_ts", ["abc", "1.5", "-1700000000", "1_700_000_000", "١٢٣"])
def test_verify_refuses_a_timestamp_that_is_not_an_integer(bad_ts: str) -> None:
    sent = headers(SECRET, MSG_ID, TS, BODY) | {"webhook-timestamp": bad_ts}
    with pytest.raises(SignatureInvalid, match="not an integer"):
        verify([SECRET], sent, BODY, now=TS)


def test_verify_refuses_when_no_secret_is_given() -> None:
    with pytest.raises(SignatureInvalid):
        verify([], headers(SECRET, MSG_ID, TS, BODY), BODY, now=TS)


def test_signature_invalid_carries_its_reason() -> None:
    with pytest.raises(SignatureInvalid) as info:
        verify([SECRET], {}, BODY, now=TS)
    assert info.value.reason == str(info.value) == "missing header webhook-id"


@pytest.mark.parametrize(
    "bad_secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not*base64", "whsec_"]
)
def test_malformed_secret_is_a_value_error(bad_secret: str) -> None:
    with pytest.raises(ValueError):
        sign(bad_secret, MSG_ID, TS, BODY)

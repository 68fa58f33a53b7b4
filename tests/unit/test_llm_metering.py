"""Token metering: integer cost rounded up once, the tokenizer estimate, the reservation,
output capped at max_tokens, reported counts cross-checked and estimated when missing."""

from __future__ import annotations

import pytest

from parity.core.llm.metering import (
    INPUT_TOLERANCE,
    OUTPUT_TOLERANCE,
    LlmPrice,
    Tolerance,
    disagrees,
    estimate_prompt_tokens,
    estimate_text_tokens,
    max_prompt_tokens,
    meter,
    reservation_amount,
    token_cost,
)
from parity.core.llm.request import parse_llm_config

COSTS = [
    pytest.param(0, 0, LlmPrice(7, 9), 0, id="nothing-costs-nothing"),
    pytest.param(1000, 1000, LlmPrice(3, 5), 8, id="whole-thousands"),
    pytest.param(1, 0, LlmPrice(1, 0), 1, id="one-token-rounds-up-to-one-unit"),
    pytest.param(500, 500, LlmPrice(1, 1), 1, id="ceil-over-the-sum-not-per-part"),
    pytest.param(1001, 0, LlmPrice(1000, 0), 1001, id="exact-division"),
    pytest.param(1234, 567, LlmPrice(10**15, 3 * 10**15), 2_935 * 10**12, id="18-decimal-prices"),
    pytest.param(10**6, 10**6, LlmPrice(0, 0), 0, id="free"),
]


@pytest.mark.parametrize(("input_tokens", "output_tokens", "price", "expected"), COSTS)
def test_token_cost(input_tokens: int, output_tokens: int, price: LlmPrice, expected: int) -> None:
    assert token_cost(input_tokens, output_tokens, price) == expected


def test_token_cost_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="token counts"):
        token_cost(-1, 0, LlmPrice(1, 1))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_price_refuses_non_integer_or_negative(bad: object) -> None:
    with pytest.raises(ValueError, match="input_per_1k"):
        LlmPrice(bad, 0)  # type: ignore[arg-type]


def test_price_snapshot_round_trips_as_decimal_strings() -> None:
    price = LlmPrice(12 * 10**18, 7)
    snap = price.snapshot()
    assert snap == {"input_per_1k": "12000000000000000000", "output_per_1k": "7"}
    assert LlmPrice.from_snapshot(snap) == price


ESTIMATES = [
    pytest.param("", 0, id="empty"),
    pytest.param("hi", 1, id="short-word"),
    pytest.param("Write a short poem about the sea.", 9, id="english-bytes-over-4"),
    pytest.param("1234567890", 10, id="digits-count-one-each"),
    pytest.param("a=b+c;", 6, id="punctuation-counts-one-each"),
    pytest.param("你好世界", 3, id="cjk-by-utf8-bytes"),
    pytest.param("   \n\t ", 2, id="whitespace-by-bytes"),
    pytest.param("x" * 4000, 1000, id="long-word-by-bytes"),
]


@pytest.mark.parametrize(("text", "expected"), ESTIMATES)
def test_estimate_text_tokens(text: str, expected: int) -> None:
    assert estimate_text_tokens(text) == expected


@pytest.mark.parametrize("text", ["a", "héllo wörld", "1,2,3", "🙂🙂", "x y z " * 50])
def test_estimate_never_exceeds_the_byte_count(text: str) -> None:
    assert 1 <= estimate_text_tokens(text) <= len(text.encode("utf-8"))


def chat(*contents: str, max_tokens: int = 100):
    return parse_llm_config(
        {
            "model": "m",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": c} for c in contents],
        }
    )


def completion(prompt: str, max_tokens: int = 100):
    return parse_llm_config({"model": "m", "max_tokens": max_tokens, "prompt": prompt})


def test_prompt_estimate_adds_per_message_overhead_and_priming() -> None:
    # 2 messages: (1 + 4) + (9 + 4) + 3 priming
    assert estimate_prompt_tokens(chat("hi", "Write a short poem about the sea.")) == 21


def test_completion_estimate_adds_one_bos_token() -> None:
    assert estimate_prompt_tokens(completion("Write a short poem about the sea.")) == 10


def test_prompt_upper_bound_is_bytes_plus_template_allowance() -> None:
    assert max_prompt_tokens(chat("hi", "héllo")) == 2 + 6 + 2 * 8 + 256
    assert max_prompt_tokens(completion("abc")) == 3 + 8 + 256


def test_upper_bound_is_never_below_the_estimate() -> None:
    for request in (chat("a" * 10, "1 2 3 4"), completion(""), chat("")):
        assert max_prompt_tokens(request) >= estimate_prompt_tokens(request)


def test_reservation_is_input_bound_plus_max_tokens_at_the_price() -> None:
    request = completion("abcd", max_tokens=500)
    price = LlmPrice(input_per_1k=1000, output_per_1k=2000)
    bound = 4 + 8 + 256
    assert reservation_amount(request, price) == bound * 1 + 500 * 2


TOLERANCE = Tolerance(ratio=3.0, slack_tokens=10)
DISAGREEMENT = [
    pytest.param(100, 100, False, id="equal"),
    pytest.param(310, 100, False, id="at-upper-edge"),
    pytest.param(311, 100, True, id="above-ratio-plus-slack"),
    pytest.param(30, 100, False, id="at-lower-edge"),
    pytest.param(29, 100, True, id="below-ratio-minus-slack"),
    pytest.param(10, 0, False, id="slack-covers-small-counts"),
    pytest.param(11, 0, True, id="tokens-reported-for-empty-text"),
    pytest.param(0, 11, True, id="nothing-reported-for-text"),
]


@pytest.mark.parametrize(("reported", "estimate", "expected"), DISAGREEMENT)
def test_disagrees(reported: int, estimate: int, expected: bool) -> None:
    assert disagrees(reported, estimate, TOLERANCE) is expected


def test_default_tolerances_accept_a_real_chat_template() -> None:
    # Measured with SmolLM2-135M-Instruct under llama.cpp: this one-message chat was 38 prompt
    # tokens (its template adds a default system prompt); the estimate must not flag it.
    request = chat("Write a short poem about the sea.", max_tokens=64)
    assert not disagrees(38, estimate_prompt_tokens(request), INPUT_TOLERANCE)
    assert not disagrees(64, estimate_text_tokens("x" * 250), OUTPUT_TOLERANCE)


PRICE = LlmPrice(input_per_1k=1000, output_per_1k=2000)  # 1 and 2 base units per token
TEXT = "The sea is wide and deep, its waves a rolling sleep."  # 52 bytes -> 13 tokens


def test_meter_bills_reported_counts_when_they_agree() -> None:
    result = meter(
        chat("Write a poem."), reported_input=20, reported_output=14, output_text=TEXT, price=PRICE
    )
    assert (result.input_tokens, result.output_tokens) == (20, 14)
    assert result.cost == 20 + 2 * 14
    assert result.flags == ()
    assert not result.flagged


def test_meter_caps_output_at_max_tokens_and_flags_it() -> None:
    result = meter(
        chat("Write a poem.", max_tokens=10),
        reported_input=20,
        reported_output=13,
        output_text=TEXT,
        price=PRICE,
    )
    assert result.output_tokens == 10
    assert result.cost == 20 + 2 * 10
    assert result.flags == ("output_tokens_capped",)
    assert result.flagged


@pytest.mark.parametrize("missing", [None, -3, "12", 4.0, True])
def test_meter_estimates_missing_or_invalid_counts(missing: object) -> None:
    request = chat("Write a poem.")
    result = meter(
        request, reported_input=missing, reported_output=missing, output_text=TEXT, price=PRICE
    )
    assert result.input_tokens == estimate_prompt_tokens(request) == 4 + 4 + 3
    assert result.output_tokens == 13
    assert result.flags == ("input_tokens_estimated", "output_tokens_estimated")
    assert not result.flagged


def test_meter_estimated_output_never_exceeds_max_tokens() -> None:
    result = meter(
        chat("x", max_tokens=5),
        reported_input=9,
        reported_output=None,
        output_text=TEXT,
        price=PRICE,
    )
    assert result.output_tokens == 5


def test_meter_flags_inflated_counts_but_bills_them_within_bounds() -> None:
    request = chat("Write a poem.", max_tokens=1000)
    result = meter(request, reported_input=200, reported_output=500, output_text=TEXT, price=PRICE)
    assert result.flags == ("input_tokens_disagree", "output_tokens_disagree")
    assert (result.input_tokens, result.output_tokens) == (200, 500)
    assert result.flagged


def test_meter_caps_input_at_the_upper_bound_so_the_bill_fits_the_reservation() -> None:
    request = chat("hi", max_tokens=50)
    bound = max_prompt_tokens(request)
    result = meter(
        request, reported_input=10**9, reported_output=50, output_text="x" * 200, price=PRICE
    )
    assert result.input_tokens == bound
    assert "input_tokens_capped" in result.flags
    assert result.cost <= reservation_amount(request, PRICE)


def test_meter_bills_the_partial_text_of_a_broken_stream() -> None:
    result = meter(
        completion("Tell me a story", max_tokens=500),
        reported_input=4,
        reported_output=None,
        output_text="Once upon a time",
        price=PRICE,
    )
    assert result.output_tokens == estimate_text_tokens("Once upon a time") == 4
    assert result.cost == 4 + 2 * 4

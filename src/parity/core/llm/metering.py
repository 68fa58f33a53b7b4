"""Token metering of prompts (ARCHITECTURE §6), in integer base units.

**Cost.** Prices are base units per 1,000 tokens, snapshotted when the prompt is dispatched::

    cost = ceil((input_tokens * input_per_1k + output_tokens * output_per_1k) / 1000)

rounded up once over the sum (never per part), so a non-zero price never bills zero and the
runner is never short-changed by rounding.

**Token estimate** (no tokenizer download; a deterministic heuristic over the text)::

    pieces   = runs of letters/underscores + single digits + single punctuation marks
    estimate = max(ceil(utf8_bytes / 4), pieces)

About four bytes per token holds for English with BPE tokenizers; the piece count is a lower
bound that keeps digit strings and punctuation-heavy text (code) from being underestimated.
``estimate ≤ utf8_bytes`` always (a piece is at least one byte). A prompt adds
:data:`MESSAGE_OVERHEAD_TOKENS` per chat message (role and delimiters) and
:data:`REPLY_PRIMING_TOKENS` for the assistant header, or one token (BOS) for a plain prompt.

**Upper bound of the input** (what the escrow reserves and what billing never exceeds)::

    max_input = utf8_bytes + MESSAGE_BOUND_TOKENS * messages + TEMPLATE_ALLOWANCE_TOKENS

Every text token decodes to at least one byte; the rest covers chat-template tokens (a model's
template may add a default system prompt).

**Cross-check.** A runner-reported count *disagrees* with the estimate when

    reported > ratio * estimate + slack   or   ratio * reported + slack < estimate

(:data:`INPUT_TOLERANCE`: ratio 3, slack 64 tokens, wide enough for chat templates;
:data:`OUTPUT_TOLERANCE`: ratio 3, slack 16). A disagreeing count is still billed (capped) but
flagged for review; a missing or invalid count is replaced by the estimate. Output tokens are
capped at ``max_tokens``; input tokens at the upper bound above, so a bill never exceeds the
reservation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parity.core.llm.request import LlmRequest

__all__ = [
    "INPUT_TOLERANCE",
    "MESSAGE_BOUND_TOKENS",
    "MESSAGE_OVERHEAD_TOKENS",
    "OUTPUT_TOLERANCE",
    "REPLY_PRIMING_TOKENS",
    "TEMPLATE_ALLOWANCE_TOKENS",
    "TOKENS_PER_PRICE_UNIT",
    "LlmPrice",
    "Metered",
    "Tolerance",
    "disagrees",
    "estimate_prompt_tokens",
    "estimate_text_tokens",
    "max_prompt_tokens",
    "meter",
    "reservation_amount",
    "token_cost",
]

TOKENS_PER_PRICE_UNIT = 1000
MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMING_TOKENS = 3
MESSAGE_BOUND_TOKENS = 8
TEMPLATE_ALLOWANCE_TOKENS = 256
BYTES_PER_TOKEN = 4

_PIECES = re.compile(r"[^\W\d]+|\d|[^\w\s]")


@dataclass(frozen=True, slots=True)
class LlmPrice:
    """Base units per 1,000 input and output tokens."""

    input_per_1k: int = 0
    output_per_1k: int = 0

    def __post_init__(self) -> None:
        for name in ("input_per_1k", "output_per_1k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

    @property
    def free(self) -> bool:
        return not (self.input_per_1k or self.output_per_1k)

    def snapshot(self) -> dict[str, str]:
        """The price as stored with a prompt at dispatch (decimal strings, like all amounts)."""
        return {"input_per_1k": str(self.input_per_1k), "output_per_1k": str(self.output_per_1k)}

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> LlmPrice:
        return cls(int(snapshot["input_per_1k"]), int(snapshot["output_per_1k"]))


@dataclass(frozen=True, slots=True)
class Tolerance:
    ratio: float
    slack_tokens: int


INPUT_TOLERANCE = Tolerance(ratio=3.0, slack_tokens=64)
OUTPUT_TOLERANCE = Tolerance(ratio=3.0, slack_tokens=16)


def token_cost(input_tokens: int, output_tokens: int, price: LlmPrice) -> int:
    """``ceil((input * input_per_1k + output * output_per_1k) / 1000)``."""
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError("token counts must be >= 0")
    numerator = input_tokens * price.input_per_1k + output_tokens * price.output_per_1k
    return -(-numerator // TOKENS_PER_PRICE_UNIT)


def estimate_text_tokens(text: str) -> int:
    """``max(ceil(utf8_bytes / 4), pieces)``; 0 for empty text (see the module docstring)."""
    size = len(text.encode("utf-8"))
    if size == 0:
        return 0
    by_size = -(-size // BYTES_PER_TOKEN)
    return max(by_size, len(_PIECES.findall(text)))


def estimate_prompt_tokens(request: LlmRequest) -> int:
    """The estimated input tokens of a prompt, template overhead included."""
    if request.messages is None:
        return estimate_text_tokens(request.prompt or "") + 1
    return REPLY_PRIMING_TOKENS + sum(
        estimate_text_tokens(m.content) + MESSAGE_OVERHEAD_TOKENS for m in request.messages
    )


def max_prompt_tokens(request: LlmRequest) -> int:
    """An upper bound of the prompt's input tokens (bytes + template allowance)."""
    size = sum(len(text.encode("utf-8")) for text in request.texts())
    messages = len(request.messages) if request.messages is not None else 1
    return size + MESSAGE_BOUND_TOKENS * messages + TEMPLATE_ALLOWANCE_TOKENS


def reservation_amount(request: LlmRequest, price: LlmPrice) -> int:
    """The escrow for a prompt at submit: the cost of the input upper bound plus
    ``max_tokens`` output at ``price``. No metered bill exceeds it."""
    return token_cost(max_prompt_tokens(request), request.max_tokens, price)


def disagrees(reported: int, estimate: int, tolerance: Tolerance) -> bool:
    """True when ``reported`` is outside the tolerance band around ``estimate``."""
    return (
        reported > tolerance.ratio * estimate + tolerance.slack_tokens
        or tolerance.ratio * reported + tolerance.slack_tokens < estimate
    )


@dataclass(frozen=True, slots=True)
class Metered:
    """What a prompt is billed, and why.

    ``flags`` name every adjustment: ``input_tokens_estimated`` / ``output_tokens_estimated``
    (missing or invalid report), ``input_tokens_disagree`` / ``output_tokens_disagree`` (the
    report is outside the tolerance of the estimate), ``input_tokens_capped`` /
    ``output_tokens_capped`` (the report exceeded the bound / ``max_tokens``).
    """

    input_tokens: int
    output_tokens: int
    cost: int
    input_estimate: int
    output_estimate: int
    flags: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        """True when a runner's count disagreed with the estimate or exceeded its bound."""
        return any(f.endswith(("_disagree", "_capped")) for f in self.flags)


def meter(
    request: LlmRequest,
    *,
    reported_input: object,
    reported_output: object,
    output_text: str,
    price: LlmPrice,
) -> Metered:
    """Bill one prompt from the runner's reported usage and the text it delivered.

    ``reported_input`` / ``reported_output`` are the runner's counts as received (None when
    absent; anything but a non-negative integer is treated as absent). ``output_text`` is what
    was delivered to the client (the partial text when a stream broke).
    """
    flags: list[str] = []
    input_estimate = estimate_prompt_tokens(request)
    output_estimate = estimate_text_tokens(output_text)
    input_tokens = _count(
        "input", reported_input, input_estimate, max_prompt_tokens(request), INPUT_TOLERANCE, flags
    )
    output_tokens = _count(
        "output", reported_output, output_estimate, request.max_tokens, OUTPUT_TOLERANCE, flags
    )
    return Metered(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost=token_cost(input_tokens, output_tokens, price),
        input_estimate=input_estimate,
        output_estimate=output_estimate,
        flags=tuple(flags),
    )


def _count(
    side: str, reported: object, estimate: int, bound: int, tolerance: Tolerance, flags: list[str]
) -> int:
    if isinstance(reported, bool) or not isinstance(reported, int) or reported < 0:
        flags.append(f"{side}_tokens_estimated")
        return min(estimate, bound)
    if disagrees(reported, estimate, tolerance):
        flags.append(f"{side}_tokens_disagree")
    if reported > bound:
        flags.append(f"{side}_tokens_capped")
        return bound
    return reported

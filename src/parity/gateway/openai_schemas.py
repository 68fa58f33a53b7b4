"""Request bodies of the OpenAI-compatible gateway, and what it does with each parameter.

Honoured end to end (the prompt's task config carries them to the runner and its backend):
``model``, ``messages`` / ``prompt``, ``max_tokens`` / ``max_completion_tokens``,
``temperature``, ``top_p``, ``seed``, ``stop``, ``stream`` and ``stream_options.include_usage``.
Accepted and ignored, since they do not change the answer: :data:`IGNORED`. Every other
parameter is refused (400 naming it) unless its value is OpenAI's default (``n: 1``,
``logprobs: false``, ``response_format: {"type": "text"}``, ``echo: false``, ...), so a
setting is never silently dropped."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from parity.core.llm.request import (
    MAX_OUTPUT_TOKENS,
    parse_seed,
    parse_stop,
    parse_temperature,
    parse_top_p,
)
from parity.core.tasks.config import ConfigInvalid
from parity.errors import InvalidInput

T = TypeVar("T")

# Parameters that do not change the answer (end-user ids, stored-completion and billing-tier
# hints, parallel tool calls without tools): accepted and ignored.
IGNORED = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls",
        "prompt_cache_key",
        "safety_identifier",
    }
)

_NO_TOOLS = "tool and function calls are not offered"
_NO_LOGPROBS = "log probabilities are not offered"
SUFFIX = "a suffix (text insertion) is not offered"
# Parameters not honoured: accepted only with OpenAI's default value (or null), else refused
# saying why.
_DEFAULT_ONLY: dict[str, tuple[tuple[object, ...], str]] = {
    "n": ((1,), "only 1 choice is offered"),
    "best_of": ((1,), "only 1 candidate is generated (best_of 1)"),
    "logprobs": ((False,), _NO_LOGPROBS),
    "top_logprobs": ((0,), _NO_LOGPROBS),
    "logit_bias": (({},), "token biases are not offered"),
    "presence_penalty": ((0,), "penalties are not offered (only 0)"),
    "frequency_penalty": ((0,), "penalties are not offered (only 0)"),
    "response_format": (
        ({"type": "text"},),
        'only {"type": "text"} is offered (no JSON mode or JSON schema)',
    ),
    "tools": (([],), _NO_TOOLS),
    "tool_choice": (("none", "auto"), _NO_TOOLS),
    "functions": (([],), _NO_TOOLS),
    "function_call": (("none", "auto"), _NO_TOOLS),
    "echo": ((False,), "echoing the prompt is not offered"),
    "suffix": (("",), SUFFIX),
    "modalities": ((["text"],), "only text output is offered"),
}
# Keys of a chat message besides role, content and name: accepted only empty (null, "", []).
_MESSAGE_KEYS = ("role", "content", "name")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=255)
    max_tokens: int | None = None
    temperature: Any = None
    top_p: Any = None
    seed: Any = None
    stop: Any = None
    stream: StrictBool = False  # true or false: OpenAI refuses "yes" and 1
    stream_options: StreamOptions | None = None

    def sampling(self) -> dict[str, Any]:
        """The honoured sampling settings and stop sequences, validated, for the prompt; the
        parameters it does not honour are refused here (InvalidInput naming them)."""
        refuse_unsupported(self.model_extra or {})
        if self.stream_options is not None and not self.stream:
            # As OpenAI answers: the options only say how a stream ends.
            raise InvalidInput("stream_options", "only allowed when stream is true")
        return {
            "temperature": checked(parse_temperature, self.temperature, "temperature"),
            "top_p": checked(parse_top_p, self.top_p, "top_p"),
            "seed": checked(parse_seed, self.seed, "seed"),
            "stop": list(checked(parse_stop, self.stop, "stop")) or None,
        }


class ChatCompletionCreate(_Common):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None

    def output_limit(self) -> int | None:
        """``max_completion_tokens`` (OpenAI's current name) or else ``max_tokens``; either,
        when given, must be a positive count."""
        tokens_limit("max_tokens", self.max_tokens)
        tokens_limit("max_completion_tokens", self.max_completion_tokens)
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


class CompletionCreate(_Common):
    prompt: Any = None

    def prompt_text(self) -> str:
        """The one prompt: a string, or a list holding exactly one string."""
        prompt = self.prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise InvalidInput(
                "prompt",
                "must be one string (or a list holding exactly one string); several prompts "
                "and token arrays are not supported",
            )
        return prompt


def tokens_limit(param: str, value: int | None) -> None:
    if value is not None and not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise InvalidInput(param, f"must be between 1 and {MAX_OUTPUT_TOKENS}")


def checked(parse: Callable[[object, str], T], raw: object, param: str) -> T:
    """``parse(raw, param)``, a refusal as InvalidInput naming the parameter."""
    try:
        return parse(raw, param)
    except ConfigInvalid as exc:
        raise InvalidInput(exc.field, exc.reason) from None


def _same(value: object, default: object) -> bool:
    """``value`` equals ``default`` as JSON values (``0`` is not ``false``)."""
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    return type(value) is type(default) or (
        isinstance(value, int | float) and isinstance(default, int | float)
    )


def _is_default(value: object, defaults: tuple[object, ...]) -> bool:
    return any(_same(value, d) and value == d for d in defaults)


Defaults = Mapping[str, tuple[tuple[object, ...], str]]


def refuse_unsupported(
    extra: Mapping[str, Any],
    defaults: Defaults = _DEFAULT_ONLY,
    ignored: frozenset[str] = IGNORED,
    prefix: str = "",
) -> None:
    """Refuse (InvalidInput, code ``unsupported_parameter``) the first parameter of ``extra``
    (the keys this gateway does not take) that asks for what is not offered: one of
    ``defaults`` with a value other than its default or null, or another one (not null) that
    is not ``ignored``. ``prefix`` goes before the name (``options.``)."""
    for key, value in extra.items():
        if key in ignored or value is None:
            continue
        known = defaults.get(key)
        if known is None:
            raise InvalidInput(
                prefix + key, "is not supported by this gateway", code="unsupported_parameter"
            )
        values, why = known
        if not _is_default(value, values):
            raise InvalidInput(prefix + key, why, code="unsupported_parameter")


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as the LLM domain takes them (role, content, name). Any other key of a
    message (``tool_calls``, ``images``, ...) is refused naming it, unless it is empty."""
    out = []
    for i, m in enumerate(messages):
        for key, value in m.items():
            if key not in _MESSAGE_KEYS and value not in (None, "", [], {}):
                raise InvalidInput(
                    f"messages[{i}].{key}",
                    "is not supported (messages carry role, content and name)",
                    code="unsupported_parameter",
                )
        out.append({k: v for k, v in m.items() if k in _MESSAGE_KEYS})
    return out

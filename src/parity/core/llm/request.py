"""The config of an ``llm`` task: ``{model, messages | prompt, max_tokens, temperature?,
top_p?, seed?, stop?, stream?}``.

One parser serves the server (refusals become 422 naming the field) and the runner (which runs
what the server accepted). Refusals are :class:`~parity.core.tasks.config.ConfigInvalid` with a
dotted field path (``config.messages[1].content``), the same error compute configs raise.

Chat content may be a string or OpenAI's list of parts; only ``{"type": "text", "text": ...}``
parts are accepted, joined without a separator into one string (this build carries no images).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from parity.core.tasks.config import ConfigInvalid

__all__ = [
    "MAX_MESSAGES",
    "MAX_MODEL_NAME",
    "MAX_OUTPUT_TOKENS",
    "MAX_PROMPT_BYTES",
    "MAX_STOP_CHARS",
    "MAX_STOP_SEQUENCES",
    "ROLES",
    "ChatMessage",
    "LlmRequest",
    "parse_llm_config",
    "parse_seed",
    "parse_stop",
    "parse_temperature",
    "parse_top_p",
]

MAX_MODEL_NAME = 256
MAX_MESSAGES = 1024
MAX_OUTPUT_TOKENS = 1_048_576
MAX_NAME = 64  # a message's participant name, in characters (OpenAI's limit)
# Prompt text (all messages together) in UTF-8 bytes; keeps a task row and its escrow bounded.
MAX_PROMPT_BYTES = 4 * 1024 * 1024
ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
# Stop sequences: as many as OpenAI takes, each of a bounded length.
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
_SEED_RANGE = (-(2**63), 2**63 - 1)
_KEYS = frozenset(
    {"model", "messages", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream"}
)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    # OpenAI's participant name: sent on to OpenAI-compatible backends (Ollama's chat has none).
    name: str | None = None

    def to_config(self) -> dict[str, str]:
        out = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class LlmRequest:
    """A validated prompt: exactly one of ``messages`` (chat) and ``prompt`` (completion)."""

    model: str
    max_tokens: int
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    temperature: float | None = None
    stream: bool = False
    top_p: float | None = None
    seed: int | None = None
    # Generation ends before the first of these sequences (not included in the text).
    stop: tuple[str, ...] = ()

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def texts(self) -> list[str]:
        """The prompt's text pieces: each message's content, or the one prompt string."""
        if self.messages is not None:
            return [m.content for m in self.messages]
        return [self.prompt or ""]

    def to_config(self) -> dict[str, Any]:
        """The canonical config (what a task row stores and a runner receives)."""
        out: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens}
        if self.messages is not None:
            out["messages"] = [m.to_config() for m in self.messages]
        else:
            out["prompt"] = self.prompt
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.seed is not None:
            out["seed"] = self.seed
        if self.stop:
            out["stop"] = list(self.stop)
        out["stream"] = self.stream
        return out


def parse_llm_config(
    config: Mapping[str, Any] | None, *, default_max_tokens: int | None = None
) -> LlmRequest:
    """Validate an ``llm`` task config and return it as an :class:`LlmRequest`.

    ``max_tokens`` is required unless ``default_max_tokens`` is given (a gateway request that
    omits it takes the model's limit). Unknown keys are refused, so a typo never silently drops
    a setting.
    """
    if not isinstance(config, Mapping):
        raise ConfigInvalid("config", "must be an object")
    unknown = sorted(str(k) for k in config if k not in _KEYS)
    if unknown:
        raise ConfigInvalid(f"config.{unknown[0]}", "is not a known llm config key")
    model = config.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ConfigInvalid("config.model", "is required (a model name)")
    if len(model) > MAX_MODEL_NAME:
        raise ConfigInvalid("config.model", f"is longer than {MAX_MODEL_NAME} characters")
    messages, prompt = _messages_or_prompt(config)
    return LlmRequest(
        model=model,
        max_tokens=_max_tokens(config.get("max_tokens"), default_max_tokens),
        messages=messages,
        prompt=prompt,
        temperature=parse_temperature(config.get("temperature")),
        stream=_stream(config.get("stream")),
        top_p=parse_top_p(config.get("top_p")),
        seed=parse_seed(config.get("seed")),
        stop=parse_stop(config.get("stop")),
    )


def _messages_or_prompt(
    config: Mapping[str, Any],
) -> tuple[tuple[ChatMessage, ...] | None, str | None]:
    raw_messages = config.get("messages")
    raw_prompt = config.get("prompt")
    if raw_messages is not None and raw_prompt is not None:
        raise ConfigInvalid("config.prompt", "give either messages or prompt, not both")
    if raw_messages is None and raw_prompt is None:
        raise ConfigInvalid("config.messages", "is required (or give prompt)")
    if raw_prompt is not None:
        if not isinstance(raw_prompt, str):
            raise ConfigInvalid("config.prompt", "must be a string")
        _check_size("config.prompt", len(raw_prompt.encode("utf-8")))
        return None, raw_prompt
    if not isinstance(raw_messages, Sequence) or isinstance(raw_messages, str | bytes):
        raise ConfigInvalid("config.messages", "must be a list of {role, content}")
    if not raw_messages:
        raise ConfigInvalid("config.messages", "must not be empty")
    if len(raw_messages) > MAX_MESSAGES:
        raise ConfigInvalid("config.messages", f"has more than {MAX_MESSAGES} messages")
    messages = tuple(_message(i, m) for i, m in enumerate(raw_messages))
    _check_size("config.messages", sum(len(m.content.encode("utf-8")) for m in messages))
    return messages, None


def _message(index: int, raw: object) -> ChatMessage:
    field = f"config.messages[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigInvalid(field, "must be an object {role, content}")
    extra = sorted(str(k) for k in raw if k not in ("role", "content", "name"))
    if extra:
        raise ConfigInvalid(f"{field}.{extra[0]}", "is not supported")
    role = raw.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise ConfigInvalid(f"{field}.role", f"must be one of {', '.join(sorted(ROLES))}")
    return ChatMessage(
        role=str(role),
        content=_content(f"{field}.content", raw.get("content")),
        name=_name(f"{field}.name", raw.get("name")),
    )


def _name(field: str, raw: object) -> str | None:
    """A message's optional participant name (OpenAI's ``name``): 1 to 64 characters."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not 1 <= len(raw) <= MAX_NAME:
        raise ConfigInvalid(field, f"must be a string of 1 to {MAX_NAME} characters")
    return raw


def _content(field: str, raw: object) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, Sequence) and not isinstance(raw, bytes):
        parts: list[str] = []
        for i, part in enumerate(raw):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise ConfigInvalid(f"{field}[{i}]", "only text parts are supported")
            text = part.get("text")
            if not isinstance(text, str):
                raise ConfigInvalid(f"{field}[{i}].text", "must be a string")
            parts.append(text)
        return "".join(parts)
    raise ConfigInvalid(field, "must be a string or a list of text parts")


def _check_size(field: str, size: int) -> None:
    if size > MAX_PROMPT_BYTES:
        raise ConfigInvalid(field, f"is larger than {MAX_PROMPT_BYTES} bytes")


def _max_tokens(raw: object, default: int | None) -> int:
    if raw is None:
        if default is None:
            raise ConfigInvalid("config.max_tokens", "is required")
        raw = default
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigInvalid("config.max_tokens", "must be an integer")
    if not 1 <= raw <= MAX_OUTPUT_TOKENS:
        raise ConfigInvalid("config.max_tokens", f"must be between 1 and {MAX_OUTPUT_TOKENS}")
    return raw


def _number(field: str, raw: object, low: float, high: float) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ConfigInvalid(field, "must be a number")
    if not (math.isfinite(raw) and low <= raw <= high):
        raise ConfigInvalid(field, f"must be between {low:g} and {high:g}")
    return float(raw)


def parse_temperature(raw: object, field: str = "config.temperature") -> float | None:
    """A sampling temperature, 0 to 2 (None: the backend's default)."""
    return _number(field, raw, 0, 2)


def parse_top_p(raw: object, field: str = "config.top_p") -> float | None:
    """Nucleus sampling's probability mass, 0 to 1 (None: the backend's default)."""
    return _number(field, raw, 0, 1)


def parse_seed(raw: object, field: str = "config.seed") -> int | None:
    """A sampling seed: an integer (a signed 64-bit one; None: the backend picks)."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigInvalid(field, "must be an integer")
    if not _SEED_RANGE[0] <= raw <= _SEED_RANGE[1]:
        raise ConfigInvalid(field, "must be a signed 64-bit integer")
    return raw


def parse_stop(raw: object, field: str = "config.stop") -> tuple[str, ...]:
    """Stop sequences: one string or a list of up to :data:`MAX_STOP_SEQUENCES` non-empty
    strings of at most :data:`MAX_STOP_CHARS` characters (None or an empty list: none)."""
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ConfigInvalid(field, "must be a string or a list of strings")
    if len(items) > MAX_STOP_SEQUENCES:
        raise ConfigInvalid(field, f"has more than {MAX_STOP_SEQUENCES} sequences")
    out: list[str] = []
    for i, item in enumerate(items):
        where = field if isinstance(raw, str) else f"{field}[{i}]"
        if not isinstance(item, str):
            raise ConfigInvalid(where, "must be a string")
        if not item:
            raise ConfigInvalid(where, "must not be empty")
        if len(item) > MAX_STOP_CHARS:
            raise ConfigInvalid(where, f"is longer than {MAX_STOP_CHARS} characters")
        if item not in out:
            out.append(item)
    return tuple(out)


def _stream(raw: object) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise ConfigInvalid("config.stream", "must be a boolean")
    return raw

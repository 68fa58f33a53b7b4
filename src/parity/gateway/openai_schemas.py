"""Request bodies of the OpenAI-compatible gateway. Parameters OpenAI clients commonly send and
the network cannot honour (``top_p``, ``stop``, ``seed``, ``user``...) are accepted and ignored;
``n`` > 1 and tool calls are refused, naming the parameter."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=255)
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=1, description="Only 1 choice is offered")


class ChatCompletionCreate(_Common):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    tools: list[Any] | None = Field(None, max_length=0, description="Tool calls are not offered")


class CompletionCreate(_Common):
    prompt: str | list[str]


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as the LLM domain takes them (role, content, name)."""
    return [{k: v for k, v in m.items() if k in ("role", "content", "name")} for m in messages]

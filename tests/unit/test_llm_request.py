"""The llm task config: accepted shapes, the canonical form, and refusals naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from parity.core.llm.request import MAX_PROMPT_BYTES, ChatMessage, parse_llm_config
from parity.core.tasks.config import ConfigInvalid


def test_chat_config_round_trips_to_canonical_form() -> None:
    request = parse_llm_config(
        {
            "model": "llama3:8b",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                },
            ],
            "max_tokens": 64,
            "temperature": 0,
            "stream": True,
        }
    )
    assert request.messages == (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi there"))
    assert request.is_chat and request.temperature == 0.0 and request.stream
    assert request.to_config() == {
        "model": "llama3:8b",
        "max_tokens": 64,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
        ],
        "temperature": 0.0,
        "stream": True,
    }
    assert parse_llm_config(request.to_config()) == request


def test_prompt_config_defaults() -> None:
    request = parse_llm_config({"model": "m", "prompt": "Once", "max_tokens": 8})
    assert not request.is_chat
    assert request.texts() == ["Once"]
    assert request.temperature is None and request.stream is False


def test_default_max_tokens_fills_a_missing_value_only() -> None:
    assert parse_llm_config({"model": "m", "prompt": ""}, default_max_tokens=256).max_tokens == 256
    assert (
        parse_llm_config(
            {"model": "m", "prompt": "", "max_tokens": 3}, default_max_tokens=256
        ).max_tokens
        == 3
    )


def prompt(**changes: Any) -> dict[str, Any]:
    """A valid prompt config with ``changes`` applied (None removes a key)."""
    config: dict[str, Any] = {"model": "m", "prompt": "x", "max_tokens": 1, **changes}
    return {k: v for k, v in config.items() if v is not None}


def chat(*messages: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), "max_tokens": 1}


USER = {"role": "user", "content": "a"}
IMAGE = {"type": "image_url", "image_url": {}}
REFUSED: list[Any] = [
    pytest.param(None, "config", id="not-an-object"),
    pytest.param(prompt(model=None), "config.model", id="model-missing"),
    pytest.param(prompt(model=" "), "config.model", id="model-blank"),
    pytest.param(prompt(model="m" * 257), "config.model", id="model-long"),
    pytest.param(prompt(prompt=None), "config.messages", id="neither"),
    pytest.param(prompt(messages=[USER]), "config.prompt", id="both"),
    pytest.param(prompt(prompt=5), "config.prompt", id="prompt-not-text"),
    pytest.param(chat(), "config.messages", id="no-messages"),
    pytest.param(prompt(prompt=None, messages="hi"), "config.messages", id="messages-string"),
    pytest.param(chat({"role": "god", "content": "x"}), "config.messages[0].role", id="bad-role"),
    pytest.param(chat({"role": "user"}), "config.messages[0].content", id="content-missing"),
    pytest.param(chat(USER, {"role": "user", "content": [IMAGE]}),
                 "config.messages[1].content[0]", id="image-part"),
    pytest.param(chat({**USER, "tool_calls": []}), "config.messages[0].tool_calls",
                 id="unsupported-message-key"),
    pytest.param(chat({**USER, "name": 5}), "config.messages[0].name", id="name-not-text"),
    pytest.param(chat({**USER, "name": ""}), "config.messages[0].name", id="name-empty"),
    pytest.param(chat({**USER, "name": "n" * 65}), "config.messages[0].name", id="name-long"),
    pytest.param(prompt(max_tokens=None), "config.max_tokens", id="max-tokens-missing"),
    pytest.param(prompt(max_tokens=0), "config.max_tokens", id="max-tokens-zero"),
    pytest.param(prompt(max_tokens=2.5), "config.max_tokens", id="max-tokens-float"),
    pytest.param(prompt(max_tokens=True), "config.max_tokens", id="max-tokens-bool"),
    pytest.param(prompt(temperature=3), "config.temperature", id="temperature-high"),
    pytest.param(prompt(temperature="hot"), "config.temperature", id="temperature-text"),
    pytest.param(prompt(stream="yes"), "config.stream", id="stream-text"),
    pytest.param(prompt(top_k=5), "config.top_k", id="unknown-key"),
    pytest.param(prompt(prompt="x" * (MAX_PROMPT_BYTES + 1)), "config.prompt",
                 id="prompt-too-large"),
]  # fmt: skip


@pytest.mark.parametrize(("config", "field"), REFUSED)
def test_refusals_name_the_field(config: Any, field: str) -> None:
    with pytest.raises(ConfigInvalid) as caught:
        parse_llm_config(config)
    assert caught.value.field == field


def test_developer_role_and_name_are_accepted() -> None:
    request = parse_llm_config(
        {
            "model": "m",
            "max_tokens": 1,
            "messages": [{"role": "developer", "content": "x", "name": "n"}],
        }
    )
    assert request.messages == (ChatMessage("developer", "x", name="n"),)
    # The name travels in the task config, so the runner's backend receives it.
    assert request.to_config()["messages"] == [{"role": "developer", "content": "x", "name": "n"}]
    assert parse_llm_config(chat(USER)).to_config()["messages"] == [USER]

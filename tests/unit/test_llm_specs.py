"""``--llm-backend KIND=URL`` / ``PARITY_LLM_BACKENDS`` parsing."""

from __future__ import annotations

import pytest

from parity.agent.llm import OllamaBackend, OpenAIBackend
from parity.agent.llm.specs import (
    BackendSpec,
    build_backend,
    parse_backend_spec,
    parse_backend_specs,
)

ACCEPTED = [
    ("ollama=http://127.0.0.1:11434", BackendSpec("ollama", "http://127.0.0.1:11434")),
    ("OLLAMA = http://gpu-box:11434/", BackendSpec("ollama", "http://gpu-box:11434")),
    ("ollama=http://h:11434/api", BackendSpec("ollama", "http://h:11434")),
    ("openai=http://127.0.0.1:8000/v1", BackendSpec("openai", "http://127.0.0.1:8000")),
    ("openai=https://llm.example/prefix/v1/", BackendSpec("openai", "https://llm.example/prefix")),
    ("openai=http://[::1]:8080", BackendSpec("openai", "http://[::1]:8080")),
]


@pytest.mark.parametrize(("spec", "expected"), ACCEPTED)
def test_spec_parses_and_normalises_the_url(spec: str, expected: BackendSpec) -> None:
    assert parse_backend_spec(spec) == expected


REFUSED = [
    ("http://127.0.0.1:11434", "not KIND=URL"),
    ("ollama=", "not KIND=URL"),
    ("=http://h", "not KIND=URL"),
    ("vllm=http://h:8000", "unknown backend kind 'vllm'"),
    ("openai=ftp://h", "not an http"),
    ("openai=h:8000", "not an http"),
    ("openai=http://:8000", "not an http"),
    ("openai=http://h:99999", "invalid port"),
    ("openai=http://h/v1?x=1", "query"),
    ("openai=http://user:secret@h:8000", "credentials"),
]


@pytest.mark.parametrize(("spec", "message"), REFUSED)
def test_bad_spec_is_refused_naming_the_flag(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match="--llm-backend") as caught:
        parse_backend_spec(spec)
    assert message in str(caught.value)


def test_env_value_is_comma_separated_and_named_in_errors() -> None:
    specs = parse_backend_specs([], "ollama=http://a:11434, openai=http://b:8000/v1,,")
    assert specs == [
        BackendSpec("ollama", "http://a:11434"),
        BackendSpec("openai", "http://b:8000"),
    ]
    with pytest.raises(ValueError, match="PARITY_LLM_BACKENDS"):
        parse_backend_specs([], "ollama=http://a,bogus")


def test_flags_win_over_the_environment() -> None:
    assert parse_backend_specs(["openai=http://x:1"], "ollama=http://y:2") == [
        BackendSpec("openai", "http://x:1")
    ]


def test_repeated_specs_count_once_in_order() -> None:
    flags = ["openai=http://b:1", "ollama=http://a:2", "openai=http://b:1/v1"]
    assert parse_backend_specs(flags) == [
        BackendSpec("openai", "http://b:1"),
        BackendSpec("ollama", "http://a:2"),
    ]


def test_no_flags_no_env_no_backends() -> None:
    assert parse_backend_specs([], None) == []
    assert parse_backend_specs([], "  ") == []


async def test_build_backend_picks_the_client_for_the_kind() -> None:
    ollama = build_backend(BackendSpec("ollama", "http://a:1"))
    openai = build_backend(BackendSpec("openai", "http://b:2"))
    try:
        assert isinstance(ollama, OllamaBackend) and ollama.base_url == "http://a:1"
        assert isinstance(openai, OpenAIBackend) and openai.base_url == "http://b:2"
    finally:
        await ollama.aclose()
        await openai.aclose()

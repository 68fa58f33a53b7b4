"""Contract of the runner's LLM backend clients (parity.agent.llm).

The shared suite (``served``) runs against every implementation: the Ollama client and the
OpenAI-compatible client against fake servers that speak the real wire formats over loopback
HTTP (tests/contract/llm_fakes.py), and the OpenAI client against a real llama.cpp server
(xllamacpp serving SmolLM2-135M-Instruct) when xllamacpp and the model file are present
(``scripts/fetch_llm_model.sh`` fetches the model; skipped with the reason otherwise). The
failure suite (``fake``) makes the fakes misbehave; a real server cannot be made to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from parity.agent.executors import CancelToken
from parity.agent.llm import (
    BackendRejected,
    BackendUnavailable,
    BadResponse,
    Completion,
    LlmBackend,
    LlmExecutor,
    ModelNotFound,
    OllamaBackend,
    OpenAIBackend,
    Timeouts,
    TokenChunk,
)
from parity.core.llm.request import LlmRequest, parse_llm_config
from parity.core.tasks.config import ConfigInvalid
from tests.conftest import until
from tests.contract.llm_fakes import MODEL, REPLY, FakeLlm, serve
from tests.contract.llm_real import find_gguf, unavailable_reason, xllamacpp_server

REAL_MODEL = "smollm2"
FAST = Timeouts(connect=2.0, list_models=5.0, first_token=60.0, between_tokens=30.0, total=120.0)


def client_for(kind: str, base_url: str, timeouts: Timeouts = FAST) -> LlmBackend:
    if kind == "ollama":
        return OllamaBackend(base_url, timeouts=timeouts)
    return OpenAIBackend(base_url, timeouts=timeouts)


def chat(
    model: str, text: str = "Say something about the sea.", max_tokens: int = 16
) -> LlmRequest:
    return parse_llm_config(
        {"model": model, "max_tokens": max_tokens, "temperature": 0,
         "messages": [{"role": "user", "content": text}]}
    )  # fmt: skip


def completion(
    model: str, text: str = "The capital of France is", max_tokens: int = 16
) -> LlmRequest:
    return parse_llm_config(
        {"model": model, "max_tokens": max_tokens, "temperature": 0, "prompt": text}
    )


async def collect(backend: LlmBackend, request: LlmRequest) -> tuple[list[str], list[Any]]:
    chunks: list[str] = []
    events: list[Any] = []
    async for event in backend.generate(request):
        events.append(event)
        if isinstance(event, TokenChunk):
            chunks.append(event.text)
    return chunks, events


@pytest.fixture(scope="module")
def real_server() -> Iterator[str]:
    """Base URL of the real llama.cpp server, or the test is skipped saying why."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    gguf = find_gguf()
    assert gguf is not None
    with xllamacpp_server(gguf, REAL_MODEL) as base_url:
        yield base_url


# -- the shared contract ------------------------------------------------------------------------


@dataclass
class Served:
    name: str
    backend: LlmBackend
    model: str
    fake: FakeLlm | None


@pytest.fixture(params=["ollama-fake", "openai-fake", "openai-xllamacpp"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    name = request.param
    if name == "openai-xllamacpp":
        base_url = request.getfixturevalue("real_server")
        backend = client_for("openai", base_url)
        try:
            yield Served(name, backend, REAL_MODEL, None)
        finally:
            await backend.aclose()
        return
    async with serve(FakeLlm(name.split("-")[0])) as fake:
        backend = client_for(fake.kind, fake.base_url)
        try:
            yield Served(name, backend, MODEL, fake)
        finally:
            await backend.aclose()


async def test_lists_the_served_model(served: Served) -> None:
    models = await served.backend.list_models()
    assert served.model in [m.name for m in models]
    assert all(m.loaded for m in models)


@pytest.mark.parametrize("shape", ["chat", "completion"])
async def test_streams_chunks_then_one_completion_with_usage(served: Served, shape: str) -> None:
    request = (chat if shape == "chat" else completion)(served.model, max_tokens=16)
    chunks, events = await collect(served.backend, request)
    assert chunks, "no token chunks"
    assert all(isinstance(e, TokenChunk) for e in events[:-1])
    done = events[-1]
    assert isinstance(done, Completion)
    assert done.finish_reason in ("stop", "length")
    assert done.input_tokens is not None and done.input_tokens > 0
    assert done.output_tokens is not None and 0 < done.output_tokens <= 16
    assert "".join(chunks).strip()


async def test_output_stops_at_max_tokens(served: Served) -> None:
    _, events = await collect(served.backend, chat(served.model, max_tokens=3))
    done = events[-1]
    assert isinstance(done, Completion)
    assert done.finish_reason == "length"
    assert done.output_tokens == 3


async def test_executor_runs_an_llm_task_and_reports_usage(served: Served) -> None:
    executor = LlmExecutor([served.backend])
    logs: list[str] = []
    streamed: list[str] = []

    async def sink(lines: list[str]) -> None:
        logs.extend(lines)

    async def tokens(task: dict[str, Any], text: str) -> None:
        streamed.append(text)

    executor.token_sink = tokens
    task = {"id": "t1", "type": "llm", "config": {**chat(served.model).to_config(), "stream": True}}
    outcome = await executor.run(task, sink, CancelToken())
    assert outcome.ok, outcome.error
    assert outcome.output == "".join(streamed) and outcome.output
    assert outcome.usage["model"] == served.model
    assert outcome.usage["backend"] == served.backend.kind
    assert outcome.usage["input_tokens"] > 0 and 0 < outcome.usage["output_tokens"] <= 16
    assert outcome.usage["first_token_ms"] is not None
    assert logs == []  # a completed prompt writes no task log lines: its result says it all


async def test_models_report_has_the_registration_shape(served: Served) -> None:
    report = await LlmExecutor([served.backend]).models_report()
    entry = next(e for e in report if e["model_name"] == served.model)
    assert entry["is_loaded"] is True
    assert entry["backend"] == served.backend.kind


# -- what the clients send ------------------------------------------------------------------------


async def test_openai_client_always_asks_for_usage_in_the_stream() -> None:
    async with serve(FakeLlm("openai")) as fake:
        backend = client_for("openai", fake.base_url)
        await collect(backend, chat(MODEL, max_tokens=5))
        await collect(backend, completion(MODEL, max_tokens=5))
        await backend.aclose()
    paths = [p for p, _ in fake.requests]
    assert paths == ["/v1/chat/completions", "/v1/completions"]
    for _, body in fake.requests:
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["max_tokens"] == 5 and body["temperature"] == 0


async def test_ollama_client_sends_max_tokens_as_num_predict() -> None:
    async with serve(FakeLlm("ollama")) as fake:
        backend = client_for("ollama", fake.base_url)
        await collect(backend, chat(MODEL, max_tokens=5))
        await collect(backend, completion(MODEL, max_tokens=5))
        await backend.aclose()
    assert [p for p, _ in fake.requests] == ["/api/chat", "/api/generate"]
    chat_body = fake.requests[0][1]
    assert chat_body["options"] == {"num_predict": 5, "temperature": 0}
    assert chat_body["messages"] == [{"role": "user", "content": "Say something about the sea."}]
    assert fake.requests[1][1]["prompt"] == "The capital of France is"


async def test_a_participant_name_reaches_openai_backends_only() -> None:
    """OpenAI's message ``name`` is sent on to OpenAI-compatible backends; Ollama's chat
    message has no such field, so its backend gets role and content."""
    messages = [{"role": "user", "content": "hi", "name": "alice"}, {"role": "developer",
                "content": "be brief"}]  # fmt: skip
    request = parse_llm_config({"model": MODEL, "max_tokens": 5, "messages": messages})
    sent = {}
    for kind in ("openai", "ollama"):
        async with serve(FakeLlm(kind)) as fake:
            backend = client_for(kind, fake.base_url)
            await collect(backend, request)
            await backend.aclose()
        sent[kind] = fake.requests[0][1]["messages"]
    assert sent["openai"] == [{"role": "user", "content": "hi", "name": "alice"},
                              {"role": "system", "content": "be brief"}]  # fmt: skip
    assert sent["ollama"] == [{"role": "user", "content": "hi"},
                              {"role": "system", "content": "be brief"}]  # fmt: skip


async def test_fake_answer_is_passed_through_exactly() -> None:
    for kind in ("ollama", "openai"):
        async with serve(FakeLlm(kind)) as fake:
            backend = client_for(kind, fake.base_url)
            chunks, events = await collect(backend, chat(MODEL, max_tokens=100))
            await backend.aclose()
        assert chunks == REPLY
        assert events[-1] == Completion(
            input_tokens=5, output_tokens=len(REPLY), finish_reason="stop"
        )


# -- stop sequences and sampling settings, end to end through the task config -----------------


def stop_config(model: str, stop: list[str], *, chat_shape: bool) -> dict[str, Any]:
    """An llm task config with stop sequences and sampling settings, as the server writes it
    (the canonical config of a validated request)."""
    text = (
        {"messages": [{"role": "user", "content": "Count: 1, 2, 3,"}]}
        if chat_shape
        else {"prompt": "1, 2, 3,"}
    )
    raw = {"model": model, "max_tokens": 40, "temperature": 0, "top_p": 0.5, "seed": 7,
           "stop": stop, **text}  # fmt: skip
    config = parse_llm_config(raw).to_config()
    assert (config["stop"], config["top_p"], config["seed"]) == (stop, 0.5, 7)
    return config


@pytest.mark.parametrize("shape", ["chat", "completion"])
async def test_stop_sequences_reach_the_backend_and_end_the_answer_there(
    served: Served, shape: str
) -> None:
    # The fakes answer REPLY ("The sea is wide and deep."); the real model counts on.
    stop = [" and"] if served.fake is not None else ["7"]
    config = stop_config(served.model, stop, chat_shape=shape == "chat")
    chunks, events = await collect(served.backend, parse_llm_config(config))
    done = events[-1]
    assert isinstance(done, Completion)
    text = "".join(chunks)
    assert done.finish_reason == "stop", text
    assert stop[0] not in text
    if served.fake is None:
        return
    assert text == "The sea is wide"
    path, body = served.fake.requests[-1]
    paths = {"ollama": ("/api/chat", "/api/generate"),
             "openai": ("/v1/chat/completions", "/v1/completions")}  # fmt: skip
    assert path == paths[served.fake.kind][0 if shape == "chat" else 1]
    # The backend's own names: OpenAI's top-level keys, Ollama's options.
    sent = body["options"] if served.fake.kind == "ollama" else body
    assert (sent["stop"], sent["top_p"], sent["seed"], sent["temperature"]) == (stop, 0.5, 7, 0)


@pytest.mark.parametrize("kind", ["ollama", "openai"])
async def test_the_executor_passes_a_tasks_stop_to_its_backend(kind: str) -> None:
    async with serve(FakeLlm(kind)) as fake:
        executor = LlmExecutor([client_for(kind, fake.base_url)])

        async def no_logs(lines: list[str]) -> None:
            return None

        task = {"id": "t", "type": "llm", "config": stop_config(MODEL, [" wide"], chat_shape=True)}
        outcome = await executor.run(task, no_logs, CancelToken())
        await executor.aclose()
    assert outcome.ok, outcome.error
    assert (outcome.output, outcome.usage["finish_reason"]) == ("The sea is", "stop")
    [(_, body)] = fake.requests
    assert (body["options"] if kind == "ollama" else body)["stop"] == [" wide"]


def test_the_task_config_validates_stop_sequences() -> None:
    base = {"model": "m", "max_tokens": 5, "prompt": "x"}
    assert parse_llm_config({**base, "stop": "\n"}).stop == ("\n",)
    assert parse_llm_config({**base, "stop": []}).stop == ()
    assert "stop" not in parse_llm_config({**base, "stop": None}).to_config()
    for stop, field in (
        (["a", "b", "c", "d", "e"], "config.stop"),
        ([""], "config.stop[0]"),
        ("", "config.stop"),
        (["a", 1], "config.stop[1]"),
        (["x" * 257], "config.stop[0]"),
        ({"a": 1}, "config.stop"),
    ):
        with pytest.raises(ConfigInvalid) as caught:
            parse_llm_config({**base, "stop": stop})
        assert caught.value.field == field, stop
    for key, value in (("top_p", 1.5), ("top_p", "0.5"), ("seed", 1.5), ("seed", 2**64)):
        with pytest.raises(ConfigInvalid) as caught:
            parse_llm_config({**base, key: value})
        assert caught.value.field == f"config.{key}"


# -- failures, against both fakes ---------------------------------------------------------------


@pytest.fixture(params=["ollama", "openai"])
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeLlm]:
    async with serve(FakeLlm(request.param)) as served_fake:
        yield served_fake


def short_timeouts() -> Timeouts:
    return Timeouts(connect=1.0, list_models=2.0, first_token=0.3, between_tokens=0.3, total=10.0)


async def test_consecutive_generations_reuse_one_connection(fake: FakeLlm) -> None:
    # The stream is read to its end after the last event, so its connection goes back to the
    # pool: a closed one would cost every prompt a new TCP connection to the backend.
    backend = client_for(fake.kind, fake.base_url)
    executor = LlmExecutor([backend])

    async def sink(lines: list[str]) -> None:
        pass

    try:
        for i in range(3):
            task = {"id": f"t{i}", "type": "llm", "config": chat(MODEL).to_config()}
            outcome = await executor.run(task, sink, CancelToken())
            assert outcome.ok, outcome.error
        _, events = await collect(backend, chat(MODEL, max_tokens=3))
        assert isinstance(events[-1], Completion)
    finally:
        await backend.aclose()
    assert len(fake.peers) == 4
    assert len(set(fake.peers)) == 1, fake.peers


async def test_unknown_model_is_model_not_found(fake: FakeLlm) -> None:
    backend = client_for(fake.kind, fake.base_url)
    with pytest.raises(ModelNotFound, match="nope"):
        await collect(backend, chat("nope"))
    await backend.aclose()


async def test_backend_down_is_unavailable(fake: FakeLlm) -> None:
    backend = client_for(fake.kind, "http://127.0.0.1:9", short_timeouts())  # discard port
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        await backend.list_models()
    with pytest.raises(BackendUnavailable):
        await collect(backend, chat(MODEL))
    await backend.aclose()


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (500, {"error": "out of memory"}, BackendUnavailable),
        (503, {"error": {"message": "loading", "type": "server_error"}}, BackendUnavailable),
        (429, {"error": {"message": "slow down"}}, BackendUnavailable),
        (400, {"error": {"message": "prompt is longer than the context"}}, BackendRejected),
        (401, {"error": {"message": "bad key"}}, BackendRejected),
        (404, {"detail": "Not Found"}, BadResponse),
    ],
)
async def test_error_statuses_map_to_errors(
    fake: FakeLlm, status: int, body: Any, error: type[Exception]
) -> None:
    fake.mode, fake.status_code, fake.error_body = "status", status, body
    backend = client_for(fake.kind, fake.base_url)
    with pytest.raises(error) as caught:
        await collect(backend, chat(MODEL))
    await backend.aclose()
    assert getattr(caught.value, "status", None) == status


async def test_a_non_json_line_is_a_bad_response(fake: FakeLlm) -> None:
    fake.mode = "garbage"
    backend = client_for(fake.kind, fake.base_url)
    with pytest.raises(BadResponse, match="not JSON"):
        await collect(backend, chat(MODEL))
    await backend.aclose()


async def test_a_stream_that_ends_early_is_a_bad_response(fake: FakeLlm) -> None:
    fake.mode = "truncate"
    backend = client_for(fake.kind, fake.base_url)
    got: list[str] = []
    with pytest.raises(BadResponse, match="ended before"):
        async for event in backend.generate(chat(MODEL)):
            if isinstance(event, TokenChunk):
                got.append(event.text)
    await backend.aclose()
    assert got == REPLY[:2]


async def test_an_error_inside_the_stream_is_unavailable(fake: FakeLlm) -> None:
    fake.mode = "stream_error"
    backend = client_for(fake.kind, fake.base_url)
    with pytest.raises(BackendUnavailable, match="error in stream"):
        await collect(backend, chat(MODEL))
    await backend.aclose()


async def test_missing_usage_gives_a_completion_without_counts(fake: FakeLlm) -> None:
    fake.mode = "no_usage"
    backend = client_for(fake.kind, fake.base_url)
    chunks, events = await collect(backend, chat(MODEL))
    await backend.aclose()
    assert chunks == REPLY
    assert events[-1] == Completion(input_tokens=None, output_tokens=None, finish_reason="stop")


@pytest.mark.parametrize(
    ("mode", "what"),
    [("slow_first", "first token"), ("pings", "first token"), ("stall", "next token")],
)
async def test_silence_past_the_deadline_is_unavailable(
    fake: FakeLlm, mode: str, what: str
) -> None:
    fake.mode = mode
    backend = client_for(fake.kind, fake.base_url, short_timeouts())
    with pytest.raises(BackendUnavailable, match=what):
        await collect(backend, chat(MODEL))
    await backend.aclose()
    await until(fake.disconnected.is_set)  # the server saw us go, so it can stop generating


async def test_closing_the_stream_early_disconnects_from_the_backend(fake: FakeLlm) -> None:
    fake.mode = "stall"
    backend = client_for(fake.kind, fake.base_url)
    events = backend.generate(chat(MODEL))
    assert await anext(events) == TokenChunk(REPLY[0])
    await events.aclose()
    await until(fake.disconnected.is_set)
    await backend.aclose()


async def test_the_total_deadline_bounds_a_trickling_stream(fake: FakeLlm) -> None:
    fake.mode, fake.delay = "stall", 0.25
    timeouts = Timeouts(
        connect=1.0, list_models=2.0, first_token=5.0, between_tokens=5.0, total=0.1
    )
    backend = client_for(fake.kind, fake.base_url, timeouts)
    with pytest.raises(BackendUnavailable):
        await collect(backend, chat(MODEL))
    await backend.aclose()


async def test_bad_model_listing_is_a_bad_response(fake: FakeLlm) -> None:
    fake.models = []
    backend = client_for("openai" if fake.kind == "ollama" else "ollama", fake.base_url)
    with pytest.raises(BadResponse):
        await backend.list_models()  # the other protocol's path: 404 endpoint
    await backend.aclose()


# -- the executor over real HTTP ------------------------------------------------------------------


async def test_executor_cancel_stops_the_backend_and_reports_the_partial_text(
    fake: FakeLlm,
) -> None:
    fake.mode = "stall"
    executor = LlmExecutor([client_for(fake.kind, fake.base_url)])
    cancel = CancelToken()
    streamed: list[str] = []

    async def tokens(task: dict[str, Any], text: str) -> None:
        streamed.append(text)

    logs: list[str] = []

    async def sink(lines: list[str]) -> None:
        logs.extend(lines)

    executor.token_sink = tokens
    task = {"id": "t", "type": "llm", "config": {**chat(MODEL).to_config(), "stream": True}}
    run = asyncio.create_task(executor.run(task, sink, cancel))
    await until(lambda: bool(streamed))
    cancel.cancel("client went away")
    outcome = await run
    assert outcome.cancelled and not outcome.ok
    assert outcome.output == REPLY[0]
    # A prompt that went wrong keeps its task log lines: which backend, and how it ended.
    assert len(logs) == 2 and MODEL in logs[0]
    await until(fake.disconnected.is_set)
    await executor.backends[0].aclose()


async def test_executor_routes_each_model_to_the_backend_that_serves_it() -> None:
    async with (
        serve(FakeLlm("ollama", models=["llama3:8b"])) as ollama,
        serve(FakeLlm("openai", models=["qwen2.5"])) as openai,
    ):
        backends = [client_for("ollama", ollama.base_url), client_for("openai", openai.base_url)]
        executor = LlmExecutor(backends)

        async def no_logs(lines: list[str]) -> None:
            return None

        for model, kind in (("qwen2.5", "openai"), ("llama3:8b", "ollama")):
            task = {"id": model, "type": "llm", "config": chat(model).to_config()}
            outcome = await executor.run(task, no_logs, CancelToken())
            assert outcome.ok and outcome.usage["backend"] == kind
        missing = await executor.run(
            {"id": "x", "type": "llm", "config": chat("gpt-9").to_config()}, no_logs, CancelToken()
        )
        assert not missing.ok and missing.usage["error_code"] == "model_not_found"
        assert [p for p, _ in ollama.requests] == ["/api/chat"]
        assert [p for p, _ in openai.requests] == ["/v1/chat/completions"]
        for backend in backends:
            await backend.aclose()


async def test_executor_refuses_an_invalid_config_naming_the_field() -> None:
    executor = LlmExecutor([])

    async def no_logs(lines: list[str]) -> None:
        return None

    outcome = await executor.run(
        {"id": "x", "type": "llm", "config": {"model": "m", "prompt": "x"}}, no_logs, CancelToken()
    )
    assert not outcome.ok
    assert outcome.error is not None and "config.max_tokens" in outcome.error


async def test_executor_skips_a_backend_that_is_down_when_listing() -> None:
    async with serve(FakeLlm("openai")) as openai:
        down = client_for("ollama", "http://127.0.0.1:9", short_timeouts())
        up = client_for("openai", openai.base_url)
        executor = LlmExecutor([down, up])
        report = await executor.models_report()
        assert [e["model_name"] for e in report] == [MODEL]
        assert report[0]["context_length"] == 2048
        assert await executor.backend_for(MODEL) is up
        await down.aclose()
        await up.aclose()

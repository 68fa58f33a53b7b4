"""The llm executor over an in-memory backend: streaming only when asked, partial output on
failure, the model map refreshed when a backend drops a model, the task's time limit."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from parity.agent.executors import CancelToken
from parity.agent.llm import (
    BackendUnavailable,
    Completion,
    LlmExecutor,
    ModelInfo,
    ModelNotFound,
    TokenChunk,
)
from parity.agent.llm.backend import Event
from parity.core.llm.request import LlmRequest


class MemoryBackend:
    kind = "memory"
    base_url = "memory://"

    def __init__(self, models: list[str], pieces: list[str], fail_after: int | None = None):
        self.models = models
        self.pieces = pieces
        self.fail_after = fail_after
        self.listings = 0
        self.timeouts: list[float | None] = []
        self.missing: set[str] = set()

    async def list_models(self) -> list[ModelInfo]:
        self.listings += 1
        return [ModelInfo(name) for name in self.models]

    async def generate(
        self, request: LlmRequest, *, total_timeout: float | None = None
    ) -> AsyncGenerator[Event, None]:
        self.timeouts.append(total_timeout)
        if request.model in self.missing:
            raise ModelNotFound(f"{request.model} is gone", backend=self.kind)
        for i, piece in enumerate(self.pieces):
            if self.fail_after is not None and i == self.fail_after:
                raise BackendUnavailable("connection dropped", backend=self.kind)
            yield TokenChunk(piece)
        yield Completion(input_tokens=3, output_tokens=len(self.pieces), finish_reason="stop")

    async def aclose(self) -> None:
        return None


def task(stream: bool, **extra: Any) -> dict[str, Any]:
    config = {"model": "m", "prompt": "hi", "max_tokens": 8, "stream": stream}
    return {"id": "t", "type": "llm", "config": config, **extra}


async def no_logs(lines: list[str]) -> None:
    return None


async def test_tokens_go_to_the_sink_only_for_streaming_tasks() -> None:
    sent: list[str] = []

    async def sink(task: dict[str, Any], text: str) -> None:
        sent.append(text)

    executor = LlmExecutor([MemoryBackend(["m"], ["a", "b"])], token_sink=sink)
    quiet = await executor.run(task(stream=False), no_logs, CancelToken())
    assert quiet.ok and quiet.output == "ab" and sent == []
    loud = await executor.run(task(stream=True), no_logs, CancelToken())
    assert loud.ok and sent == ["a", "b"]
    assert loud.usage["input_tokens"] == 3 and loud.usage["output_tokens"] == 2


async def test_a_failure_mid_stream_reports_the_partial_text_and_the_code() -> None:
    executor = LlmExecutor([MemoryBackend(["m"], ["a", "b", "c"], fail_after=2)])
    outcome = await executor.run(task(stream=False), no_logs, CancelToken())
    assert not outcome.ok and not outcome.cancelled
    assert outcome.output == "ab"
    assert outcome.usage["error_code"] == "backend_unavailable"
    assert outcome.usage["output_tokens"] is None  # the server estimates from the text
    assert outcome.error is not None and "connection dropped" in outcome.error


async def test_a_model_the_backend_dropped_is_listed_again_next_time() -> None:
    backend = MemoryBackend(["m"], ["a"])
    executor = LlmExecutor([backend])
    assert (await executor.run(task(stream=False), no_logs, CancelToken())).ok
    assert backend.listings == 1
    backend.missing.add("m")
    failed = await executor.run(task(stream=False), no_logs, CancelToken())
    assert failed.usage["error_code"] == "model_not_found"
    backend.missing.clear()
    assert (await executor.run(task(stream=False), no_logs, CancelToken())).ok
    assert backend.listings == 2


async def test_the_first_backend_listed_wins_a_shared_model() -> None:
    first, second = MemoryBackend(["m"], ["1"]), MemoryBackend(["m"], ["2"])
    outcome = await LlmExecutor([first, second]).run(task(stream=False), no_logs, CancelToken())
    assert outcome.output == "1"


async def test_the_task_time_limit_bounds_the_generation() -> None:
    backend = MemoryBackend(["m"], ["a"])
    executor = LlmExecutor([backend], default_total_seconds=99)
    await executor.run(task(stream=False, timeout_seconds=7), no_logs, CancelToken())
    await executor.run(task(stream=False), no_logs, CancelToken())
    assert backend.timeouts == [7.0, 99.0]

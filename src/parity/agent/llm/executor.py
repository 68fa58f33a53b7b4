"""The ``llm`` executor: runs a prompt task on the backend that serves its model.

Task config: ``{model, messages | prompt, max_tokens, temperature?, top_p?, seed?, stop?,
stream?}`` (validated by :func:`parity.core.llm.request.parse_llm_config`; the sampling
settings and stop sequences go to the backend as they are). The model→backend map comes from
the backends' model lists, refreshed when a task names a model not in it (the first backend listed
wins a model two serve). Token chunks go to an optional :data:`TokenSink` as they arrive when
the task asks to ``stream`` (the streaming leg to the server plugs in there). The outcome's
``output`` is the whole text; ``usage`` carries the backend's counts (None where it reported
none: the server estimates them), the finish reason and timings.

Cancellation closes the backend stream (Ollama and OpenAI-compatible servers stop generating
when the client goes away) and reports the partial text with ``cancelled``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from parity.agent.executors import CancelToken, LogSink, Outcome
from parity.agent.llm.backend import Completion, LlmBackend, ModelInfo, TokenChunk
from parity.agent.llm.errors import BackendError, ModelNotFound
from parity.core.llm.metering import LlmPrice
from parity.core.llm.request import MAX_OUTPUT_TOKENS, LlmRequest, parse_llm_config
from parity.core.tasks.config import ConfigInvalid

__all__ = ["LlmExecutor", "PromptResult", "TokenSink", "run_prompt"]

TokenSink = Callable[[dict[str, Any], str], Awaitable[None]]
"""Receives (task, text chunk) for streaming tasks, in order."""

DEFAULT_TOTAL_SECONDS = 600.0
DEFAULT_MAX_TOKENS = 4096  # what the server assumes of a model reported without a limit


@dataclass
class PromptResult:
    """What one prompt produced; ``error`` set when it did not finish."""

    text: str = ""
    chunks: int = 0
    completion: Completion | None = None
    error: BackendError | None = None
    cancelled: bool = False
    first_token_ms: float | None = None
    duration_ms: float = 0.0
    parts: list[str] = field(default_factory=list, repr=False)


async def run_prompt(
    backend: LlmBackend,
    request: LlmRequest,
    *,
    on_token: Callable[[str], Awaitable[None]] | None = None,
    cancel: CancelToken | None = None,
    total_timeout: float | None = None,
) -> PromptResult:
    """Run ``request`` on ``backend``; never raises a :class:`BackendError` (it is returned in
    the result with the partial text), so a caller can bill what was delivered."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = PromptResult()

    async def consume() -> None:
        events = backend.generate(request, total_timeout=total_timeout)
        try:
            async for event in events:
                if isinstance(event, TokenChunk):
                    if result.first_token_ms is None:
                        result.first_token_ms = (loop.time() - started) * 1000
                    result.parts.append(event.text)
                    result.chunks += 1
                    if on_token is not None:
                        await on_token(event.text)
                else:
                    result.completion = event
        finally:
            await events.aclose()

    job = asyncio.create_task(consume())
    waiter = asyncio.create_task(cancel.wait()) if cancel is not None else None
    try:
        await asyncio.wait({job} | ({waiter} if waiter else set()), return_when="FIRST_COMPLETED")
        if not job.done():
            result.cancelled = True
            job.cancel()
            # asyncio.wait never raises the job's CancelledError, so a cancellation of this
            # task itself still propagates.
            await asyncio.wait({job})
    finally:
        if waiter is not None:
            waiter.cancel()
        if not job.done():
            job.cancel()
    if not job.cancelled():
        failure = job.exception()
        if isinstance(failure, BackendError):
            result.error = failure
        elif failure is not None:
            raise failure
    result.text = "".join(result.parts)
    result.duration_ms = (loop.time() - started) * 1000
    return result


class LlmExecutor:
    """Executor for ``llm`` tasks over one or more backends."""

    def __init__(
        self,
        backends: Sequence[LlmBackend],
        *,
        token_sink: TokenSink | None = None,
        default_total_seconds: float = DEFAULT_TOTAL_SECONDS,
    ) -> None:
        self.backends = list(backends)
        self.token_sink = token_sink
        self.default_total_seconds = default_total_seconds
        self._serving: dict[str, LlmBackend] = {}
        self._models: dict[str, ModelInfo] = {}
        self._refresh_lock = asyncio.Lock()
        # The backends the last refresh could not list (``kind url`` -> why): they report no
        # models until a later refresh reaches them.
        self.unreachable: dict[str, BackendError] = {}

    async def refresh(self) -> list[tuple[LlmBackend, ModelInfo]]:
        """List every backend's models and rebuild the model→backend map. A backend that is
        down contributes nothing (and is tried again at the next refresh)."""
        async with self._refresh_lock:
            found: list[tuple[LlmBackend, ModelInfo]] = []
            listings = await asyncio.gather(
                *(b.list_models() for b in self.backends), return_exceptions=True
            )
            serving: dict[str, LlmBackend] = {}
            models: dict[str, ModelInfo] = {}
            unreachable: dict[str, BackendError] = {}
            for backend, listing in zip(self.backends, listings, strict=True):
                if isinstance(listing, BaseException):
                    if not isinstance(listing, BackendError):
                        raise listing
                    unreachable[_label(backend)] = listing
                    continue
                for info in listing:
                    found.append((backend, info))
                    if info.name not in serving:
                        serving[info.name] = backend
                        models[info.name] = info
            self._serving, self._models = serving, models
            self.unreachable = unreachable
            return found

    async def models_report(
        self, prices: Mapping[str, LlmPrice] | None = None
    ) -> list[dict[str, Any]]:
        """The models to report at registration and heartbeat, one entry per model name, with
        this runner's price per 1,000 input and output tokens where ``prices`` has one
        (decimal strings of base units, like every amount)."""
        await self.refresh()
        report = []
        for info in self._models.values():
            entry: dict[str, Any] = {
                "model_name": info.name,
                "is_loaded": info.loaded,
                # No answer is longer than the context (nor than a request may ask for);
                # without a context length, what the server assumes.
                "max_tokens": min(info.context_length, MAX_OUTPUT_TOKENS)
                if info.context_length
                else DEFAULT_MAX_TOKENS,
                "backend": self._serving[info.name].kind,
            }
            if info.context_length is not None:
                entry["context_length"] = info.context_length
            if info.quantization is not None:
                entry["quantization"] = info.quantization
            price = (prices or {}).get(info.name)
            if price is not None:
                snapshot = price.snapshot()
                entry["price_per_1k_input"] = snapshot["input_per_1k"]
                entry["price_per_1k_output"] = snapshot["output_per_1k"]
            report.append(entry)
        return report

    def served_by(self) -> dict[str, list[str]]:
        """The model names each backend (``kind url``) serves, as of the last refresh."""
        out: dict[str, list[str]] = {}
        for name, backend in self._serving.items():
            out.setdefault(_label(backend), []).append(name)
        return out

    async def aclose(self) -> None:
        """Close every backend's connections."""
        await asyncio.gather(*(b.aclose() for b in self.backends), return_exceptions=True)

    async def backend_for(self, model: str) -> LlmBackend:
        """The backend serving ``model`` (refreshing the map once on a miss)."""
        backend = self._serving.get(model)
        if backend is None:
            await self.refresh()
            backend = self._serving.get(model)
        if backend is None:
            kinds = ", ".join(f"{b.kind} {b.base_url}" for b in self.backends) or "none"
            raise ModelNotFound(f"no backend serves model {model!r}", backend=kinds)
        return backend

    async def run(self, task: dict[str, Any], logs: LogSink, cancel: CancelToken) -> Outcome:
        try:
            request = parse_llm_config(task.get("config"))
        except ConfigInvalid as exc:
            return Outcome(False, None, "", f"invalid llm config: {exc}")
        try:
            backend = await self.backend_for(request.model)
        except BackendError as exc:
            return Outcome(False, None, "", str(exc), usage={"error_code": exc.code})
        started = f"llm: {request.model} on {backend.kind} {backend.base_url}"
        sink = self.token_sink
        on_token = None
        if request.stream and sink is not None:

            async def on_token(text: str) -> None:
                await sink(task, text)

        result = await run_prompt(
            backend,
            request,
            on_token=on_token,
            cancel=cancel,
            total_timeout=float(task.get("timeout_seconds") or self.default_total_seconds),
        )
        if isinstance(result.error, ModelNotFound):
            self._serving.pop(request.model, None)  # the backend dropped it: re-list next time
        usage = _usage(request, backend, result)
        if result.cancelled or result.error is not None:
            # Only a prompt that went wrong gets task log lines: a completed one's model,
            # backend and usage are in its result, and a log write per prompt would double
            # the server writes of every prompt.
            await logs([started, _summary_line(result)])
        if result.cancelled:
            return Outcome(False, None, result.text, "cancelled", usage=usage, cancelled=True)
        if result.error is not None:
            return Outcome(False, None, result.text, str(result.error), usage=usage)
        return Outcome(True, 0, result.text, usage=usage)


def _label(backend: LlmBackend) -> str:
    return f"{backend.kind} {backend.base_url}"


def _usage(request: LlmRequest, backend: LlmBackend, result: PromptResult) -> dict[str, Any]:
    done = result.completion
    usage: dict[str, Any] = {
        "model": request.model,
        "backend": backend.kind,
        "input_tokens": done.input_tokens if done else None,
        "output_tokens": done.output_tokens if done else None,
        "finish_reason": done.finish_reason if done else None,
        "chunks": result.chunks,
        "first_token_ms": None
        if result.first_token_ms is None
        else round(result.first_token_ms, 1),
        "duration_ms": round(result.duration_ms, 1),
    }
    if result.error is not None:
        usage["error_code"] = result.error.code
    return usage


def _summary_line(result: PromptResult) -> str:
    if result.cancelled:
        return f"llm: cancelled after {result.chunks} chunks"
    if result.error is not None:
        return f"llm: failed after {result.chunks} chunks: {result.error}"
    done = result.completion
    tokens = done.output_tokens if done and done.output_tokens is not None else "?"
    return f"llm: {tokens} output tokens in {result.duration_ms / 1000:.2f} s"

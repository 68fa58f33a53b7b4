"""The runner loop with LLM backends, against a scripted server: models (with prices) at
registration and in heartbeats, a backend that is down at start found on a later beat, an
``llm`` task completed with the text and the backend's usage, a failure reported with what was
delivered, and a heartbeat that does not wait for a hung backend."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account

from parity.agent.client import ServerClient
from parity.agent.llm import (
    BackendUnavailable,
    Completion,
    LlmExecutor,
    ModelDiscovery,
    ModelInfo,
    TokenChunk,
)
from parity.agent.llm import discovery as discovery_module
from parity.agent.llm.backend import Event
from parity.agent.loop import Runner, RunnerOptions
from parity.core.llm.metering import LlmPrice
from parity.core.llm.request import LlmRequest
from tests.conftest import until

ACCOUNT = Account.from_key("0x" + "45" * 32)
TOKEN = "claim-token-0123456789"


class Backend:
    kind = "openai"
    base_url = "http://llm.test"

    def __init__(self, pieces: list[str], *, fail_after: int | None = None) -> None:
        self.pieces = pieces
        self.fail_after = fail_after
        self.down = False
        self.hang: asyncio.Event | None = None  # list_models waits for it when set
        self.requests: list[LlmRequest] = []

    async def list_models(self) -> list[ModelInfo]:
        if self.hang is not None:
            await self.hang.wait()
        if self.down:
            raise BackendUnavailable("connection refused", backend=f"{self.kind} {self.base_url}")
        return [ModelInfo("tiny", context_length=2048)]

    async def generate(
        self, request: LlmRequest, *, total_timeout: float | None = None
    ) -> AsyncGenerator[Event, None]:
        self.requests.append(request)
        for i, piece in enumerate(self.pieces):
            if i == self.fail_after:
                raise BackendUnavailable("engine died", backend=self.kind)
            yield TokenChunk(piece)
        yield Completion(input_tokens=5, output_tokens=len(self.pieces), finish_reason="stop")

    async def aclose(self) -> None:
        return None


class Server:
    """The runner API, scripted: records what the runner sends; hands out ``queue`` once."""

    def __init__(self, queue: list[dict[str, Any]] | None = None) -> None:
        self.queue = list(queue or [])
        self.registrations: list[dict[str, Any]] = []
        self.beats: list[dict[str, Any]] = []
        self.reports: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        if path == "/api/v1/auth/nonce":
            return httpx.Response(200, json={"message": "sign in", "nonce": "n"})
        if path == "/api/v1/auth/token":
            return httpx.Response(200, json={"token": "ps_sess_test"})
        if path == "/api/v1/runners":
            self.registrations.append(body)
            return httpx.Response(
                201, json={"runner": {"id": "r1"}, "runner_token": "ps_run_t", "claims": []}
            )
        if path == "/api/v1/runners/heartbeat":
            self.beats.append(body)
            return httpx.Response(
                200, json={"revoked": [], "cancel": [], "renewed": [], "lease_seconds": 60}
            )
        if path == "/api/v1/runners/tasks/claim":
            if self.queue:
                return httpx.Response(200, json={"claims": [self.queue.pop(0)]})
            await asyncio.sleep(0.05)  # a long-poll that found nothing
            return httpx.Response(204)
        action = path.rsplit("/", 1)[-1]
        if action in ("complete", "fail"):
            self.reports.append((action, body))
        return httpx.Response(200, json={})


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str, event: str, **kw: Any) -> None:
        self.events.append((level, event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self._record("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._record("warning", event, **kw)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.events if e == event]


@pytest.fixture
def discovery_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingLog]:
    recorder = RecordingLog()
    monkeypatch.setattr(discovery_module, "log", recorder)
    yield recorder


def llm_task(**config: Any) -> dict[str, Any]:
    cfg = {"model": "tiny", "prompt": "Say something", "max_tokens": 16, **config}
    task = {"id": "t1", "type": "llm", "status": "running", "config": cfg}
    return {"task": task, "claim_token": TOKEN}


async def start(
    server: Server, backend: Backend, prices: dict[str, LlmPrice] | None = None
) -> tuple[Runner, asyncio.Task[None]]:
    client = ServerClient("http://parity.test", transport=httpx.MockTransport(server))
    llm = LlmExecutor([backend])
    options = RunnerOptions(
        device_id="dev", push=False, heartbeat_interval=0.05, claim_wait=0, grace_seconds=1
    )
    runner = Runner(options, ACCOUNT, client, {"llm": llm}, None, ModelDiscovery(llm, prices))
    job = asyncio.create_task(runner.run())
    await until(lambda: server.registrations or job.done())
    return runner, job


async def stop(runner: Runner, job: asyncio.Task[None]) -> None:
    runner.stop()
    await asyncio.wait_for(job, 10)
    await runner.client.close()


def beat_models(server: Server) -> list[list[str]]:
    return [[m["model_name"] for m in b["models"]] for b in server.beats if "models" in b]


async def test_models_with_prices_go_out_at_registration_and_in_heartbeats(
    discovery_log: RecordingLog,
) -> None:
    server = Server()
    runner, job = await start(server, Backend(["x"]), {"tiny": LlmPrice(100, 300)})
    try:
        await until(lambda: len(beat_models(server)) >= 2)
    finally:
        await stop(runner, job)
    [model] = server.registrations[0]["models"]
    assert model["model_name"] == "tiny" and model["is_loaded"] is True
    assert model["max_tokens"] == 2048 and model["context_length"] == 2048
    assert (model["price_per_1k_input"], model["price_per_1k_output"]) == ("100", "300")
    beats = [b for b in server.beats if "models" in b]
    assert all(b["models"] == [model] for b in beats)
    # The last call (offline) says nothing about models: the server is told to forget the runner.
    assert server.beats[-1]["status"] == "offline" and "models" not in server.beats[-1]
    assert discovery_log.named("llm_backend_unreachable") == []


async def test_a_backend_down_at_start_is_logged_once_and_found_on_a_later_heartbeat(
    discovery_log: RecordingLog,
) -> None:
    backend = Backend(["x"])
    backend.down = True
    server = Server()
    runner, job = await start(server, backend)
    try:
        assert not job.done(), "the runner must start without its LLM backend"
        assert server.registrations[0]["models"] == []
        await until(lambda: len(beat_models(server)) >= 3)
        assert all(names == [] for names in beat_models(server))
        backend.down = False
        await until(lambda: beat_models(server)[-1] == ["tiny"])
    finally:
        await stop(runner, job)
    [down] = discovery_log.named("llm_backend_unreachable")
    assert down["backend"] == "openai http://llm.test" and "connection refused" in down["error"]
    [back] = discovery_log.named("llm_backend_reachable")
    assert back == {"backend": "openai http://llm.test", "models": ["tiny"]}


async def test_an_llm_task_is_completed_with_the_text_and_the_backends_usage() -> None:
    server = Server([llm_task()])
    backend = Backend(["The", " sea", "."])
    runner, job = await start(server, backend)
    try:
        await until(lambda: server.reports)
    finally:
        await stop(runner, job)
    [(action, body)] = server.reports
    assert action == "complete"
    assert body["claim_token"] == TOKEN and body["output"] == "The sea."
    assert body["usage"]["input_tokens"] == 5 and body["usage"]["output_tokens"] == 3
    assert body["usage"]["model"] == "tiny" and body["exit_code"] == 0
    assert [r.model for r in backend.requests] == ["tiny"]
    assert runner.completed == 1


async def test_a_backend_failure_fails_the_task_with_the_error_and_what_was_delivered() -> None:
    server = Server([llm_task()])
    runner, job = await start(server, Backend(["The", " sea", "."], fail_after=2))
    try:
        await until(lambda: server.reports)
    finally:
        await stop(runner, job)
    [(action, body)] = server.reports
    assert action == "fail"
    assert "engine died" in body["error"] and body["claim_token"] == TOKEN
    assert body["output"] == "The sea"  # the partial text, for billing what was delivered
    assert body["usage"]["error_code"] == "backend_unavailable"
    assert body["usage"]["output_tokens"] is None  # no final record: the server estimates
    assert runner.failed == 1


async def test_a_heartbeat_sends_the_last_report_while_a_listing_hangs() -> None:
    backend = Backend(["x"])
    discovery = ModelDiscovery(LlmExecutor([backend]))
    first = await discovery.discover()
    assert [m["model_name"] for m in first] == ["tiny"]
    backend.hang = asyncio.Event()
    backend.down = True  # when the listing finally answers, the backend is gone
    assert await discovery.current(0.05) == first
    backend.hang.set()
    # The listing was not cancelled by the heartbeat's wait: it finishes on its own.
    await until(lambda: discovery.latest == [])
    await discovery.aclose()

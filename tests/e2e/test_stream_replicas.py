"""Two real server processes on one PostgreSQL database and one Redis or NATS server
(STREAM_BUS_URL): the official `openai` client streams a chat completion from replica one while
the `parity-runner` process that serves the model works through replica two. The tokens cross
between the replicas on the shared bus, token by token, and the usage the client receives is
what the server billed. (Two replicas need a shared database: PostgreSQL runs only.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_DB
from tests.contract.llm_fakes import MODEL, REPLY
from tests.contract.nats_service import nats_url
from tests.contract.redis_service import redis_url
from tests.e2e.procs import ServerProcess
from tests.e2e.test_gateway_openai import api_key, latest_prompt, stream_chat
from tests.e2e.test_llm_runner import FAST, FakeBackend, keystore_path, llm_runner

__all__ = ["keystore_path"]  # a fixture, used by name
pytestmark = [pytest.mark.slow, pytest.mark.db]


@pytest.fixture(params=["redis", "nats"])
def replicas(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    if TEST_DB != "postgres":
        pytest.skip("two replicas share one database: PostgreSQL only (set PARITY_TEST_DB)")
    bus = redis_url() if request.param == "redis" else nats_url()
    servers = [
        ServerProcess(tmp_path / name, database_url, **FAST, STREAM_BUS_URL=bus).start()
        for name in ("one", "two")
    ]
    try:
        for s in servers:
            s.wait_healthy()
        yield servers[0], servers[1]
    finally:
        for s in servers:
            s.stop()


async def test_a_stream_crosses_replicas_token_by_token_through_the_shared_bus(
    replicas: tuple[ServerProcess, ServerProcess], keystore_path: Path, tmp_path: Path
) -> None:
    one, two = replicas
    fake = FakeBackend().start()
    try:
        await fake.wait_up()
        runner = llm_runner(two, keystore_path, tmp_path, "replica-two", fake.url, MODEL).start()
        try:
            runner.wait_registered()
            status = httpx.get(f"{one.url}/api/status", timeout=10).json()
            kind = "redis" if two.env["STREAM_BUS_URL"].startswith("redis") else "nats"
            assert status["backends"]["streams"] == kind
            assert not [w for w in status["warnings"] if "STREAM_BUS_URL" in w]
            key = api_key(one)
            pieces, usage = stream_chat(one, key, MODEL)
            assert pieces == REPLY  # token by token, relayed from replica two
            prompt = latest_prompt(one, key)
            assert prompt["status"] == "completed" and prompt["response"] == "".join(pieces)
            billed = prompt["usage"]
            assert usage is not None
            assert (usage.prompt_tokens, usage.completion_tokens) == (
                billed["input_tokens"], billed["output_tokens"],
            )  # fmt: skip
            assert "token_stream_failed" not in runner.log()
        finally:
            runner.stop()
    finally:
        fake.stop()

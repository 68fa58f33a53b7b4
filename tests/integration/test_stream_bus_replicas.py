"""Two server replicas on one database and one Redis or one NATS server (STREAM_BUS_URL): the
client's streaming request waits on one, the runner streams its tokens to the other, and the
client gets them token by token through the shared bus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from parity.app import create_app
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.llm.streams_nats import NatsStreamBus
from parity.llm.streams_redis import RedisStreamBus
from tests.conftest import ALICE, BOB, bearer, make_settings, sign_in, until
from tests.contract.nats_service import nats_url
from tests.contract.redis_service import redis_url
from tests.integration.queue_helpers import act
from tests.integration.test_gateway_api import (
    CHAT,
    api_key,
    claim_when_routed,
    sse_events,
    stream_deltas,
)
from tests.integration.test_llm_api import llm_runner, model

Replica = tuple[Container, httpx.AsyncClient]


@pytest.fixture(params=["redis", "nats"])
async def replicas(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path, clock: FrozenClock
) -> AsyncIterator[tuple[Replica, Replica]]:
    url = redis_url() if request.param == "redis" else nats_url()
    out: list[Replica] = []
    async with contextlib.AsyncExitStack() as stack:
        for name in ("one", "two"):
            s = make_settings(database_url, tmp_path / name, STREAM_BUS_URL=url)
            c = Container(settings=s, db=Database(s.resolved_database_url), clock=clock)
            stack.push_async_callback(c.db.dispose)
            app = create_app(c, run_migrations=False, start_jobs=False)
            await stack.enter_async_context(app.router.lifespan_context(app))
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://parity.test"
                )
            )
            out.append((c, http))
        yield out[0], out[1]


async def test_tokens_streamed_to_one_replica_reach_the_client_waiting_on_another(
    replicas: tuple[Replica, Replica],
):
    (one, http_one), (two, http_two) = replicas
    kind = RedisStreamBus if two.settings.stream_bus_url.startswith("redis") else NatsStreamBus
    assert isinstance(one.streams, kind) and isinstance(two.streams, kind)
    key = await api_key(http_one, ALICE)
    runner, _ = await llm_runner(http_two, await sign_in(http_two, BOB), model("m1"))
    body = {**CHAT, "stream": True}
    answer = asyncio.create_task(
        http_one.post("/v1/chat/completions", json=body, headers=bearer(key))
    )
    got = await claim_when_routed(http_two, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    assert await two.streams.subscribers(task_id) == 1  # the client's, on replica one
    r = await stream_deltas(http_two, runner, task_id, token, ["Hel", "lo", " world"])
    assert r.status_code == 200, r.text
    assert r.json() == {"deltas": 3, "listeners": 1}
    # Relayed before the completion exists: the three deltas and the end reached replica one.
    await until(lambda: one.streams.received == 4)
    usage = {"input_tokens": 4, "output_tokens": 3, "finish_reason": "stop"}
    r = await act(http_two, runner, task_id, "complete", token, output="Hello world", usage=usage)
    assert r.status_code == 200, r.text
    r = await asyncio.wait_for(answer, 20)
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    texts = [e["choices"][0]["delta"].get("content") for e in events[:-1] if e["choices"]]
    assert [t for t in texts if t] == ["Hel", "lo", " world"]  # token by token, not the result

"""Deltas lost on the way never leave a hole in the client's text (README "Embedded mode and
PostgreSQL", the Redis stream bus): a subscription that misses a delta is cut off as after an
overflow, and the client gets the rest of the text from the completed prompt.

- the bus: deltas are numbered within their attempt; a subscription that sees a number skipped
  is cut off with the ``overflow`` event;
- two replicas on one database and one Redis or NATS server (a private ``redis-server`` or
  ``nats-server`` this test stops and starts again): the client streams from replica one, the
  runner streams to replica two, and the bus goes away and comes back mid-stream, or before the
  first delta. The client gets the whole text, contiguous, and no error."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from parity.app import create_app
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.llm import streams_nats, streams_redis
from parity.llm.streams import LocalStreamBus, StreamEvent
from parity.llm.streams_nats import NatsStreamBus
from parity.llm.streams_redis import RedisStreamBus
from tests.conftest import ALICE, BOB, bearer, make_settings, sign_in, until
from tests.contract.nats_service import NatsServer, nats_server_binary
from tests.e2e.procs import free_port
from tests.integration.queue_helpers import act
from tests.integration.test_gateway_api import CHAT, api_key, claim_when_routed, sse_events
from tests.integration.test_llm_api import llm_runner, model

V1 = "/api/v1"
Replica = tuple[Container, httpx.AsyncClient]


def delta(text: str, seq: int | None, attempt: int = 1) -> StreamEvent:
    return StreamEvent("delta", attempt, text, seq=seq)


async def test_a_subscription_that_misses_a_numbered_delta_is_cut_off_as_overflowed():
    bus = LocalStreamBus()
    async with bus.subscribe("k") as sub:
        assert await bus.publish("k", delta("Hel", 0)) == 1
        assert await bus.publish("k", delta(" world", 2)) == 0  # "lo" (1) never came
        assert sub.take() == [StreamEvent("overflow")]
        assert await bus.publish("k", delta("!", 3)) == 0  # cut off for good
    async with bus.subscribe("k") as sub:
        # Each attempt counts from 0; deltas without numbers (an older replica's) pass.
        events = [delta("a", 0), delta("b", 1), delta("x", 0, attempt=2), delta("y", None)]
        for event in events:
            assert await bus.publish("k", event) == 1
        assert sub.take() == events


# -- a private Redis that goes away and comes back -----------------------------------------------


class RedisServer:
    """``redis-server`` on a loopback port of its own, no persistence: stopped, its clients'
    connections break and what is published meanwhile is lost, as in an outage."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/12"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            for _ in range(250):
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return
                assert self.proc.poll() is None, "redis-server exited"
                time.sleep(0.02)
            raise AssertionError("redis-server did not answer")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(params=["redis", "nats"])
def bus_server(request: pytest.FixtureRequest) -> Iterator[RedisServer | NatsServer]:
    server: RedisServer | NatsServer
    if request.param == "redis":
        if shutil.which("redis-server") is None:
            pytest.skip(
                "redis-server is not installed: the outage needs a Redis this test can stop"
            )
        server = RedisServer()
    else:
        server = NatsServer(nats_server_binary())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def replicas(
    database_url: str, tmp_path: Path, clock: FrozenClock, bus_server: RedisServer | NatsServer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Replica, Replica]]:  # fmt: skip
    # Back to the bus at once after it returns: the next publish tries it, the reader
    # reconnects within a fraction of a second.
    monkeypatch.setattr(streams_redis, "PUBLISH_PAUSE_SECONDS", 0.0)
    monkeypatch.setattr(streams_redis, "RECONNECT_MAX_SECONDS", 0.2)
    monkeypatch.setattr(streams_nats, "RECONNECT_MAX_SECONDS", 0.2)
    out: list[Replica] = []
    async with contextlib.AsyncExitStack() as stack:
        for name in ("one", "two"):
            s = make_settings(database_url, tmp_path / name, STREAM_BUS_URL=bus_server.url)
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


class RunnerStream:
    """The runner's streaming request, fed one delta at a time by the test."""

    def __init__(self, http: httpx.AsyncClient, runner: str, task_id: str, token: str) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.sent = 0

        async def body() -> AsyncIterator[bytes]:
            while (text := await self.queue.get()) is not None:
                yield (json.dumps({"delta": text}) + "\n").encode()
                self.sent += 1

        self.request = asyncio.create_task(
            http.post(
                f"{V1}/runners/tasks/{task_id}/stream",
                content=body(),
                headers={**bearer(runner), "X-Claim-Token": token},
            )
        )

    async def send(self, text: str) -> None:
        """Send ``text`` and wait until the server has read past it (its relay is done)."""
        want = self.sent + 1
        await self.queue.put(text)
        await until(lambda: self.sent >= want)
        await asyncio.sleep(0.1)

    async def close(self) -> httpx.Response:
        await self.queue.put(None)
        return await asyncio.wait_for(self.request, 20)


def bus(c: Container) -> RedisStreamBus | NatsStreamBus:
    assert isinstance(c.streams, (RedisStreamBus, NatsStreamBus))
    return c.streams


@pytest.mark.parametrize("outage", ["mid_stream", "before_the_first_delta"])
async def test_deltas_lost_while_the_bus_was_away_leave_no_hole_in_the_clients_text(
    replicas: tuple[Replica, Replica], bus_server: RedisServer | NatsServer, outage: str
):
    (one, http_one), (_two, http_two) = replicas
    key = await api_key(http_one, ALICE)
    runner, _ = await llm_runner(http_two, await sign_in(http_two, BOB), model("m1"))
    if outage == "before_the_first_delta":
        bus_server.stop()  # the client subscribes while the bus is away
    answer = asyncio.create_task(
        http_one.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(key))
    )
    got = await claim_when_routed(http_two, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    stream = RunnerStream(http_two, runner, task_id, token)
    if outage == "mid_stream":
        await stream.send("Hel")
        await until(lambda: bus(one).received == 1)  # relayed through the bus
        bus_server.stop()
        await until(lambda: not bus(one).connected)
        await stream.send("lo")  # published while the bus is away: lost to replica one
    else:
        await stream.send("Hel")
        await stream.send("lo")
    bus_server.start()
    await until(lambda: bus(one).connected)  # subscribed again
    before = bus(one).received
    for text in (" wor", "ld"):
        await stream.send(text)
    await until(lambda: bus(one).received > before)  # the relay works again
    assert (await stream.close()).status_code == 200
    usage = {"input_tokens": 4, "output_tokens": 4, "finish_reason": "stop"}
    r = await act(http_two, runner, task_id, "complete", token, output="Hello world", usage=usage)
    assert r.status_code == 200, r.text

    events = sse_events((await asyncio.wait_for(answer, 20)).text)
    assert events[-1] == "[DONE]"
    assert not any("error" in e for e in events[:-1]), events
    texts = [e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]]
    assert "".join(texts) == "Hello world"
    if outage == "mid_stream":
        assert next(t for t in texts if t) == "Hel"  # token by token until the gap
    p = (await http_one.get(f"{V1}/llm/prompts/{task_id}", headers=bearer(key))).json()
    assert p["status"] == "completed"

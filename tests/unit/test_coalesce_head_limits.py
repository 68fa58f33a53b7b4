"""The server's HTTP protocol bounds each request's head (request line and headers): one past
MAX_HEAD_BYTES is answered 431 and the connection closed, and a head not received within
HEAD_TIMEOUT_SECONDS is answered 408 (a connection that sent nothing is just closed), so a
client can neither grow the server's memory with an endless header nor hold connections open
by sending slowly (slowloris). Normal requests, keep-alive and bodies are unaffected."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn

from parity.api import coalesce
from parity.api.coalesce import CoalescingHttpToolsProtocol
from tests.unit.uvicorn_support import serving


async def _app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = json.dumps({"path": scope["path"], "body_bytes": len(body)}).encode()
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with serving(_app, CoalescingHttpToolsProtocol) as bound:
        yield bound


async def _exchange(port: int, *chunks: bytes, pause: float = 0.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_a_head_past_the_limit_is_431_and_the_connection_closes(port: int) -> None:
    head = b"GET /x HTTP/1.1\r\nhost: t\r\nx-big: "
    filler = b"a" * (coalesce.MAX_HEAD_BYTES + 1)
    answer = await _exchange(port, head, filler)
    assert _status(answer) == 431
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_header_too_large"
    assert b"connection: close" in answer


async def test_a_head_under_the_limit_and_a_large_body_are_served(port: int) -> None:
    big_header = b"a" * (coalesce.MAX_HEAD_BYTES // 2)
    body = b"b" * (4 * coalesce.MAX_HEAD_BYTES)
    request = (
        b"POST /ok HTTP/1.1\r\nhost: t\r\nconnection: close\r\nx-big: %s\r\n"
        b"content-length: %d\r\n\r\n%s" % (big_header, len(body), body)
    )
    answer = await _exchange(port, request)
    assert _status(answer) == 200
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"path": "/ok", "body_bytes": len(body)}


async def test_keep_alive_requests_each_get_their_own_head_allowance(port: int) -> None:
    header = b"a" * (coalesce.MAX_HEAD_BYTES * 2 // 3)
    one = b"GET /1 HTTP/1.1\r\nhost: t\r\nx-h: %s\r\n\r\n" % header
    two = b"GET /2 HTTP/1.1\r\nhost: t\r\nconnection: close\r\nx-h: %s\r\n\r\n" % header
    answer = await _exchange(port, one, two, pause=0.2)
    assert answer.count(b"HTTP/1.1 200 OK") == 2


async def test_a_slow_head_is_408_and_a_silent_connection_is_closed(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coalesce, "HEAD_TIMEOUT_SECONDS", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nhost: t\r\n")  # the head never ends
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert _status(answer) == 408
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed without an answer
    writer.close()


# -- bodies ----------------------------------------------------------------------------------


async def test_a_body_that_stops_arriving_closes_the_connection(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coalesce, "BODY_IDLE_SECONDS", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /stalled HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\npart")
    # Closed without an answer (the application was reading the body: nothing can go first).
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_a_slow_body_that_keeps_arriving_is_served(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coalesce, "BODY_IDLE_SECONDS", 0.3)
    chunks = [b"x" * 10] * 8  # 0.1 s apart: 0.8 s in all, never 0.3 s without a byte
    head = b"POST /slow HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 80\r\n\r\n"
    answer = await _exchange(port, head, *chunks, pause=0.1)
    assert _status(answer) == 200
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["body_bytes"] == 80


async def test_a_client_waiting_for_100_continue_is_not_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server holds the body up until the application asks for it (100 Continue): that
    wait is not the client's idleness."""
    monkeypatch.setattr(coalesce, "BODY_IDLE_SECONDS", 0.3)

    async def late_reader(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        await asyncio.sleep(1.0)  # e.g. checks before it reads the body
        await _app(scope, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        late_reader, log_config=None, access_log=False, lifespan="off",
        http=CoalescingHttpToolsProtocol,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        writer.write(
            b"POST /later HTTP/1.1\r\nhost: t\r\nconnection: close\r\nexpect: 100-continue\r\n"
            b"content-length: 5\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert _status(answer) == 200
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["body_bytes"] == 5
    finally:
        server.should_exit = True
        await task

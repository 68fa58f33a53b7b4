"""The server's HTTP protocol bounds the connections it holds (parity.api.connlimit): past the
soft mark a request is answered 503 ``server_busy`` with Retry-After and its connection closed,
and a connection opened past the soft mark must send its head within BUSY_HEAD_SECONDS; past
the hard mark a new connection is closed unanswered. Below the marks nothing changes, and the
marks free up as connections close. Real uvicorn on a loopback socket."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn

from parity.api import connlimit
from parity.api.coalesce import CoalescingHttpToolsProtocol
from parity.api.connlimit import ConnectionLimits, limits_for
from tests.unit.uvicorn_support import serving


async def _app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    answer = b'{"ok": true}'
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with serving(
        _app, CoalescingHttpToolsProtocol.limited(ConnectionLimits(soft=2, hard=3))
    ) as bound:
        yield bound


GET = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n"


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, raw: bytes = GET) -> tuple[int, dict[str, str], bytes]:
        """One request on a kept-alive connection: status, headers, body."""
        self.writer.write(raw)
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        body = await self.reader.readexactly(int(headers["content-length"]))
        return int(lines[0].split(" ")[1]), headers, body

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    def close(self) -> None:
        self.writer.close()


async def test_past_the_soft_mark_a_request_is_503_server_busy_and_the_connection_closes(
    port: int,
) -> None:
    a, b = await Conn.open(port), await Conn.open(port)
    assert (await a.request())[0] == 200
    assert (await b.request())[0] == 200  # both kept alive: the two the soft mark allows
    c = await Conn.open(port)
    status, headers, body = await c.request(
        b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello"
    )
    assert status == 503
    assert headers["retry-after"] == "1"
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "server_busy"
    assert error["details"] == {"max_connections": 2}
    assert "maximum of 2 connections" in error["message"]
    assert await c.closed()
    # The two below the mark are served as before.
    assert (await a.request())[0] == 200
    assert (await b.request())[0] == 200
    a.close()
    await asyncio.sleep(0.2)  # the server sees the close
    d = await Conn.open(port)
    assert (await d.request())[0] == 200  # a freed place is taken again
    b.close()
    d.close()


async def test_past_the_hard_mark_a_connection_is_closed_unanswered(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connlimit, "BUSY_HEAD_SECONDS", 0.5)
    a, b = await Conn.open(port), await Conn.open(port)
    assert (await a.request())[0] == 200
    assert (await b.request())[0] == 200
    idle = await Conn.open(port)  # the third: past the soft mark, within the hard one
    await asyncio.sleep(0.1)
    fourth = await Conn.open(port)
    assert await fourth.closed()  # past the hard mark: no answer at all
    # The idle one had BUSY_HEAD_SECONDS to send a head and is closed without an answer.
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await idle.closed()
    assert loop.time() - started < 5
    a.close()
    b.close()


def test_the_marks_leave_the_reserve_to_the_server() -> None:
    configured = limits_for(500, open_files=1024, database_pool_size=10)
    assert (configured.soft, configured.hard) == (500, 562)
    small = limits_for(3, open_files=1024, database_pool_size=10)
    assert (small.soft, small.hard) == (3, 19)
    auto = limits_for(0, open_files=1024, database_pool_size=10)
    usable = 1024 - connlimit.OWN_FILES_RESERVE - 20
    assert auto.hard <= usable
    assert auto.soft >= usable * 0.85
    assert limits_for(0, open_files=100, database_pool_size=10).soft == 32  # never below 32
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionLimits.of(0)


_release: asyncio.Event  # made by the fixture, in the test's event loop


async def _holding_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """``/hold`` answers once ``_release`` is set; anything else at once."""
    if scope["path"] == "/hold":
        await _release.wait()
    await _app(scope, receive, send)


@pytest.fixture
async def holding_port() -> AsyncIterator[int]:
    global _release
    _release = asyncio.Event()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    protocol = CoalescingHttpToolsProtocol.limited(ConnectionLimits(soft=2, hard=3))
    config = uvicorn.Config(
        _holding_app, log_config=None, access_log=False, lifespan="off", http=protocol
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield sock.getsockname()[1]
    _release.set()
    server.should_exit = True
    await task


HOLD = b"GET /hold HTTP/1.1\r\nhost: t\r\n\r\n"


async def _response(conn: Conn) -> int:
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
    await conn.reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split(" ")[1])


async def test_a_pipelined_request_within_the_mark_is_not_counted_twice(holding_port: int) -> None:
    """Two connections, the mark's two, each with a request in progress: a request pipelined
    behind one of them runs after it on the same connection (no task more at any time), so it
    is served, not answered busy."""
    a, b = await Conn.open(holding_port), await Conn.open(holding_port)
    b.writer.write(HOLD)
    a.writer.write(HOLD + GET)  # the second waits for the first on this connection
    await a.writer.drain()
    await b.writer.drain()
    await asyncio.sleep(0.3)  # both heads read, both requests held
    _release.set()
    assert await _response(b) == 200
    assert await _response(a) == 200
    assert await _response(a) == 200  # the pipelined one: served
    a.close()
    b.close()


def test_status_warns_once_nine_tenths_of_the_connections_are_in_use() -> None:
    limits = ConnectionLimits.of(10)
    limits.open = 8
    assert limits.warning() is None
    limits.open = 9
    warning = limits.warning()
    assert warning is not None and "9 of 10 connections in use" in warning
    assert "SERVER_MAX_CONNECTIONS" in warning
    assert limits.refused() is not None and limits.refused() is None  # reported once a while
    assert limits.describe() == {"open": 9, "max": 10, "refused": 2}

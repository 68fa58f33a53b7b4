"""The server's HTTP transport wrapper: writes made in one turn of the event loop reach the
socket as one write, in order; close and write_eof send what is held first; abort drops it."""

from __future__ import annotations

import asyncio
from typing import Any

from parity.api.coalesce import CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.events.append("write")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def write_eof(self) -> None:
        self.events.append("eof")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def _wrap() -> tuple[CoalescingTransport, RecordingTransport]:
    inner = RecordingTransport()
    return CoalescingTransport(inner, asyncio.get_running_loop()), inner  # type: ignore[arg-type]


async def test_writes_of_one_turn_go_out_as_one_and_later_ones_separately():
    t, inner = _wrap()
    t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    t.write(memoryview(b"ok"))
    t.write(b"")
    assert inner.writes == []  # held until the end of this turn
    assert t.get_write_buffer_size() == 40
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    t.writelines([b"a", b"b"])
    await asyncio.sleep(0)
    assert inner.writes[1:] == [b"ab"]


async def test_close_and_eof_send_what_is_held_first_and_abort_drops_it():
    t, inner = _wrap()
    t.write(b"last")
    t.write_eof()
    t.close()
    assert inner.events == ["write", "eof", "close"] and inner.writes == [b"last"]
    await asyncio.sleep(0)
    assert inner.writes == [b"last"]  # nothing sent twice

    t, inner = _wrap()
    t.write(b"never")
    t.abort()
    await asyncio.sleep(0)
    assert inner.writes == [] and inner.events == ["abort"]


async def test_nothing_is_written_to_a_closing_transport_and_the_rest_is_delegated():
    t, inner = _wrap()
    t.write(b"late")
    inner.closing = True  # the peer went away before the end of the turn
    await asyncio.sleep(0)
    assert inner.writes == []
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)
    assert t.is_closing() is True

"""One send per response: the HTTP protocol's writes made in one turn of the event loop go to
the socket together.

uvicorn writes a response's status line and headers, then its body, as two writes; on uvloop
each is its own ``send()`` system call made while the loop holds the GIL, and on loopback a
send also runs the receiver's side of TCP. A profile of the server during a federated-learning
round put ~10 % of its busy time in those sends. A plain response's two writes come in the same
turn of the loop (nothing suspends between them), so writes are gathered until the end of the
turn and sent as one. A streamed response's later chunks still go out in their own turns: the
delay is never more than the rest of the current turn."""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from parity.api import connlimit
from parity.api.connlimit import ConnectionLimits
from parity.logging import get_logger

log = get_logger("parity.http")

MAX_HEAD_BYTES = 64 * 1024
"""The most a request line and its headers may take together (431 past it)."""
HEAD_TIMEOUT_SECONDS = 60.0
"""How long a connection may take to send a request's line and headers, counted from when
it opened (its first request) or from the first byte of the request (later ones): 408 then."""
BODY_IDLE_SECONDS = 300.0
"""How long a request's body may stop arriving (no byte at all) before the connection is
closed. Not counted while the server holds the body up itself (reading paused because the
application has not taken what came, or a ``100-continue`` not yet sent). A slow upload goes
on as long as bytes come; ``parity-runner``'s token stream sends a blank line every
``STREAM_KEEPALIVE_SECONDS`` while its backend is silent."""


class CoalescingTransport:
    """A transport whose writes are held until the end of the loop's current turn and then
    sent as one. Everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._held.append(bytes(data))
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is held now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(d) for d in self._held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`CoalescingTransport`, with the head of each
    request limited to :data:`MAX_HEAD_BYTES` (431) and :data:`HEAD_TIMEOUT_SECONDS` (408), and,
    in a class made by :meth:`limited`, the number of connections (:mod:`parity.api.connlimit`)."""

    limits: ClassVar[ConnectionLimits | None] = None

    @classmethod
    def limited(cls, limits: ConnectionLimits) -> type[CoalescingHttpToolsProtocol]:
        """This protocol with connections bounded by ``limits`` (one class per server)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    # Request heads (the request line and headers): bounded in size and in time. httptools keeps
    # a header value it has not seen the end of in memory without a limit, and uvicorn times a
    # connection out only between requests, so without these a client could hold a connection
    # (and its file descriptor) open for ever by sending its head slowly, or grow the server's
    # memory by the size of one endless header.

    _in_head = True
    _head_bytes = 0
    _heads_done = 0
    _head_timer: asyncio.TimerHandle | None = None
    # A request's body, once its head is in: a connection whose body stops arriving is closed
    # after BODY_IDLE_SECONDS (uvicorn has no limit: the application would wait for ever).
    _in_body = False
    _body_timer: asyncio.TimerHandle | None = None
    # A connection opened past the soft connection mark has a short head deadline.
    _head_seconds: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        limits = self.limits
        if limits is not None:
            limits.open = len(self.connections)
        if limits is not None and len(self.connections) > limits.soft:
            if len(self.connections) > limits.hard:
                self._note_refused(limits, "connection closed unanswered")
                self.transport.close()
                return
            self._head_seconds = connlimit.BUSY_HEAD_SECONDS
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)
        if self.limits is not None:
            self.limits.open = len(self.connections)

    def data_received(self, data: bytes) -> None:
        in_head, heads_before = self._in_head, self._heads_done
        super().data_received(data)
        if not (in_head and self._in_head) or self._heads_done != heads_before:
            return  # a head began or ended in this chunk: its share is bounded by the chunk's size
        if self.transport.is_closing():
            return
        self._head_bytes += len(data)  # every byte of this chunk belongs to an unfinished head
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_head(
                431,
                "request_header_too_large",
                f"request line and headers exceed {MAX_HEAD_BYTES} bytes",
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._heads_done += 1
        self._cancel_head_timer()
        limits = self.limits
        # A request pipelined behind this connection's unfinished one waits for it (uvicorn
        # queues it): it adds no task, so the one running here is not counted against it.
        queued = self.cycle is not None and not self.cycle.response_complete
        if limits is not None and (
            len(self.connections) > limits.soft or len(self.tasks) - queued >= limits.soft
        ):
            # uvicorn takes the application for this request from self.app here: this one
            # request is answered busy, the connection's application stays what it was.
            self._note_refused(limits, "request answered 503")
            app, self.app = self.app, _busy_app(limits)
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        self._in_body = True
        self._arm_body_timer()

    def _note_refused(self, limits: ConnectionLimits, what: str) -> None:
        count = limits.refused()
        if count is not None:
            log.warning(
                "connection_limit_reached",
                refused=count,
                last=what,
                open_connections=len(self.connections),
                max_connections=limits.soft,
                detail="raise SERVER_MAX_CONNECTIONS (and the open-file limit) or add replicas",
            )

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._in_body:
            self._cancel_body_timer()
            self._arm_body_timer()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._cancel_body_timer()
        super().on_message_complete()

    def _arm_body_timer(self) -> None:
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(BODY_IDLE_SECONDS, self._body_timed_out)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            self._arm_body_timer()  # the server holds the body up, not the client
            return
        # The application is reading the body (or has answered): no answer can be put in
        # between, so the connection is closed; the application sees the client gone.
        self.transport.close()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            seconds = self._head_seconds or HEAD_TIMEOUT_SECONDS
            self._head_timer = self.loop.call_later(seconds, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._responding():
            self._arm_head_timer()  # a pipelined head: the answer being sent is not cut off
            return
        if self._head_bytes == 0 and self.cycle is None:
            self.transport.close()  # a connection that never sent anything: nothing to answer
            return
        self._refuse_head(
            408,
            "request_timeout",
            "request line and headers not received within "
            f"{self._head_seconds or HEAD_TIMEOUT_SECONDS:g} s",
        )

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse_head(self, status: int, code: str, message: str) -> None:
        self._cancel_head_timer()
        if self._responding():  # no answer can go in the middle of another one
            self.transport.close()
            return
        body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
        reason = HTTPStatus(status).phrase.encode("ascii")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.transport.close()


BUSY_BODY_READ_BYTES = 64 * 1024
"""How much of a busy request's body is read (and dropped) before the answer, so a small body
does not turn the close into a reset that loses the answer."""


def _busy_app(limits: ConnectionLimits) -> Any:
    body = connlimit.busy_body(limits)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(connlimit.RETRY_AFTER_SECONDS).encode()),
        (b"connection", b"close"),
    ]

    async def busy(scope: Any, receive: Any, send: Any) -> None:
        read = 0
        try:
            async with asyncio.timeout(0.5):
                while read <= BUSY_BODY_READ_BYTES:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client has gone
                    read += len(message.get("body", b""))
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            pass
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return busy

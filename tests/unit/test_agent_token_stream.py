"""The runner's streaming leg when its request fails after a delta went out: the server ends a
cancelled stream by dropping the connection with the body unread, so its ``{"cancelled": true}``
answer is often lost to the reset and the request fails like a lost connection. The claim's
lease then tells a cancel (reported as one) from a stream that broke off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from parity.agent import token_stream
from parity.agent.client import ServerError
from parity.agent.token_stream import BROKEN, CANCELLED, TokenStream


class DroppedStreamClient:
    """Reads one delta of the body, then fails as a reset connection does; answers the lease
    check with ``lease`` (or raises it when it is an exception)."""

    def __init__(self, lease: dict[str, Any] | Exception, error: Exception | None = None):
        self.lease = lease
        self.error = error or httpx.ReadError("")
        self.lease_checks: list[tuple[str, str, dict[str, Any]]] = []

    async def stream(self, task_id: str, token: str, deltas: AsyncIterator[str]) -> dict[str, Any]:
        async for _ in deltas:
            break
        raise self.error

    async def transition(self, task_id: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        self.lease_checks.append((task_id, action, body))
        if isinstance(self.lease, Exception):
            raise self.lease
        return self.lease


async def run_stream(client: DroppedStreamClient) -> tuple[TokenStream, list[str]]:
    ends: list[str] = []
    stream = TokenStream(client, "t-1", "claim-1", on_end=ends.append)  # type: ignore[arg-type]
    stream.send("Hello")
    assert stream._job is not None
    await asyncio.wait_for(stream._job, timeout=5)
    return stream, ends


async def test_a_connection_dropped_on_a_cancel_ends_the_stream_as_cancelled() -> None:
    client = DroppedStreamClient({"cancel_requested": True})
    stream, ends = await run_stream(client)
    assert ends == [CANCELLED] and stream.ended == CANCELLED
    assert client.lease_checks == [("t-1", "lease", {"claim_token": "claim-1"})]


async def test_a_connection_lost_on_a_live_claim_is_a_broken_stream() -> None:
    stream, ends = await run_stream(DroppedStreamClient({"cancel_requested": False}))
    assert ends == [BROKEN] and stream.error == "ReadError"


async def test_a_lease_check_that_fails_too_leaves_the_stream_broken() -> None:
    _, ends = await run_stream(DroppedStreamClient(httpx.ConnectError("refused")))
    assert ends == [BROKEN]


async def test_a_server_error_is_broken_without_a_lease_check() -> None:
    client = DroppedStreamClient(
        {"cancel_requested": True}, error=ServerError(503, "unavailable", "restarting", {})
    )
    _, ends = await run_stream(client)
    assert ends == [BROKEN] and client.lease_checks == []


class RecordingClient:
    """Takes the whole body: each line as the request would carry it (None: a blank line)."""

    def __init__(self) -> None:
        self.lines: list[str | None] = []

    async def stream(
        self, task_id: str, token: str, deltas: AsyncIterator[str | None]
    ) -> dict[str, Any]:
        async for line in deltas:
            self.lines.append(line)
        return {"deltas": sum(1 for x in self.lines if x is not None), "listeners": 1}


async def test_a_silent_backend_keeps_the_request_alive_with_blank_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(token_stream, "STREAM_KEEPALIVE_SECONDS", 0.05)
    client = RecordingClient()
    stream = TokenStream(client, "t-1", "claim-1")  # type: ignore[arg-type]
    stream.open()  # the backend has produced nothing yet
    await asyncio.sleep(0.3)
    stream.send("Hel")
    stream.send("lo")
    await stream.close(timeout=5)
    silent = client.lines[: client.lines.index("Hel")]
    assert len(silent) >= 3 and set(silent) == {None}  # a blank line every 0.05 s of silence
    assert client.lines[client.lines.index("Hel") :] == ["Hel", "lo"]
    assert stream.sent_text == "Hello"  # blank lines are not part of the text
    await asyncio.sleep(0.2)
    assert client.lines[-1] == "lo"  # nothing after the close

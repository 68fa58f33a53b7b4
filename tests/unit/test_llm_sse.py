"""The server-sent-events reader of the OpenAI-compatible client."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from parity.agent.llm.openai_compat import sse_data


async def lines_of(*lines: str) -> AsyncGenerator[str, None]:
    for line in lines:
        yield line


async def read(*lines: str) -> list[str]:
    return [data async for data in sse_data(lines_of(*lines))]


CASES = [
    pytest.param(["data: {\"a\":1}", "", "data: [DONE]", ""], ['{"a":1}', "[DONE]"], id="plain"),
    pytest.param(["data:{\"a\":1}", ""], ['{"a":1}'], id="no-space-after-colon"),
    pytest.param(["data:  two spaces", ""], [" two spaces"], id="only-one-space-stripped"),
    pytest.param(["data: first", "data: second", ""], ["first\nsecond"], id="multi-line-data"),
    pytest.param([": ping", "", "event: message", "id: 7", "retry: 10", "data: x", ""], ["x"],
                 id="comments-and-other-fields-ignored"),
    pytest.param(["", "", "data: x"], ["x"], id="last-event-without-blank-line"),
    pytest.param(["event: ping", ""], [], id="event-without-data-dispatches-nothing"),
    pytest.param(["data", ""], [""], id="field-without-colon-is-empty-data"),
]  # fmt: skip


@pytest.mark.parametrize(("lines", "expected"), CASES)
async def test_sse_data(lines: list[str], expected: list[str]) -> None:
    assert await read(*lines) == expected


async def test_closing_the_reader_closes_the_line_source() -> None:
    closed = False

    async def source() -> AsyncGenerator[str, None]:
        nonlocal closed
        try:
            yield "data: a"
            yield ""
            yield "data: b"
            yield ""
        finally:
            closed = True

    reader = sse_data(source())
    assert await anext(reader) == "a"
    await reader.aclose()
    assert closed

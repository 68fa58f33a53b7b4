"""The runner's event loop: uvloop when it is installed, the standard loop's behaviour else."""

from __future__ import annotations

import asyncio

import pytest

from parity.agent import eventloop


async def _loop_kind() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_the_runner_loop_is_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert eventloop.run_loop(_loop_kind()).startswith("uvloop")


def test_without_uvloop_the_standard_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "loop_factory", lambda: None)
    assert eventloop.run_loop(_loop_kind()).startswith("asyncio")


def test_an_error_in_the_runner_propagates() -> None:
    async def boom() -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        eventloop.run_loop(boom())

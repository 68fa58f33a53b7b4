"""Group commit of SecAgg+ stage messages (``parity.fl.secagg_inbox``): the first item of a key
runs at once, alone; items that arrive while its batch runs go together into the next one; keys
do not wait for each other; a batch that fails fails its own items only."""

from __future__ import annotations

import asyncio

import pytest

from parity.fl.secagg_inbox import Inbox


class Recorder:
    """A batch runner that records its batches and holds each until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail: set[str] = set()

    async def __call__(self, batch: list[str]) -> None:
        self.batches.append(list(batch))
        await self.release.wait()
        if self.fail & set(batch):
            raise RuntimeError(f"batch {batch} failed")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_items_arriving_while_a_batch_runs_go_together_into_the_next():
    inbox: Inbox[str, str] = Inbox()
    run = Recorder()
    first = asyncio.ensure_future(inbox.submit("round-1", "a", run))
    await settle()
    assert run.batches == [["a"]]  # the first runs at once, alone
    later = [asyncio.ensure_future(inbox.submit("round-1", x, run)) for x in ("b", "c", "d")]
    other = asyncio.ensure_future(inbox.submit("round-2", "z", run))
    await settle()
    assert run.batches == [["a"], ["z"]]  # another key does not wait
    run.release.set()
    await asyncio.gather(first, *later, other)
    assert run.batches == [["a"], ["z"], ["b", "c", "d"]]


async def test_a_failed_batch_fails_its_own_items_only():
    inbox: Inbox[str, str] = Inbox()
    run = Recorder()
    run.fail = {"a"}
    first = asyncio.ensure_future(inbox.submit("k", "a", run))
    await settle()
    second = asyncio.ensure_future(inbox.submit("k", "b", run))
    await settle()
    run.release.set()
    with pytest.raises(RuntimeError, match="failed"):
        await first
    await second  # the next batch ran, and succeeded
    assert run.batches == [["a"], ["b"]]


async def test_a_caller_that_goes_away_does_not_stop_its_batch():
    inbox: Inbox[str, str] = Inbox()
    run = Recorder()
    gone = asyncio.ensure_future(inbox.submit("k", "a", run))
    await settle()
    stays = asyncio.ensure_future(inbox.submit("k", "b", run))
    await settle()
    gone.cancel()
    run.release.set()
    await stays
    assert run.batches == [["a"], ["b"]]

"""The local store's batched upload path: batches joined off the loop, hashed in two threads,
appended to the upload's pack. CIDs must stay the importer's whatever the piece sizes."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from parity.core.storage.importer import FileImporter
from parity.storage import local
from parity.storage.local import LocalContentStore
from parity.storage.packwriter import PackWriter


def _data(n: int) -> bytes:
    return hashlib.shake_256(b"storage-local-put").digest(n)


def _expected(data: bytes) -> tuple[str, str]:
    importer = FileImporter(keep_blocks=False)
    importer.write(data)
    result = importer.finish()[1]
    assert result.cid_v0 is not None
    return result.cid.encode(), result.cid_v0.encode()


async def _pieces(data: bytes, sizes: Iterable[int]) -> AsyncIterator[bytes]:
    at = 0
    for size in sizes:
        if at >= len(data):
            return
        yield data[at : at + size]
        at += size
    if at < len(data):
        yield data[at:]


async def test_odd_pieces_across_batches_give_the_importers_cids(tmp_path: Path) -> None:
    data = _data(2 * local.BATCH_BYTES + 3 * 262144 + 12345)
    store = LocalContentStore(tmp_path / "blocks")
    stored = await store.put(_pieces(data, [1, 70000, 262143, 5, 1 << 20] * 20))
    assert (stored.cid.encode(), stored.cid_v0 and stored.cid_v0.encode()) == _expected(data)
    assert stored.size == len(data)
    assert b"".join([p async for p in store.cat(stored.cid)]) == data


async def test_concurrent_puts_of_the_same_bytes_agree(tmp_path: Path) -> None:
    data = _data(3 * local.BATCH_BYTES + 17)
    store = LocalContentStore(tmp_path / "blocks")
    one, two = await asyncio.gather(
        store.put(_pieces(data, [65536] * 10_000), pin=True),
        store.put(_pieces(data, [1 << 20] * 100)),
    )
    assert one == two
    assert one.cid in await store.pins()
    assert b"".join([p async for p in store.cat(one.cid, 5, len(data) - 5)]) == data[5:-5]
    packs = tmp_path / "blocks" / "packs"
    names = sorted(p.name for p in packs.iterdir())
    assert all(n.endswith((".pack", ".idx")) for n in names), names  # no journal nor temp left
    assert {n[:-5] for n in names if n.endswith(".pack")} == {
        n[:-4] for n in names if n.endswith(".idx")
    }


async def test_a_missing_packs_directory_is_made_again(tmp_path: Path) -> None:
    data = _data(5 * 262144)
    store = LocalContentStore(tmp_path / "blocks")
    first = await store.put(_pieces(data, [1 << 20] * 10))
    await store.gc(older_than=None)  # nothing pinned: every block goes
    (tmp_path / "blocks" / "packs").rmdir()
    again = await store.put(_pieces(data, [1 << 20] * 10))
    assert again == first
    assert await store.stat(first.cid) == len(data)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _packs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "packs").iterdir() if p.name.endswith(".pack"))


async def test_small_puts_that_arrive_together_share_one_durable_pack(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    store = LocalContentStore(root)
    first = await store.put(_one(_data(3000)), pin=True)  # alone: its own pack
    assert len(_packs(root)) == 1
    blobs = [_data(1000 + i) for i in range(12)]
    stored = await asyncio.gather(
        *(store.put(_one(b), pin=i % 2 == 0) for i, b in enumerate(blobs))
    )
    # Queued before the writer ran: one batch, one pack, one commit.
    assert len(_packs(root)) == 2
    assert store.small_puts.batches == 2
    for blob, s in zip(blobs, stored, strict=True):
        assert (s.cid.encode(), s.cid_v0 and s.cid_v0.encode()) == _expected(blob)
        assert b"".join([p async for p in store.cat(s.cid)]) == blob
    pins = await store.pins()
    assert {s.cid for i, s in enumerate(stored) if i % 2 == 0} | {first.cid} == pins
    # A fresh instance (another process) reads them from the shared pack's index on disk.
    again = LocalContentStore(root)
    for blob, s in zip(blobs, stored, strict=True):
        assert b"".join([p async for p in again.cat(s.cid)]) == blob


async def test_a_failed_batch_fails_its_uploads_only_and_leaves_no_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "blocks"
    store = LocalContentStore(root)
    await store.put(_one(_data(10)))
    real_commit = PackWriter.commit
    calls = 0

    def commit(self: PackWriter, *, wait: bool = True) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(28, "No space left on device")
        real_commit(self, wait=wait)

    monkeypatch.setattr(PackWriter, "commit", commit)
    # Four uploads queued together: one batch, whose commit fails.
    results = await asyncio.gather(
        *(store.put(_one(_data(100 + i))) for i in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, OSError) for r in results), results
    assert len(_packs(root)) == 1  # the earlier upload's only: nothing half-kept
    later = await store.put(_one(_data(100 + 3)))  # the store goes on
    assert b"".join([p async for p in store.cat(later.cid)]) == _data(103)


async def test_a_caller_that_goes_away_does_not_stop_the_batch(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path / "blocks")
    blobs = [_data(500 + i) for i in range(3)]
    tasks = [asyncio.create_task(store.put(_one(b))) for b in blobs]
    await asyncio.sleep(0)
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    await store.aclose()
    for i in (0, 2):
        assert b"".join([p async for p in store.cat(done[i].cid)]) == blobs[i]  # type: ignore[union-attr]


def test_a_store_outliving_its_event_loop_still_takes_small_puts(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path / "blocks")
    first = asyncio.new_event_loop()
    # A put left unfinished when its loop closed (a server stopped mid-write).
    store.small_puts._writer = first.create_future()  # type: ignore[assignment]
    first.close()
    stored = asyncio.run(store.put(_one(_data(77))))
    assert asyncio.run(_read_all(store, stored.cid)) == _data(77)


async def _read_all(store: LocalContentStore, cid: Any) -> bytes:
    return b"".join([p async for p in store.cat(cid)])


async def test_a_gc_holding_the_store_delays_a_small_put_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    root = tmp_path / "blocks"
    store = LocalContentStore(root)
    await store.put(_one(_data(20)))  # the store exists; written on the loop
    assert store.small_puts.inline_batches == 1
    fd = os.open(root / ".gc.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a GC (another process, as far as flock knows) runs
        # Should the put block the loop, the GC still ends (and the timing check fails).
        safety = threading.Timer(3.0, fcntl.flock, (fd, fcntl.LOCK_UN))
        safety.start()
        put = asyncio.create_task(store.put(_one(_data(21))))
        started = asyncio.get_running_loop().time()
        await asyncio.sleep(0.2)
        # The loop went on (the sleep was not held up) and the upload waits for the GC.
        assert asyncio.get_running_loop().time() - started < 1.0
        assert not put.done()
    finally:
        safety.cancel()
        os.close(fd)  # the GC ends
    stored = await asyncio.wait_for(put, 10)
    assert await _read_all(store, stored.cid) == _data(21)
    assert store.small_puts.inline_batches == 1  # this one was written in a worker thread
    assert len(_packs(root)) == 2  # the first upload's and this one's: the inline try left none

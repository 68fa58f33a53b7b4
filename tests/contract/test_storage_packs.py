"""The local store's packed layout: restart recovery, torn packs, GC compaction, concurrent
uploads, GC from another store instance (as the CLI runs it)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parity.core.storage.multiformats import Cid
from parity.storage.errors import StoreFailed
from parity.storage.local import LocalContentStore
from parity.storage.ports import Stored
from tests.conftest import until

CHUNK = 262144


def _data(n: int, seed: bytes = b"packs") -> bytes:
    return hashlib.shake_256(seed).digest(n)


async def _pieces(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _read(store: LocalContentStore, cid: Cid) -> bytes:
    return b"".join([p async for p in store.cat(cid)])


def _packs(root: Path, ext: str) -> list[Path]:
    return sorted((root / "packs").glob(f"*.{ext}"))


async def _journaled(root: Path, count: int) -> None:
    """Wait until uploads in flight have noted ``count`` blocks as already stored."""
    await until(lambda: sum(len(p.read_text().split()) for p in _packs(root, "refs")) >= count)


async def _upload_paused_after(
    store: LocalContentStore, head: bytes, tail: bytes = b""
) -> tuple[asyncio.Task[Stored], asyncio.Event]:
    """Start uploading ``head + tail``; return once ``head`` is sent, the upload waiting for
    the returned gate before it sends ``tail`` (if any) and commits."""
    sent, gate = asyncio.Event(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        async for piece in _pieces(head):
            yield piece
        sent.set()
        await gate.wait()
        if tail:
            yield tail

    upload = asyncio.create_task(store.put(body()))
    await sent.wait()
    return upload, gate


async def test_a_restarted_store_reads_from_the_index_files(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    data = _data(5 * CHUNK + 7)
    stored = await LocalContentStore(root).put(_pieces(data), pin=True)
    again = LocalContentStore(root)
    assert await again.stat(stored.cid) == len(data)
    assert await _read(again, stored.cid) == data


async def test_a_damaged_index_is_rebuilt_from_the_pack(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    data = _data(4 * CHUNK)
    stored = await LocalContentStore(root).put(_pieces(data))
    (idx,) = _packs(root, "idx")
    raw = bytearray(idx.read_bytes())
    raw[-1] ^= 0xFF  # checksum no longer holds
    idx.write_bytes(bytes(raw))
    again = LocalContentStore(root)
    assert await _read(again, stored.cid) == data
    assert idx.read_bytes() != bytes(raw)  # rewritten, valid again
    assert await _read(LocalContentStore(root), stored.cid) == data


async def test_a_truncated_pack_leaves_no_block_indexed_whose_bytes_are_gone(
    tmp_path: Path,
) -> None:
    root = tmp_path / "blocks"
    data = _data(6 * CHUNK)
    stored = await LocalContentStore(root).put(_pieces(data))
    (pack,) = _packs(root, "pack")
    with open(pack, "r+b") as fh:  # as if the tail never reached the disk
        fh.truncate(pack.stat().st_size - CHUNK - 100)
    again = LocalContentStore(root)
    leaves = [Cid.v1(0x55, data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
    present = [await again.stat(c) for c in leaves]
    assert present == [CHUNK] * 5 + [None]  # the records before the tear stay, verified
    assert await again.stat(stored.cid) is None  # the root was the last record
    for i, leaf in enumerate(leaves[:5]):
        assert await again.get_block(leaf) == data[i * CHUNK : (i + 1) * CHUNK]


async def test_a_pack_without_an_index_is_never_read_and_gc_discards_it(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    store = LocalContentStore(root)
    data = _data(3 * CHUNK)
    stored = await store.put(_pieces(data))
    (pack,) = _packs(root, "pack")
    (idx,) = _packs(root, "idx")
    idx.unlink()  # a crash between the pack's fsync and its index
    again = LocalContentStore(root)
    assert await again.stat(stored.cid) is None
    report = await again.gc(older_than=None)
    assert report.freed_bytes and report.freed_bytes >= len(data)
    assert not pack.exists()


async def test_gc_compacts_a_pack_keeping_live_blocks_and_dropping_dead_ones(
    tmp_path: Path,
) -> None:
    # A pack with live and dead blocks: one upload of two files' worth, one of them pinned.
    root2 = tmp_path / "blocks2"
    store2 = LocalContentStore(root2, compact_below=0.9)
    one = _data(4 * CHUNK, b"one")
    two = _data(4 * CHUNK, b"two")
    joined = await store2.put(_pieces(one + two))
    only_one = await store2.put(_pieces(one), pin=True)  # its leaves are in joined's pack
    (pack,) = [p for p in _packs(root2, "pack") if p.stat().st_size > 1000]
    report = await store2.gc(older_than=None)
    assert report.removed_blocks == 5  # two's four leaves and joined's root
    assert not pack.exists()  # rewritten without them
    assert await _read(store2, only_one.cid) == one
    assert await store2.stat(joined.cid) is None
    assert sum(p.stat().st_size for p in _packs(root2, "pack")) < 5 * CHUNK


async def test_gc_in_another_instance_is_seen_by_a_reader(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    server = LocalContentStore(root, compact_below=0.9)
    one = _data(4 * CHUNK, b"one")
    two = _data(4 * CHUNK, b"two")
    await server.put(_pieces(one + two))
    pinned = await server.put(_pieces(one), pin=True)
    assert await _read(server, pinned.cid) == one
    gc = LocalContentStore(root, compact_below=0.9)  # as `parity-server storage gc` does
    assert (await gc.gc(older_than=None)).removed_blocks == 5
    assert await _read(server, pinned.cid) == one  # the old pack is gone: looked up again
    again = await server.put(_pieces(two))  # was collected: stored anew, not taken as present
    assert await _read(LocalContentStore(root), again.cid) == two


async def test_a_small_put_after_gc_elsewhere_stores_what_gc_took(tmp_path: Path) -> None:
    """A writer does not list the pack directory when it opens: what another instance's GC
    removed is noticed when a block is relied on, and stored anew."""
    root = tmp_path / "blocks"
    server = LocalContentStore(root)
    small = _data(10_000, b"small")
    first = await server.put(_pieces(small))
    kept = await server.put(_pieces(_data(10_000, b"kept")), pin=True)
    gc = LocalContentStore(root)
    assert (await gc.gc(older_than=None)).removed_blocks == 1
    again = await server.put(_pieces(small))
    assert again.cid == first.cid
    fresh = LocalContentStore(root)
    assert await _read(fresh, again.cid) == small
    assert await _read(fresh, kept.cid) == _data(10_000, b"kept")


async def test_gc_spares_young_packs_and_blocks_an_upload_references(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    store = LocalContentStore(root)
    data = _data(3 * CHUNK)
    stored = await store.put(_pieces(data))
    past = 1.0
    for idx in _packs(root, "idx"):
        os.utime(idx, (past, past))
    await store.put(_pieces(data))  # a re-upload references the old blocks: their grace anew
    store2 = LocalContentStore(root)
    assert (await store2.gc(older_than=100.0)).removed_blocks == 0
    assert await _read(store2, stored.cid) == data


async def test_concurrent_uploads_of_different_and_same_bytes(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    store = LocalContentStore(root)
    datas = [_data(5 * CHUNK + i % 3, bytes([i % 3])) for i in range(6)]
    results = await asyncio.gather(*(store.put(_pieces(d, 100_000)) for d in datas))
    assert results[0] == results[3] and results[1] == results[4]
    fresh = LocalContentStore(root)
    for data, stored in zip(datas, results, strict=True):
        assert await _read(fresh, stored.cid) == data
    for stored in results[:3]:
        await fresh.pin(stored.cid)
    await fresh.gc(older_than=None)  # the duplicate copies go, one copy of each stays
    for data, stored in zip(datas[:3], results[:3], strict=True):
        assert await _read(LocalContentStore(root), stored.cid) == data
    assert await _read(store, results[0].cid) == datas[0]


async def test_gc_during_an_upload_never_leaves_it_stored_with_blocks_missing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "blocks"
    server = LocalContentStore(root)
    old = _data(32 * CHUNK, b"old")  # four batches
    new = _data(3 * CHUNK, b"new")
    await server.put(_pieces(old))  # unpinned: GC may take it, unless an upload uses it
    upload, gate = await _upload_paused_after(server, old, new)
    await _journaled(root, 24)  # the batches before the last are appended (as references)
    report = await LocalContentStore(root, compact_below=1.0).gc(older_than=None)
    assert report.removed_blocks > 0  # what the upload had not reached yet, and old's root
    gate.set()
    stored = await upload
    assert await _read(LocalContentStore(root), stored.cid) == old + new
    assert not _packs(root, "refs")


async def test_readers_never_miss_a_live_block_while_gc_compacts(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    server = LocalContentStore(root)
    one = _data(6 * CHUNK, b"one")
    for i in range(4):  # packs half dead: GC rewrites each
        await server.put(_pieces(one[: (i + 3) * CHUNK] + _data(6 * CHUNK, bytes([i]))))
    pinned = await server.put(_pieces(one), pin=True)
    stop = False
    reads = 0

    async def reader() -> None:
        nonlocal reads
        while not stop:
            assert await _read(server, pinned.cid) == one
            reads += 1

    task = asyncio.create_task(reader())
    for _ in range(3):
        await LocalContentStore(root, compact_below=0.9).gc(older_than=None)
        await until(lambda done=reads: reads > done)  # one whole read between compactions
    stop = True
    await task
    assert reads > 0
    assert await _read(LocalContentStore(root), pinned.cid) == one


async def test_a_failed_upload_leaves_no_pack(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    store = LocalContentStore(root)

    async def failing() -> AsyncIterator[bytes]:
        yield _data(5 << 20)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await store.put(failing())
    assert not list((root / "packs").iterdir())


async def test_an_upload_whose_referenced_blocks_gc_took_fails_instead_of_storing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "blocks"
    server = LocalContentStore(root)
    old = _data(32 * CHUNK, b"old")
    await server.put(_pieces(old))
    upload, gate = await _upload_paused_after(server, old)
    await _journaled(root, 24)
    for journal in _packs(root, "refs"):  # as if GC had read the journals just before
        journal.unlink()
    await LocalContentStore(root).gc(older_than=None)
    gate.set()
    with pytest.raises(StoreFailed):
        await upload
    assert not list((root / "packs").iterdir())

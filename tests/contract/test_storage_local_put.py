"""The local store's batched upload path: batches joined off the loop, hashed in two threads,
appended to the upload's pack. CIDs must stay the importer's whatever the piece sizes."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from parity.core.storage.importer import FileImporter
from parity.storage import local
from parity.storage.local import LocalContentStore


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

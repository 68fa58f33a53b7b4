"""GC merges the local store's small packs (one per small upload): what is merged and what is
left alone, the durable protocol across crashes, and readers during a merge."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

from parity.core.storage.importer import FileImporter
from parity.core.storage.multiformats import Cid
from parity.storage import packgc
from parity.storage.errors import ContentNotFound
from parity.storage.local import LocalContentStore
from parity.storage.packs import PackIndex, PackMeta
from parity.storage.ports import Stored
from tests.contract.test_storage_packs import (
    CHUNK,
    _data,
    _journaled,
    _packs,
    _pieces,
    _read,
    _upload_paused_after,
)

PAST = 1.0  # index times set back to here are older than the cutoff below
CUTOFF = 100.0


def _block_cids(data: bytes) -> list[Cid]:
    importer = FileImporter(with_cidv0=False)
    blocks = importer.write(data)
    tail, _ = importer.finish()
    return [b.cid for b in blocks + tail]


def _age(root: Path) -> None:
    """Every committed pack so far is older than CUTOFF."""
    for idx in _packs(root, "idx"):
        os.utime(idx, (PAST, PAST))


def _entries_on_disk(root: Path) -> list[str]:
    """Every key the committed packs hold, once per copy."""
    index = PackIndex(root / "packs")
    index.rebuild()
    return [key for meta in index.packs.values() for key, _, _ in meta.entries]


async def _upload_small_files(store: LocalContentStore, count: int) -> list[tuple[bytes, Stored]]:
    out = []
    for i in range(count):  # 128 KiB to ~570 KiB: one to three blocks each
        data = _data(CHUNK // 2 + i * 9000, i.to_bytes(2, "big"))
        out.append((data, await store.put(_pieces(data), pin=True)))
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "blocks"


async def test_gc_merges_many_small_packs_into_one_keeping_live_roots_only(root: Path) -> None:
    server = LocalContentStore(root)
    files = await _upload_small_files(server, 50)
    for _, stored in files[:5]:  # deleted by their owners
        await server.unpin(stored.cid)
    assert len(_packs(root, "pack")) == len(_packs(root, "idx")) == 50
    _age(root)
    report = await LocalContentStore(root).gc(older_than=CUTOFF)
    assert report.merged_packs == 45  # the five unpinned packs were removed, not merged
    assert report.removed_blocks == sum(len(_block_cids(d)) for d, _ in files[:5])
    assert len(_packs(root, "pack")) == len(_packs(root, "idx")) == 1
    for store in (server, LocalContentStore(root)):  # the server's index and a fresh one
        for data, stored in files[5:]:
            assert await store.stat(stored.cid) == len(data)
            assert await _read(store, stored.cid) == data
            assert _block_cids(data)[-1] == stored.cid  # the root: same CID as uploaded
        for data, stored in files[:5]:
            assert await store.stat(stored.cid) is None
            for cid in _block_cids(data):
                with pytest.raises(ContentNotFound):
                    await store.get_block(cid)
    keys = _entries_on_disk(root)
    assert len(keys) == len(set(keys))


async def test_merged_packs_stay_under_the_target_size(root: Path) -> None:
    server = LocalContentStore(root)
    files = await _upload_small_files(server, 20)
    _age(root)
    target = 1 << 20
    report = await LocalContentStore(root, merge_target=target).gc(older_than=CUTOFF)
    packs = _packs(root, "pack")
    assert report.merged_packs >= 19  # a last one left alone has nothing to merge with
    assert 4 <= len(packs) <= 6  # about 4.3 MB of blocks
    assert all(p.stat().st_size <= target for p in packs)
    fresh = LocalContentStore(root)
    for data, stored in files:
        assert await _read(fresh, stored.cid) == data


async def test_gc_merges_nothing_when_merging_is_off(root: Path) -> None:
    server = LocalContentStore(root)
    await _upload_small_files(server, 5)
    _age(root)
    report = await LocalContentStore(root, merge_below=0).gc(older_than=CUTOFF)
    assert report.merged_packs == 0
    assert len(_packs(root, "pack")) == 5


async def test_gc_leaves_packs_younger_than_the_cutoff_alone(root: Path) -> None:
    server = LocalContentStore(root)
    old = await _upload_small_files(server, 6)
    _age(root)
    young = [
        (d, await server.put(_pieces(d), pin=True))
        for d in (_data(CHUNK + i, b"young" + bytes([i])) for i in range(4))
    ]
    before = {p.name: p.stat().st_mtime for p in _packs(root, "idx")}
    report = await LocalContentStore(root).gc(older_than=CUTOFF)
    assert report.merged_packs == 6
    after = {p.name: p.stat().st_mtime for p in _packs(root, "idx")}
    kept = {n: t for n, t in before.items() if t >= CUTOFF}
    assert len(kept) == 4 and kept.items() <= after.items()  # untouched
    assert len(after) == 5  # and one merged pack for the six old ones
    for data, stored in old + young:
        assert await _read(server, stored.cid) == data


async def test_gc_leaves_a_committed_pack_an_upload_still_holds_alone(root: Path) -> None:
    server = LocalContentStore(root)
    files = await _upload_small_files(server, 4)
    _age(root)
    held = _packs(root, "pack")[1]
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as an upload does until it has closed its pack
        report = await LocalContentStore(root).gc(older_than=CUTOFF)
    finally:
        os.close(fd)
    assert report.merged_packs == 3
    assert held.exists() and held.with_suffix(".idx").exists()
    assert len(_packs(root, "pack")) == 2
    for data, stored in files:
        assert await _read(LocalContentStore(root), stored.cid) == data


async def test_a_running_upload_keeps_its_pack_and_the_blocks_it_references(root: Path) -> None:
    server = LocalContentStore(root, merge_below=16 << 20)
    files = await _upload_small_files(server, 3)
    old = _data(32 * CHUNK, b"old")  # four batches, unpinned
    new = _data(3 * CHUNK, b"new")
    await server.put(_pieces(old))
    upload, gate = await _upload_paused_after(server, old, new)
    await _journaled(root, 24)  # old's blocks the upload has reached, noted as references
    (running,) = [p for p in _packs(root, "pack") if not p.with_suffix(".idx").exists()]
    report = await LocalContentStore(root, merge_below=16 << 20).gc(older_than=None)
    assert report.merged_packs == 4
    assert running.exists()
    assert len(_packs(root, "idx")) == 1
    gate.set()
    stored = await upload
    fresh = LocalContentStore(root)
    assert await _read(fresh, stored.cid) == old + new
    for data, pinned in files:
        assert await _read(fresh, pinned.cid) == data


class _Crash(BaseException):
    """The process dies here (nothing after it runs, cleanup included)."""


@pytest.mark.parametrize("removed_before_crash", [0, 3])
async def test_a_crash_after_the_merged_pack_is_committed_loses_nothing_and_gc_converges(
    root: Path, monkeypatch: pytest.MonkeyPatch, removed_before_crash: int
) -> None:
    server = LocalContentStore(root)
    files = await _upload_small_files(server, 8)
    _age(root)
    drop = packgc._drop
    dropped: list[str] = []

    def dies_while_removing(index: PackIndex, meta: PackMeta) -> int:
        if len(dropped) == removed_before_crash:
            raise _Crash
        dropped.append(meta.name)
        return drop(index, meta)

    monkeypatch.setattr(packgc, "_drop", dies_while_removing)
    with pytest.raises(_Crash):
        await LocalContentStore(root).gc(older_than=CUTOFF)
    monkeypatch.undo()
    assert len(_packs(root, "idx")) == 8 - removed_before_crash + 1  # the merged one too
    keys = _entries_on_disk(root)
    assert len(keys) > len(set(keys))  # some blocks twice, which readers tolerate
    for store in (server, LocalContentStore(root)):
        for data, stored in files:
            assert await _read(store, stored.cid) == data
    await LocalContentStore(root).gc(older_than=None)
    keys = _entries_on_disk(root)
    assert len(keys) == len(set(keys))
    assert len(_packs(root, "pack")) == len(_packs(root, "idx")) == 1
    for store in (server, LocalContentStore(root)):
        for data, stored in files:
            assert await _read(store, stored.cid) == data


async def test_a_crash_before_the_merged_index_is_durable_leaves_the_old_packs_serving(
    root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = LocalContentStore(root)
    files = await _upload_small_files(server, 6)
    _age(root)
    saved = tmp_path / "saved.pack"
    left: list[Path] = []

    def dies_while_indexing(path: Path, data: bytes) -> None:
        pack = path.with_suffix(".pack")
        shutil.copyfile(pack, saved)  # what the disk holds when the process dies
        left.append(pack)
        path.with_name(path.name + ".tmp").write_bytes(data[: len(data) // 2])
        raise _Crash

    monkeypatch.setattr(packgc, "write_file_durably", dies_while_indexing)
    with pytest.raises(_Crash):
        await LocalContentStore(root).gc(older_than=CUTOFF)
    monkeypatch.undo()
    (partial,) = left
    shutil.copyfile(saved, partial)  # the process died before its cleanup removed it
    assert len(_packs(root, "pack")) == 7 and len(_packs(root, "idx")) == 6
    assert _packs(root, "tmp")
    for store in (server, LocalContentStore(root)):
        for data, stored in files:
            assert await _read(store, stored.cid) == data
    report = await LocalContentStore(root).gc(older_than=None)
    assert report.merged_packs == 6
    assert not partial.exists() and not _packs(root, "tmp")
    assert len(_packs(root, "pack")) == len(_packs(root, "idx")) == 1
    for data, stored in files:
        assert await _read(LocalContentStore(root), stored.cid) == data


async def test_a_reader_that_opened_an_old_pack_keeps_reading_it(root: Path) -> None:
    server = LocalContentStore(root)
    files = await _upload_small_files(server, 5)
    _age(root)
    (key, offset, length), pack = _first_record(root)
    fd = os.open(pack, os.O_RDONLY)
    try:
        report = await LocalContentStore(root).gc(older_than=CUTOFF)
        assert report.merged_packs == 5 and not pack.exists()
        assert os.pread(fd, length, offset) == files[0][0][:length]
    finally:
        os.close(fd)
    assert key == _block_cids(files[0][0])[0].block_key


async def test_a_merge_verifies_the_bytes_it_copies_and_leaves_a_corrupt_block_out(
    root: Path,
) -> None:
    server = LocalContentStore(root)
    files = await _upload_small_files(server, 4)
    _age(root)
    (key, offset, length), pack = _first_record(root)
    with open(pack, "r+b") as fh:  # bit rot in the first file's only block
        fh.seek(offset + length // 2)
        byte = fh.read(1)
        fh.seek(offset + length // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    report = await LocalContentStore(root).gc(older_than=CUTOFF)
    assert report.merged_packs == 4
    fresh = LocalContentStore(root)
    assert await fresh.stat(files[0][1].cid) is None  # not copied as if it were sound
    assert key not in _entries_on_disk(root)
    for data, stored in files[1:]:
        assert await _read(fresh, stored.cid) == data


def _first_record(root: Path) -> tuple[tuple[str, int, int], Path]:
    index = PackIndex(root / "packs")
    index.rebuild()
    first = min(index.packs.values(), key=lambda m: m.name)
    return first.entries[0], index.pack_path(first.name)


async def test_a_download_under_way_during_a_merge_reads_every_byte(root: Path) -> None:
    merging = 16 << 20  # files of several read batches still count as small here
    server = LocalContentStore(root, merge_below=merging)
    datas = [_data(40 * CHUNK + i, bytes([i])) for i in range(3)]
    stored = [await server.put(_pieces(d), pin=True) for d in datas]
    _age(root)
    packs = _packs(root, "pack")
    downloads = [server.cat(s.cid) for s in stored]
    got = [[await anext(d)] for d in downloads]  # each has started reading its pack
    report = await LocalContentStore(root, merge_below=merging).gc(older_than=CUTOFF)
    assert report.merged_packs == 3
    assert not any(p.exists() for p in packs)
    for download, pieces in zip(downloads, got, strict=True):
        pieces += [p async for p in download]
    assert [b"".join(p) for p in got] == datas

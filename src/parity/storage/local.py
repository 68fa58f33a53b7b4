"""The embedded content store: a blockstore on local disk, keyed by multihash.

Layout under ``root`` (default ``$PARITY_HOME/blocks``)::

    <xy>/<key>        one block per file; key = base32 of the multihash, xy = key[-3:-1]
                      (kubo's flatfs "next-to-last/2" sharding)
    .pins/<cidv1>     one empty file per pinned root
    .tmp/             blocks being written (renamed into place, so a block is whole or absent)

Blocks are written with the importer in :mod:`parity.core.storage.importer`, so CIDs equal
kubo's. Disk work runs in worker threads, one batch behind the network, so receiving overlaps
hashing and writing and memory stays at about two batches. Each batch is joined once, hashed
for the CIDv1 and the CIDv0 tree in two threads at once (hashlib releases the GIL), then its
blocks are written by two threads at once: creating a file is the costliest step per block on
common filesystems, and spreading it keeps both cores busy while the event loop receives.

Blocks are not fsynced one by one (a block is whole or absent thanks to the rename; durability
is the filesystem's, as for kubo's flatfs without ``sync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Collection, Iterator
from pathlib import Path
from typing import Any

from parity.core.storage import reader
from parity.core.storage.importer import Block, CidV0Hasher, FileImporter, ImportResult
from parity.core.storage.multiformats import DAG_PB, RAW, Cid, CidError
from parity.storage.errors import ContentNotFound, NotAFile
from parity.storage.ports import GcReport, Stored

BATCH_BYTES = 2 << 20  # received bytes handed to the worker threads at a time (8 chunks)
WRITERS = 2  # threads writing one batch's blocks at once
READ_BATCH_BYTES = 4 << 20  # file bytes read by a worker thread at a time
SEND_BYTES = 1 << 20  # size of the pieces a download yields
_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class LocalContentStore:
    kind = "local"

    def __init__(self, root: Path, *, with_cidv0: bool = True) -> None:
        self.root = root
        self.with_cidv0 = with_cidv0
        self._pins = root / ".pins"
        self._tmp = root / ".tmp"
        self._root_str = str(root)
        self._tmp_str = str(self._tmp)

    # -- paths and single blocks (called in worker threads)

    def _path(self, cid: Cid) -> Path:
        key = cid.block_key
        return self.root / key[-3:-1] / key

    def _ensure_dirs(self) -> None:
        for d in (self.root, self._pins, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    def _write_block(self, block: Block) -> None:
        key = block.cid.block_key
        path = os.path.join(self._root_str, key[-3:-1], key)
        try:
            os.utime(path)  # already stored: refresh its age so GC's grace covers this upload
            return
        except FileNotFoundError:
            pass
        tmp = os.path.join(self._tmp_str, f"{key}.{secrets.token_hex(6)}")
        fd = os.open(tmp, _O_CREATE, 0o666)
        try:
            view = memoryview(block.data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except FileNotFoundError:  # the first block of its shard: make the directory
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.replace(tmp, path)

    def _write_blocks(self, blocks: list[Block]) -> None:
        for block in blocks:
            self._write_block(block)

    def _read_block(self, cid: Cid) -> bytes:
        try:
            return self._path(cid).read_bytes()
        except FileNotFoundError:
            raise ContentNotFound(f"block {cid} is not in the local store") from None

    def _has(self, cid: Cid) -> bool:
        return self._path(cid).is_file()

    # -- put

    @staticmethod
    def _import(
        importer: FileImporter, data: bytes, last: bool
    ) -> tuple[list[Block], ImportResult | None]:
        blocks = importer.write(data)
        if not last:
            return blocks, None
        tail, result = importer.finish()
        return blocks + tail, result

    @staticmethod
    def _hash_v0(v0: CidV0Hasher, data: bytes, last: bool) -> Cid | None:
        v0.write(data)
        return v0.finish() if last else None

    async def _absorb(
        self, importer: FileImporter, v0: CidV0Hasher | None, pieces: list[bytes], last: bool
    ) -> tuple[ImportResult | None, Cid | None]:
        """Hash one batch (CIDv1 blocks and the CIDv0 tree in two threads), then write its
        blocks (in ``WRITERS`` threads). Returns the results after the last batch."""
        if len(pieces) == 1 and type(pieces[0]) is bytes:
            data = pieces[0]
        else:  # one copy, off the event loop; the blocks are views into it (no more copies)
            data = await asyncio.to_thread(b"".join, pieces)
        pieces.clear()  # the caller hands the list over: hold the bytes once, not twice
        imported = asyncio.to_thread(self._import, importer, data, last)
        cid_v0: Cid | None = None
        if v0 is None:
            blocks, result = await imported
        else:
            (blocks, result), cid_v0 = await asyncio.gather(
                imported, asyncio.to_thread(self._hash_v0, v0, data, last)
            )
        if len(blocks) < 2 * WRITERS:
            await asyncio.to_thread(self._write_blocks, blocks)
        else:
            await asyncio.gather(
                *(asyncio.to_thread(self._write_blocks, blocks[i::WRITERS]) for i in range(WRITERS))
            )
        return result, cid_v0

    async def put(self, chunks: AsyncIterable[bytes], *, pin: bool = False) -> Stored:
        importer = FileImporter(with_cidv0=False)
        v0 = CidV0Hasher() if self.with_cidv0 else None
        await asyncio.to_thread(self._ensure_dirs)
        pending: asyncio.Future[Any] | None = None
        pieces: list[bytes] = []
        buffered = 0
        try:
            async for piece in chunks:
                if not piece:
                    continue
                pieces.append(piece)
                buffered += len(piece)
                if buffered >= BATCH_BYTES:
                    if pending is not None:
                        await pending
                    pending = asyncio.ensure_future(self._absorb(importer, v0, pieces, False))
                    pieces, buffered = [], 0
            if pending is not None:
                await pending
            pending = None
            result, cid_v0 = await self._absorb(importer, v0, pieces or [b""], True)
        finally:
            if pending is not None:
                with contextlib.suppress(Exception):
                    await pending
        assert result is not None
        if pin:
            await asyncio.to_thread(self._pin_file(result.cid).touch)
        return Stored(result.cid, result.size, cid_v0)

    # -- read

    def _stat(self, cid: Cid) -> int | None:
        path = self._path(cid)
        try:
            if cid.codec == RAW:
                return path.stat().st_size
            block = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return reader.file_size(cid, block)
        except reader.NotAFile as exc:
            raise NotAFile(str(exc)) from None

    async def stat(self, cid: Cid) -> int | None:
        return await asyncio.to_thread(self._stat, cid)

    async def get_block(self, cid: Cid) -> bytes:
        """One block's bytes (not part of the port; the fake kubo node in the tests uses it)."""
        return await asyncio.to_thread(self._read_block, cid)

    async def cat(self, cid: Cid, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        pieces = reader.iter_file(self._read_block, cid, start, end)

        def pull() -> list[bytes]:
            # Blocks are joined into SEND_BYTES pieces here, in the worker thread, so that the
            # event loop sends a few large writes instead of one per 256 KiB block.
            out: list[bytes] = []
            group: list[bytes] = []
            grouped = size = 0
            try:
                for piece in pieces:
                    group.append(piece)
                    grouped += len(piece)
                    if grouped >= SEND_BYTES:
                        out.append(group[0] if len(group) == 1 else b"".join(group))
                        size += grouped
                        group, grouped = [], 0
                        if size >= READ_BATCH_BYTES:
                            break
            except reader.NotAFile as exc:
                raise NotAFile(str(exc)) from None
            if group:
                out.append(group[0] if len(group) == 1 else b"".join(group))
            return out

        while True:
            batch = await asyncio.to_thread(pull)
            if not batch:
                return
            for piece in batch:
                yield piece

    # -- pins

    def _pin_file(self, cid: Cid) -> Path:
        return self._pins / cid.to_v1().encode()

    def _walk(self, root: Cid) -> Iterator[Cid]:
        """Every CID under ``root`` that is stored (a missing block ends its branch)."""
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid.codec == RAW:
                if self._has(cid):
                    yield cid
                continue
            try:
                block = self._path(cid).read_bytes()
            except FileNotFoundError:
                continue
            yield cid
            if cid.codec == DAG_PB:
                with contextlib.suppress(reader.NotAFile):
                    stack.extend(reader.child_cids(cid, block))

    def _missing(self, root: Cid) -> Cid | None:
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid.codec == RAW:
                if not self._has(cid):
                    return cid
                continue
            try:
                block = self._path(cid).read_bytes()
            except FileNotFoundError:
                return cid
            try:
                stack.extend(reader.child_cids(cid, block))
            except reader.NotAFile as exc:
                raise NotAFile(str(exc)) from None
        return None

    def _pin(self, cid: Cid) -> None:
        missing = self._missing(cid)
        if missing is not None:
            what = "is not" if missing == cid else f"is incomplete (block {missing} missing)"
            raise ContentNotFound(f"{cid} {what} in the local store")
        self._ensure_dirs()
        self._pin_file(cid).touch()

    async def pin(self, cid: Cid) -> None:
        await asyncio.to_thread(self._pin, cid)

    async def unpin(self, cid: Cid) -> None:
        await asyncio.to_thread(self._pin_file(cid).unlink, missing_ok=True)

    def _list_pins(self) -> set[Cid]:
        out: set[Cid] = set()
        if not self._pins.is_dir():
            return out
        for entry in self._pins.iterdir():
            with contextlib.suppress(CidError):
                out.add(Cid.parse(entry.name).to_v1())
        return out

    async def pins(self) -> set[Cid]:
        return await asyncio.to_thread(self._list_pins)

    # -- garbage collection

    def _gc(self, keep: Collection[Cid], older_than: float | None) -> GcReport:
        live: set[str] = set()
        for root in self._list_pins() | {c.to_v1() for c in keep}:
            live.update(c.block_key for c in self._walk(root))
        removed = 0
        freed = 0
        if not self.root.is_dir():
            return GcReport(0, 0)
        for shard in self.root.iterdir():
            if shard.name.startswith(".") or not shard.is_dir():
                continue
            for path in shard.iterdir():
                if path.name in live:
                    continue
                st = path.stat()
                if older_than is not None and st.st_mtime >= older_than:
                    continue
                path.unlink(missing_ok=True)
                removed += 1
                freed += st.st_size
        if self._tmp.is_dir():
            for path in self._tmp.iterdir():
                if older_than is None or path.stat().st_mtime < older_than:
                    path.unlink(missing_ok=True)
        return GcReport(removed, freed)

    async def gc(self, *, keep: Collection[Cid] = (), older_than: float | None = None) -> GcReport:
        return await asyncio.to_thread(self._gc, keep, older_than)

    async def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.root), "reachable": True}

    async def aclose(self) -> None:
        return None

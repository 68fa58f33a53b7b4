"""The embedded content store: a blockstore on local disk, keyed by multihash.

Layout under ``root`` (default ``$PARITY_HOME/blocks``)::

    packs/        the blocks, packed: one pack per upload (small uploads that arrive together
                  share one) plus its index (:mod:`.packs`); GC merges small ones
                  (:mod:`.packgc`)
    .pins/<cidv1> one empty file per pinned root
    .gc.lock      GC holds it exclusively; an upload holds it shared while it commits

Blocks are written with the importer in :mod:`parity.core.storage.importer`, so CIDs equal
kubo's. Disk work runs in worker threads behind the network: while the loop receives a batch,
the one before is hashed and the one before that is written, so memory stays at about three
batches. Each batch is joined once, hashed for the CIDv1 and the CIDv0 tree in two threads at
once (hashlib releases the GIL), then its new blocks are appended to the upload's pack with one
``writev`` (:mod:`.packwriter`): no file is created per block. The pack is written back in
the background every ``SYNC_BYTES`` and fsynced once at the end, before its index is written
and the upload is reported stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterable, AsyncIterator, Collection, Iterator
from pathlib import Path
from typing import Any

from parity.core.storage import reader
from parity.core.storage.importer import Block, CidV0Hasher, FileImporter, ImportResult
from parity.core.storage.multiformats import DAG_PB, RAW, Cid, CidError
from parity.storage.errors import ContentNotFound, NotAFile
from parity.storage.groupcommit import SmallPuts
from parity.storage.packgc import Swept, Thresholds, sweep_packs
from parity.storage.packs import PackIndex, flocked
from parity.storage.packwriter import PackWriter
from parity.storage.ports import GcReport, Stored

BATCH_BYTES = 2 << 20  # received bytes handed to the worker threads at a time (8 chunks)
SYNC_BYTES = 32 << 20  # written pack bytes after which a background write-back starts
READ_BATCH_BYTES = 4 << 20  # file bytes read by a worker thread at a time
SEND_BYTES = 1 << 20  # size of the pieces a download yields
COMPACT_BELOW = 0.5  # GC rewrites an old pack when less than this fraction of its bytes live
MERGE_BELOW = 4 << 20  # GC merges old packs smaller than this (one per small upload) ...
MERGE_TARGET = 64 << 20  # ... into packs of up to this size


class LocalContentStore:
    kind = "local"

    def __init__(
        self,
        root: Path,
        *,
        with_cidv0: bool = True,
        compact_below: float = COMPACT_BELOW,
        merge_below: int = MERGE_BELOW,
        merge_target: int = MERGE_TARGET,
    ) -> None:
        self.root = root
        self.with_cidv0 = with_cidv0
        self.gc_limits = Thresholds(compact_below, merge_below, merge_target)
        self._pins = root / ".pins"
        self._gc_lock = root / ".gc.lock"
        self.packs = PackIndex(root / "packs")
        self.small_puts = SmallPuts(self._put_batch)

    # -- single blocks (called in worker threads)

    def _ensure_dirs(self) -> None:
        for d in (self.root, self._pins, self.packs.dir):
            d.mkdir(parents=True, exist_ok=True)

    def _block(self, cid: Cid) -> bytes | None:
        return self.packs.read(cid.block_key)

    def _read_block(self, cid: Cid) -> bytes:
        data = self._block(cid)
        if data is None:
            raise ContentNotFound(f"block {cid} is not in the local store")
        return data

    def _has(self, cid: Cid) -> bool:
        return self.packs.locate(cid.block_key) is not None

    def _size(self, cid: Cid) -> int | None:
        found = self.packs.locate(cid.block_key)
        return None if found is None else found[2]

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
    ) -> tuple[list[Block], ImportResult | None, Cid | None]:
        """Hash one batch (CIDv1 blocks and the CIDv0 tree in two threads). Returns its blocks,
        and the results after the last batch."""
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
        return blocks, result, cid_v0

    def _open_writer(self) -> PackWriter:
        # No look at the pack directory here (it grows with the number of packs, and every
        # put would pay for it): a block this process knows of is checked to still be on disk
        # before it is relied on (PackWriter.add), and the commit checks every block it relies
        # on again under the GC lock.
        self._ensure_dirs()
        return PackWriter(self.packs, self._gc_lock)

    async def put(self, chunks: AsyncIterable[bytes], *, pin: bool = False) -> Stored:
        """An upload that ends within one batch is stored by one call (a model update of a few
        KB would otherwise cross threads half a dozen times; on the loop's thread while such
        writes are fast), together with the small uploads that arrive while another is being
        written (:mod:`.groupcommit`); a larger one streams through :meth:`_put_stream`."""
        head: list[bytes] = []
        size = 0
        iterator = aiter(chunks)
        while size < BATCH_BYTES:
            try:
                piece = await anext(iterator)
            except StopAsyncIteration:
                return await self.small_puts.put(b"".join(head), pin)
            head.append(piece)
            size += len(piece)
        return await self._put_stream(_prepend(head, iterator), pin=pin)

    def _put_batch(self, items: list[tuple[bytes, bool]], *, wait: bool = True) -> list[Stored]:
        """The stages of :meth:`_put_stream` in order, in the calling thread, for each of
        ``items`` (``(data, pin)``), into one pack committed once. ``wait=False`` (on the
        event loop's thread): ``BlockingIOError`` rather than waiting for a running GC."""
        writer = self._open_writer()
        out: list[Stored] = []
        try:
            for data, _ in items:
                blocks, result = self._import(FileImporter(with_cidv0=False), data, True)
                cid_v0 = self._hash_v0(CidV0Hasher(), data, True) if self.with_cidv0 else None
                writer.add(blocks)
                assert result is not None
                out.append(Stored(result.cid, result.size, cid_v0))
            writer.commit(wait=wait)
        except BaseException:
            writer.abort()
            raise
        for (_, pin), stored in zip(items, out, strict=True):
            if pin:
                self._pin_file(stored.cid).touch()
        return out

    async def _put_stream(self, chunks: AsyncIterable[bytes], *, pin: bool) -> Stored:
        """Three stages run at once: the loop receives batch n+2 while batch n+1 is hashed and
        batch n is appended to the pack (each stage in order, one batch at a time)."""
        importer = FileImporter(with_cidv0=False)
        v0 = CidV0Hasher() if self.with_cidv0 else None
        writer = await asyncio.to_thread(self._open_writer)
        hashing: asyncio.Future[Any] | None = None
        writing: asyncio.Future[Any] | None = None
        syncing: asyncio.Future[Any] | None = None

        async def hand_over() -> None:  # the hashed batch goes to the writer stage
            nonlocal hashing, writing, syncing
            assert hashing is not None
            blocks = (await hashing)[0]
            hashing = None
            if writing is not None:
                await writing
            if writer.unsynced >= SYNC_BYTES and (syncing is None or syncing.done()):
                syncing = asyncio.ensure_future(asyncio.to_thread(writer.flush))
            writing = asyncio.ensure_future(asyncio.to_thread(writer.add, blocks))

        pieces: list[bytes] = []
        buffered = 0
        try:
            try:
                async for piece in chunks:
                    if not piece:
                        continue
                    pieces.append(piece)
                    buffered += len(piece)
                    if buffered >= BATCH_BYTES:
                        if hashing is not None:
                            await hand_over()
                        hashing = asyncio.ensure_future(self._absorb(importer, v0, pieces, False))
                        pieces, buffered = [], 0
                if hashing is not None:
                    await hand_over()
                hashing = asyncio.ensure_future(self._absorb(importer, v0, pieces or [b""], True))
                _, result, cid_v0 = await hashing
                await hand_over()
                for fut in (writing, syncing):
                    if fut is not None:
                        await fut
                await asyncio.to_thread(writer.commit)
            finally:
                for fut in (hashing, writing, syncing):
                    if fut is not None:
                        with contextlib.suppress(Exception):
                            await fut
        except BaseException:
            await asyncio.shield(asyncio.to_thread(writer.abort))
            raise
        assert result is not None
        if pin:
            await asyncio.to_thread(self._pin_file(result.cid).touch)
        return Stored(result.cid, result.size, cid_v0)

    # -- read

    def _stat(self, cid: Cid) -> int | None:
        if cid.codec == RAW:
            return self._size(cid)
        block = self._block(cid)
        if block is None:
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
            block = self._block(cid)
            if block is None:
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
            block = self._block(cid)
            if block is None:
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
        if not self.root.is_dir():
            return GcReport(0, 0, 0, 0)
        self._ensure_dirs()
        with flocked(self._gc_lock, fcntl.LOCK_EX):
            self.packs.rebuild()
            live: set[str] = set()
            for root in self._list_pins() | {c.to_v1() for c in keep}:
                live.update(c.block_key for c in self._walk(root))
            out = Swept()
            sweep_packs(self.packs, live, older_than, self.gc_limits, out)
        return GcReport(out.removed, out.freed, out.compacted, out.merged)

    async def gc(self, *, keep: Collection[Cid] = (), older_than: float | None = None) -> GcReport:
        return await asyncio.to_thread(self._gc, keep, older_than)

    async def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.root), "reachable": True}

    async def aclose(self) -> None:
        await self.small_puts.aclose()


async def _prepend(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The pieces already read, then the rest of the upload."""
    for piece in head:
        yield piece
    async for piece in rest:
        yield piece

"""One upload's pack: its new blocks appended in order, committed once at the end.

The writer holds an exclusive ``flock`` on its pack while the upload runs (GC never touches a
locked pack). Blocks already stored (in a committed pack or earlier in this upload) are not
written again; their keys go to the ``.refs`` journal so GC spares them while the upload runs,
and into the index as references so GC's grace period covers them after. :meth:`commit` fsyncs
the pack, then, under the store's GC lock (shared), checks that the pack and every referenced
block are still there, writes the index durably and adds it to the in-memory index; only then
is the upload reported stored.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from parity.core.storage.importer import Block
from parity.storage.errors import StoreFailed
from parity.storage.packs import (
    O_CLOEXEC,
    PACK_MAGIC,
    PackIndex,
    PackMeta,
    encode_index,
    flocked,
    new_name,
    record_header,
    write_all,
    write_file_durably,
)


class PackWriter:
    def __init__(self, index: PackIndex, gc_lock: Path) -> None:
        self.index = index
        self.gc_lock = gc_lock
        self.name = new_name()
        self.path = index.pack_path(self.name)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o644)
        self._refs_fd: int | None = None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            write_all(self.fd, [PACK_MAGIC])
        except BaseException:
            self.abort()
            raise
        self.size = len(PACK_MAGIC)
        self.entries: list[tuple[str, int, int]] = []
        self._own: set[str] = set()
        self.refs: list[str] = []
        self._refset: set[str] = set()
        self.unsynced = 0

    def add(self, blocks: list[Block]) -> None:
        """Append the blocks not stored yet (one ``writev``), note the others (worker thread)."""
        bufs: list[bytes | memoryview] = []
        new_refs: list[str] = []
        at = self.size
        for block in blocks:
            key = block.cid.block_key
            if key in self._own or key in self._refset:
                continue
            # A copy this process knows of is checked to still be on disk (GC elsewhere).
            stored = self.index.get(key) is not None and self.index.locate(key) is not None
            if stored:
                self._refset.add(key)
                self.refs.append(key)
                new_refs.append(key)
                continue
            length = len(block.data)
            header = record_header(key, length)
            bufs += [header, block.data]
            self.entries.append((key, at + len(header), length))
            self._own.add(key)
            at += len(header) + length
        if new_refs:
            if self._refs_fd is None:
                path = self.index.dir / f"{self.name}.refs"
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | O_CLOEXEC
                self._refs_fd = os.open(path, flags, 0o644)
            os.write(self._refs_fd, "".join(k + "\n" for k in new_refs).encode("ascii"))
        if bufs:
            write_all(self.fd, bufs)
            self.unsynced += at - self.size
            self.size = at

    def flush(self) -> None:
        """Write back what is written so far (called in the background every few dozen MiB,
        so that the final fsync has only the tail left)."""
        self.unsynced = 0
        os.fdatasync(self.fd)

    def commit(self, *, wait: bool = True) -> None:
        """Make the pack durable and index it. ``wait=False``: raise ``BlockingIOError`` at
        once, instead of waiting, when a GC holds the store's lock (the caller then aborts
        and retries where waiting is harmless)."""
        os.fsync(self.fd)
        mode = fcntl.LOCK_SH if wait else fcntl.LOCK_SH | fcntl.LOCK_NB
        with flocked(self.gc_lock, mode):
            if os.fstat(self.fd).st_nlink == 0:
                raise StoreFailed("the upload's pack was removed by a concurrent GC; retry")
            if self.refs:
                self.index.refresh()
                missing = [k for k in self.refs if self.index.get(k) is None]
                if missing:
                    raise StoreFailed(
                        f"{len(missing)} block(s) this upload relied on were removed by a "
                        "concurrent GC; retry the upload"
                    )
            idx = self.index.dir / f"{self.name}.idx"
            write_file_durably(idx, encode_index(self.size, self.entries, self.refs))
            meta = PackMeta(self.name, self.size, idx.stat().st_mtime, self.entries, self.refs)
            self.index.add(meta)
        self._close()

    def _close(self) -> None:
        if self._refs_fd is not None:
            os.close(self._refs_fd)
            self._refs_fd = None
            (self.index.dir / f"{self.name}.refs").unlink(missing_ok=True)
        if self.fd >= 0:
            os.close(self.fd)  # releases the flock
            self.fd = -1

    def abort(self) -> None:
        """Forget an upload that failed: its pack (never indexed) and journal go."""
        try:
            self.path.unlink(missing_ok=True)
            (self.index.dir / f"{self.name}.idx.tmp").unlink(missing_ok=True)
        finally:
            self._close()

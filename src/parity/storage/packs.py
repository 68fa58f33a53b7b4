"""The packed layout of the local blockstore: pack files, their index files, and the in-memory
index of every committed pack.

Under ``<root>/packs``::

    <name>.pack   "PARITYPK1\\n", then records: u32 length, u8 key length, key, block bytes
    <name>.idx    "PARITYIX1\\n", u64 pack size, u32 entry count, entries (u8 key length,
                  u64 offset, u32 length, key; offset REF = a block this upload found already
                  stored), then the sha256 of all that
    <name>.refs   while an upload runs: the keys it found already stored, one a line (GC
                  keeps them)

A pack is committed once its ``.idx`` exists: the pack is fsynced before the index is written
(fsynced, renamed, directory fsynced), so an indexed block's bytes are on disk. An index whose
checksum or pack size does not hold is rebuilt by scanning the pack, keeping only records whose
bytes hash to their key. A pack without an index never serves reads; GC discards it once no
upload holds its lock and the grace period has passed. Names sort by creation time; when a key
is in several packs, the one in the pack with the smallest name is the copy (every process
picks the same one, which GC relies on when it drops the others).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from parity.core.storage.multiformats import Cid, sha256_multihash

PACK_MAGIC = b"PARITYPK1\n"
INDEX_MAGIC = b"PARITYIX1\n"
RECORD = struct.Struct("<IB")  # block length, key length
INDEX_HEAD = struct.Struct("<QI")  # pack size, entry count
ENTRY = struct.Struct("<BQI")  # key length, offset, length
REF = (1 << 64) - 1
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def new_name() -> str:
    return f"{time.time_ns():020d}-{secrets.token_hex(4)}"


def key_of(data: bytes | memoryview) -> str:
    return Cid(1, 0x55, sha256_multihash(hashlib.sha256(data).digest())).block_key


def record_header(key: str, length: int) -> bytes:
    raw = key.encode("ascii")
    return RECORD.pack(length, len(raw)) + raw


@dataclass(slots=True)
class PackMeta:
    name: str
    size: int  # the pack's size in bytes, as its index records it
    mtime: float  # when the index was written (GC's grace is counted from it)
    entries: list[tuple[str, int, int]] = field(default_factory=list)  # key, offset, length
    refs: list[str] = field(default_factory=list)


def encode_index(size: int, entries: Iterable[tuple[str, int, int]], refs: Iterable[str]) -> bytes:
    body: list[bytes] = []
    count = 0
    for key, offset, length in entries:
        raw = key.encode("ascii")
        body += [ENTRY.pack(len(raw), offset, length), raw]
        count += 1
    for key in refs:
        raw = key.encode("ascii")
        body += [ENTRY.pack(len(raw), REF, 0), raw]
        count += 1
    out = INDEX_MAGIC + INDEX_HEAD.pack(size, count) + b"".join(body)
    return out + hashlib.sha256(out).digest()


def decode_index(name: str, raw: bytes, mtime: float) -> PackMeta | None:
    """The index's contents, or None when it is not whole (bad magic, length or checksum)."""
    if len(raw) < len(INDEX_MAGIC) + INDEX_HEAD.size + 32 or not raw.startswith(INDEX_MAGIC):
        return None
    body, digest = raw[:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        return None
    size, count = INDEX_HEAD.unpack_from(body, len(INDEX_MAGIC))
    meta = PackMeta(name, size, mtime)
    pos = len(INDEX_MAGIC) + INDEX_HEAD.size
    try:
        for _ in range(count):
            klen, offset, length = ENTRY.unpack_from(body, pos)
            pos += ENTRY.size
            key = body[pos : pos + klen].decode("ascii")
            pos += klen
            if offset == REF:
                meta.refs.append(key)
            else:
                meta.entries.append((key, offset, length))
    except (struct.error, UnicodeDecodeError):
        return None
    return meta if pos == len(body) else None


def scan_pack(path: Path) -> tuple[list[tuple[str, int, int]], int]:
    """The records of a pack whose bytes hash to their key, up to the first that does not (a
    torn tail), and the size up to there."""
    entries: list[tuple[str, int, int]] = []
    with open(path, "rb") as fh:
        if fh.read(len(PACK_MAGIC)) != PACK_MAGIC:
            return [], 0
        pos = len(PACK_MAGIC)
        while True:
            head = fh.read(RECORD.size)
            if len(head) < RECORD.size:
                break
            length, klen = RECORD.unpack(head)
            try:
                key = fh.read(klen).decode("ascii")
            except UnicodeDecodeError:
                break
            data = fh.read(length)
            if len(data) != length or key_of(data) != key:
                break
            entries.append((key, pos + RECORD.size + klen, length))
            pos += RECORD.size + klen + length
    return entries, pos


IOV_MAX = 512  # buffers per writev call (the usual IOV_MAX is 1024)


def write_all(fd: int, bufs: Sequence[bytes | memoryview]) -> None:
    """Write every buffer, in order, with as few writev calls as the kernel allows (a short
    write resumes where it stopped)."""
    views = [memoryview(b) for b in bufs if len(b)]
    while views:
        done = os.writev(fd, views[:IOV_MAX])
        while done and views:
            if done >= len(views[0]):
                done -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][done:]
                done = 0


def write_file_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file: fsync, rename, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PackIndex:
    """multihash key → (pack, offset, length) for every committed pack. Thread-safe; other
    processes (GC) may add and remove packs: :meth:`refresh` catches up from the directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str, int, int]] = {}
        self.packs: dict[str, PackMeta] = {}
        self._loaded = False

    def pack_path(self, name: str) -> Path:
        return self.dir / f"{name}.pack"

    def get(self, key: str) -> tuple[str, int, int] | None:
        """The copy of ``key`` this process knows of (no disk access)."""
        if not self._loaded:
            self.refresh()
        return self._entries.get(key)

    def lookup(self, key: str) -> tuple[str, int, int] | None:
        """The copy of ``key``, catching up with the directory when it is not known."""
        found = self.get(key)
        if found is None:
            self.refresh()
            found = self._entries.get(key)
        return found

    def locate(self, key: str) -> tuple[str, int, int] | None:
        """Like :meth:`lookup`, and the pack is still there (GC elsewhere may have removed it)."""
        found = self.lookup(key)
        if found is not None and not self.pack_path(found[0]).exists():
            self.rebuild()
            found = self._entries.get(key)
        return found

    def _on_disk(self) -> set[str]:
        try:
            return {n[:-4] for n in os.listdir(self.dir) if n.endswith(".idx")}
        except FileNotFoundError:
            return set()

    def _load(self, name: str) -> PackMeta | None:
        idx = self.dir / f"{name}.idx"
        try:
            raw = idx.read_bytes()
            mtime = idx.stat().st_mtime
            pack_size = self.pack_path(name).stat().st_size
        except FileNotFoundError:
            return None
        meta = decode_index(name, raw, mtime)
        if meta is not None and pack_size >= meta.size:
            return meta
        return self._reindex(name, meta)

    def _reindex(self, name: str, old: PackMeta | None) -> PackMeta | None:
        """Rebuild a damaged index (or one whose pack is shorter than it says) from the pack's
        verified records."""
        try:
            entries, size = scan_pack(self.pack_path(name))
        except FileNotFoundError:
            return None
        refs = old.refs if old is not None else []
        write_file_durably(self.dir / f"{name}.idx", encode_index(size, entries, refs))
        return PackMeta(name, size, time.time(), entries, list(refs))

    def _merge(self, entries: dict[str, tuple[str, int, int]], meta: PackMeta) -> None:
        for key, offset, length in meta.entries:
            held = entries.get(key)
            if held is None or meta.name < held[0]:
                entries[key] = (meta.name, offset, length)

    def refresh(self) -> None:
        """Load the packs committed since the last look; rebuild when some were removed."""
        with self._lock:
            on_disk = self._on_disk()
            if self._loaded and on_disk == self.packs.keys():
                return
            if self._loaded and self.packs.keys() <= on_disk:
                for name in sorted(on_disk - self.packs.keys()):
                    meta = self._load(name)
                    if meta is not None:
                        self.packs[name] = meta
                        self._merge(self._entries, meta)
                return
            self._rebuild(on_disk)

    def rebuild(self) -> None:
        with self._lock:
            self._rebuild(self._on_disk())

    def _rebuild(self, on_disk: set[str]) -> None:
        packs: dict[str, PackMeta] = {}
        entries: dict[str, tuple[str, int, int]] = {}
        for name in sorted(on_disk):
            meta = self.packs.get(name) or self._load(name)
            if meta is not None:
                packs[name] = meta
                self._merge(entries, meta)
        self.packs, self._entries, self._loaded = packs, entries, True

    def add(self, meta: PackMeta) -> None:
        """A pack this process just committed."""
        with self._lock:
            if not self._loaded:
                self._rebuild(self._on_disk())
            self.packs[meta.name] = meta
            self._merge(self._entries, meta)

    def read(self, key: str) -> bytes | None:
        """The block's bytes, or None when no committed pack holds it."""
        for _ in range(3):
            found = self.lookup(key)
            if found is None:
                return None
            name, offset, length = found
            try:
                fd = os.open(self.pack_path(name), os.O_RDONLY | O_CLOEXEC)
            except FileNotFoundError:  # compacted or removed by GC meanwhile: look again
                self.rebuild()
                continue
            try:
                data = os.pread(fd, length, offset)
            finally:
                os.close(fd)
            if len(data) == length:
                return data
            self.rebuild()
        return None

    def keys(self) -> Iterator[str]:
        return iter(list(self._entries))

    def chosen(self, key: str) -> tuple[str, int, int] | None:
        return self._entries.get(key)


@contextlib.contextmanager
def flocked(path: Path, mode: int) -> Iterator[None]:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)

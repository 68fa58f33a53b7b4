"""Garbage collection of the packed layout.

Runs under the store's GC lock (exclusive; uploads take it shared only to commit), possibly in
another process than the server. A block is kept when a root reaches it (``live``), when an
upload still running references it (its ``.refs`` journal), or when the index that holds or
references it is younger than the grace cutoff. A pack whose index is younger than the cutoff
is left alone. Of an older pack, the dead records (and copies of a key that another pack
serves) go: the whole pack when nothing in it lives, else it is rewritten when less than
``compact_below`` of its bytes live: new pack, fsync, new index (durable), and only then the
old index and pack are removed, so every live block has a committed copy at every moment.
Old packs smaller than ``merge_below`` that no upload holds (one per small upload) are merged
the same way: their live records go into new packs of up to ``merge_target`` bytes, and only
once those are committed do the small packs go. Readers that opened an old pack keep reading
it; those that look it up afresh find the new one (:meth:`PackIndex.read` looks again when a
pack is gone). Bytes are verified while copied. A crash between the new index and the removals
leaves two copies of some blocks, which readers tolerate (the older pack's is chosen) and the
next GC drops.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from parity.logging import get_logger
from parity.storage.packs import (
    O_CLOEXEC,
    PACK_MAGIC,
    RECORD,
    PackIndex,
    PackMeta,
    encode_index,
    key_of,
    new_name,
    record_header,
    write_all,
    write_file_durably,
)

log = get_logger("parity.storage")


Entry = tuple[str, int, int]  # key, offset, length
_WRITE_BYTES = 1 << 20  # copied bytes gathered before a write


@dataclass
class Swept:
    removed: int = 0  # blocks
    freed: int = 0  # bytes
    compacted: int = 0  # packs rewritten without their dead records
    merged: int = 0  # small packs whose live records moved into a merged pack


@dataclass(frozen=True)
class Thresholds:
    compact_below: float  # rewrite an old pack when less than this fraction of its bytes live
    merge_below: int  # merge old packs smaller than this (bytes; 0: never) ...
    merge_target: int  # ... into packs of up to this many bytes


def _young(mtime: float, older_than: float | None) -> bool:
    return older_than is not None and mtime >= older_than


def _unlocked(path: Path) -> bool:
    """True when no upload holds this pack (a crashed or finished one)."""
    try:
        fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _journal(path: Path) -> set[str]:
    try:
        return {k for k in path.read_text("ascii").split("\n") if k}
    except (FileNotFoundError, UnicodeDecodeError):
        return set()


def pending_refs(index: PackIndex, older_than: float | None, out: Swept) -> set[str]:
    """Keys that uploads in flight reference; packs of uploads that died are removed."""
    refs: set[str] = set()
    try:
        names = os.listdir(index.dir)
    except FileNotFoundError:
        return refs
    for entry in names:
        if not entry.endswith(".pack") or entry[:-5] in index.packs:
            continue
        name = entry[:-5]
        path = index.dir / entry
        journal = index.dir / f"{name}.refs"
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if _young(st.st_mtime, older_than) or not _unlocked(path):
            refs |= _journal(journal)
            continue
        if (index.dir / f"{name}.idx").exists():  # committed since the index was loaded
            continue
        path.unlink(missing_ok=True)
        journal.unlink(missing_ok=True)
        (index.dir / f"{name}.idx.tmp").unlink(missing_ok=True)
        out.freed += st.st_size
        log.info("storage_pack_discarded", pack=name, bytes=st.st_size)
    return refs


def _append(
    index: PackIndex, meta: PackMeta, keep: list[Entry], dst: int, at: int, entries: list[Entry]
) -> int:
    """Append ``keep``'s records of ``meta``'s pack to ``dst`` (which ends at ``at``), each
    verified against its key, noting them in ``entries``; returns where ``dst`` ends now."""
    bufs: list[bytes] = []
    written = at
    src = os.open(index.pack_path(meta.name), os.O_RDONLY | O_CLOEXEC)
    try:
        for key, offset, length in keep:
            data = os.pread(src, length, offset)
            if len(data) != length or key_of(data) != key:
                log.error("storage_block_corrupt", pack=meta.name, key=key)
                continue
            header = record_header(key, length)
            bufs += [header, data]
            entries.append((key, at + len(header), length))
            at += len(header) + length
            if at - written >= _WRITE_BYTES:  # small records: one writev for many
                write_all(dst, bufs)
                bufs, written = [], at
        write_all(dst, bufs)
    finally:
        os.close(src)
    return at


def _copy(index: PackIndex, sources: list[tuple[PackMeta, list[Entry]]]) -> PackMeta:
    """A new pack holding the ``keep`` records of each source pack, verified, committed (pack
    fsynced, then its index written durably)."""
    name = new_name()
    path = index.pack_path(name)
    entries: list[Entry] = []
    dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o644)
    try:
        fcntl.flock(dst, fcntl.LOCK_EX | fcntl.LOCK_NB)
        write_all(dst, [PACK_MAGIC])
        at = len(PACK_MAGIC)
        for meta, keep in sources:
            at = _append(index, meta, keep, dst, at, entries)
        os.fsync(dst)
        idx = index.dir / f"{name}.idx"
        write_file_durably(idx, encode_index(at, entries, []))
        return PackMeta(name, at, idx.stat().st_mtime, entries, [])
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(dst)


def _drop(index: PackIndex, meta: PackMeta) -> int:
    size = 0
    with contextlib.suppress(FileNotFoundError):
        size = index.pack_path(meta.name).stat().st_size
    (index.dir / f"{meta.name}.idx").unlink(missing_ok=True)  # first: never an index without
    index.pack_path(meta.name).unlink(missing_ok=True)  # its pack
    return size


def sweep_packs(
    index: PackIndex,
    live: set[str],
    older_than: float | None,
    limits: Thresholds,
    out: Swept,
) -> None:
    """Remove, rewrite or merge old packs."""
    spared = pending_refs(index, older_than, out)
    metas = sorted(index.packs.values(), key=lambda m: m.name)
    for meta in metas:
        if _young(meta.mtime, older_than):
            spared.update(k for k, _, _ in meta.entries)
            spared.update(meta.refs)
    small: list[tuple[PackMeta, list[Entry]]] = []
    for meta in metas:
        if _young(meta.mtime, older_than):
            continue
        keep = [
            e
            for e in meta.entries
            if (e[0] in live or e[0] in spared) and index.chosen(e[0]) == (meta.name, e[1], e[2])
        ]
        if not keep:
            out.freed += _drop(index, meta)
            out.removed += len(meta.entries)
        elif meta.size < limits.merge_below and _unlocked(index.pack_path(meta.name)):
            small.append((meta, keep))
        else:
            _compact(index, meta, keep, limits.compact_below, out)
    for group in _groups(small, limits.merge_target):
        if len(group) == 1:  # nothing to merge it with: an old pack like any other
            _compact(index, *group[0], limits.compact_below, out)
        else:
            _merge(index, group, out)
    _stale_files(index, older_than)
    index.rebuild()
    if out.compacted or out.merged:
        log.info("storage_packs_rewritten", compacted=out.compacted, merged=out.merged)


def _compact(
    index: PackIndex, meta: PackMeta, keep: list[Entry], compact_below: float, out: Swept
) -> None:
    dropped = len(meta.entries) - len(keep)
    if dropped == 0 or sum(e[2] for e in keep) >= compact_below * sum(e[2] for e in meta.entries):
        return
    new = _copy(index, [(meta, keep)])
    out.freed += _drop(index, meta) - new.size
    out.removed += dropped
    out.compacted += 1


def _groups(
    small: list[tuple[PackMeta, list[Entry]]], target: int
) -> Iterator[list[tuple[PackMeta, list[Entry]]]]:
    """The small packs, in order, cut into runs whose live records fill up to ``target``."""
    group: list[tuple[PackMeta, list[Entry]]] = []
    filled = len(PACK_MAGIC)
    for meta, keep in small:
        size = sum(RECORD.size + len(key) + length for key, _, length in keep)
        if group and filled + size > target:
            yield group
            group, filled = [], len(PACK_MAGIC)
        group.append((meta, keep))
        filled += size
    if group:
        yield group


def _merge(index: PackIndex, group: list[tuple[PackMeta, list[Entry]]], out: Swept) -> None:
    """One new pack for the group's live records; the small packs go once it is committed."""
    new = _copy(index, group)
    out.freed -= new.size
    for meta, keep in group:
        out.freed += _drop(index, meta)
        out.removed += len(meta.entries) - len(keep)
        out.merged += 1


def _stale_files(index: PackIndex, older_than: float | None) -> None:
    """Index files whose pack is gone, and temporary index files left by a crash."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(index.dir):
            path = index.dir / entry
            if entry.endswith(".idx") and not index.pack_path(entry[:-4]).exists():
                path.unlink(missing_ok=True)
            elif entry.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    if not _young(path.stat().st_mtime, older_than):
                        path.unlink(missing_ok=True)

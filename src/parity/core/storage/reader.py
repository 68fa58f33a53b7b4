"""Reading UnixFS files out of blocks: size, byte ranges, and the links to follow (for GC).

The block source is a callable given by the caller (a disk blockstore, a fake), so this module
does no I/O itself. A byte range only visits the subtrees it overlaps, using each node's
``blocksizes``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from parity.core.storage.dagpb import (
    UNIXFS_FILE,
    UNIXFS_RAW,
    DagPbError,
    PbNode,
    UnixfsData,
    decode_node,
    decode_unixfs,
)
from parity.core.storage.multiformats import DAG_PB, RAW, Cid, CidError

__all__ = ["NotAFile", "child_cids", "file_size", "iter_file"]

GetBlock = Callable[[Cid], bytes]


class NotAFile(ValueError):
    """The block is not a UnixFS file (a directory, another codec, or corrupt)."""


def _file_node(cid: Cid, block: bytes) -> tuple[PbNode, UnixfsData]:
    try:
        node = decode_node(block)
        fs = decode_unixfs(node.data or b"")
    except DagPbError as exc:
        raise NotAFile(f"{cid}: {exc}") from None
    if fs.type not in (UNIXFS_FILE, UNIXFS_RAW):
        raise NotAFile(f"{cid} is not a UnixFS file (type {fs.type})")
    if node.links and len(fs.blocksizes) != len(node.links):
        raise NotAFile(f"{cid}: {len(node.links)} links but {len(fs.blocksizes)} blocksizes")
    return node, fs


def file_size(cid: Cid, block: bytes) -> int:
    """Bytes of the file whose root block is ``block``."""
    if cid.codec == RAW:
        return len(block)
    if cid.codec != DAG_PB:
        raise NotAFile(f"{cid}: unsupported codec")
    _, fs = _file_node(cid, block)
    if fs.filesize is not None:
        return fs.filesize
    return len(fs.data) + sum(fs.blocksizes)


def child_cids(cid: Cid, block: bytes) -> list[Cid]:
    """The blocks a block links to (none for raw leaves)."""
    if cid.codec != DAG_PB:
        return []
    try:
        return [Cid.from_bytes(link.hash) for link in decode_node(block).links]
    except (DagPbError, CidError) as exc:
        raise NotAFile(f"{cid}: {exc}") from None


def iter_file(
    get_block: GetBlock, root: Cid, start: int = 0, end: int | None = None
) -> Iterator[bytes]:
    """The bytes ``[start, end)`` of the file at ``root``, in pieces of at most one leaf."""
    if end is not None and end <= start:
        return
    yield from _walk(get_block, root, start, end, get_block(root))


def _walk(
    get_block: GetBlock, cid: Cid, start: int, end: int | None, block: bytes
) -> Iterator[bytes]:
    if cid.codec == RAW:
        if start == 0 and (end is None or end >= len(block)):
            yield block
        else:
            yield block[start:end]
        return
    if cid.codec != DAG_PB:
        raise NotAFile(f"{cid}: unsupported codec")
    node, fs = _file_node(cid, block)
    pos = 0
    if fs.data:
        if start < len(fs.data):
            yield fs.data[start:end]
        pos = len(fs.data)
    for link, size in zip(node.links, fs.blocksizes, strict=True):
        child_start, child_end = pos, pos + size
        pos = child_end
        if child_end <= start:
            continue
        if end is not None and child_start >= end:
            break
        try:
            child = Cid.from_bytes(link.hash)
        except CidError as exc:
            raise NotAFile(f"{cid}: {exc}") from None
        lo = max(start - child_start, 0)
        hi = None if end is None or end >= child_end else end - child_start
        yield from _walk(get_block, child, lo, hi, get_block(child))

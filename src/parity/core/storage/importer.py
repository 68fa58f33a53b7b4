"""A streaming UnixFS file importer that gives the CIDs ``ipfs add --cid-version=1
--raw-leaves`` gives on kubo (its defaults otherwise: fixed 256 KiB chunks, balanced layout,
sha2-256), and beside it the CIDv0 that a plain ``ipfs add`` gives for the same bytes.

The balanced layout (boxo ``importer/balanced``) puts every leaf at the same depth: leaves are
grouped in order, at most 174 per node; those nodes are grouped 174 per node one level up, and
so on until one node is left. A file of one chunk is that chunk itself. Internal nodes are dag-pb
with ``UnixFS{Type: File, filesize, blocksizes}``; each link's Tsize is the child's cumulative
DAG size (block length plus its children's Tsize).

- CIDv1, raw leaves: a leaf is the chunk as a ``raw`` block.
- CIDv0: a leaf is a dag-pb node wrapping ``UnixFS{Type: File, Data: chunk, filesize}``. Only
  the root CID of this tree is computed (no blocks are kept), as an alias of the CIDv1 content.

Feed bytes with :meth:`FileImporter.write` and store the blocks it returns; :meth:`finish` returns
the last blocks and the result. Memory is one chunk plus at most 174 links per tree level.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from parity.core.storage.dagpb import encode_node, encode_unixfs_file, unixfs_leaf_prefix
from parity.core.storage.multiformats import DAG_PB, RAW, Cid, sha256_multihash

__all__ = ["CHUNK_SIZE", "MAX_LINKS", "Block", "CidV0Hasher", "FileImporter", "ImportResult"]

CHUNK_SIZE = 262144
MAX_LINKS = 174


@dataclass(frozen=True, slots=True)
class Block:
    cid: Cid
    data: bytes | memoryview  # a leaf may be a view into the caller's (immutable) bytes


@dataclass(frozen=True, slots=True)
class ImportResult:
    cid: Cid
    size: int
    cid_v0: Cid | None
    blocks: int


@dataclass(slots=True)
class _Link:
    cid_bytes: bytes
    tsize: int  # cumulative DAG bytes under the link
    filesize: int  # file bytes under the link


@dataclass(slots=True)
class _Tree:
    """Pending links per level for one DAG flavour (v1 with blocks, or v0 hashes only)."""

    version: int
    max_links: int
    keep_blocks: bool
    levels: list[list[_Link]] = field(default_factory=lambda: [[]])
    root: Cid | None = None
    nodes: int = 0

    def add_leaf(self, link: _Link, cid: Cid, out: list[Block]) -> None:
        self.root = cid
        self._push(0, link, out)

    def _push(self, level: int, link: _Link, out: list[Block]) -> None:
        if level == len(self.levels):
            self.levels.append([])
        pending = self.levels[level]
        pending.append(link)
        if len(pending) == self.max_links:
            self.levels[level] = []
            self._push(level + 1, self._node(pending, out), out)

    def _node(self, links: list[_Link], out: list[Block]) -> _Link:
        filesize = sum(link.filesize for link in links)
        data = encode_unixfs_file(filesize, [link.filesize for link in links])
        node = encode_node([(link.cid_bytes, link.tsize) for link in links], data)
        cid = Cid(self.version, DAG_PB, sha256_multihash(hashlib.sha256(node).digest()))
        self.nodes += 1
        if self.keep_blocks:
            out.append(Block(cid, node))
        self.root = cid
        return _Link(cid.to_bytes(), len(node) + sum(link.tsize for link in links), filesize)

    def finish(self, out: list[Block]) -> Cid:
        """Close the partial nodes bottom-up. The top level's single entry is the root."""
        level = 0
        while level < len(self.levels):
            pending = self.levels[level]
            higher = any(self.levels[level + 1 :])
            if pending and (higher or len(pending) > 1):
                self.levels[level] = []
                self._push(level + 1, self._node(pending, out), out)
            level += 1
        assert self.root is not None
        return self.root


class _Chunker:
    """Cuts a byte stream into fixed-size chunks. Slices of immutable input (``bytes``) are
    passed on without copying; mutable input and the carried-over tail are copied."""

    def __init__(self, chunk_size: int) -> None:
        self.size = chunk_size
        self._buf = bytearray()

    def split(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        view = memoryview(data).cast("B")
        keep_views = view.readonly
        out: list[bytes | memoryview] = []
        size = self.size
        if self._buf:
            take = min(size - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == size:
                out.append(bytes(self._buf))
                self._buf.clear()
        while len(view) >= size:
            chunk = view[:size]
            out.append(chunk if keep_views else bytes(chunk))
            view = view[size:]
        if len(view):
            self._buf += view
        return out

    def rest(self) -> bytes:
        tail = bytes(self._buf)
        self._buf.clear()
        return tail

    @property
    def pending(self) -> int:
        return len(self._buf)


def _v0_leaf(chunk: bytes | memoryview) -> tuple[_Link, Cid]:
    n = len(chunk)
    head, tail = unixfs_leaf_prefix(n)
    h = hashlib.sha256(head)
    h.update(chunk)
    h.update(tail)
    cid = Cid(0, DAG_PB, sha256_multihash(h.digest()))
    return _Link(cid.to_bytes(), len(head) + n + len(tail), n), cid


class CidV0Hasher:
    """Only the CIDv0 a plain ``ipfs add`` gives (no blocks). Fed the same bytes as a
    ``FileImporter(with_cidv0=False)``, possibly in another thread, it yields the same CIDv0 as a
    ``FileImporter(with_cidv0=True)`` would."""

    def __init__(self, *, chunk_size: int = CHUNK_SIZE, max_links: int = MAX_LINKS) -> None:
        self._chunks = _Chunker(chunk_size)
        self._tree = _Tree(0, max_links, False)
        self._leaves = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        for chunk in self._chunks.split(data):
            self._add(chunk)

    def _add(self, chunk: bytes | memoryview) -> None:
        self._leaves += 1
        link, cid = _v0_leaf(chunk)
        self._tree.add_leaf(link, cid, [])

    def finish(self) -> Cid:
        tail = self._chunks.rest()
        if tail or self._leaves == 0:
            self._add(tail)
        return self._tree.finish([])


class FileImporter:
    """Push parser: ``write()`` bytes in any pieces, then ``finish()`` once.

    Returned blocks may be views into the bytes given to ``write`` (when those are ``bytes``):
    store them before that buffer is dropped."""

    def __init__(
        self,
        *,
        chunk_size: int = CHUNK_SIZE,
        max_links: int = MAX_LINKS,
        with_cidv0: bool = True,
        keep_blocks: bool = True,
    ) -> None:
        if chunk_size < 1 or max_links < 2:
            raise ValueError("chunk_size must be >= 1 and max_links >= 2")
        self.chunk_size = chunk_size
        self._chunks = _Chunker(chunk_size)
        self._size = 0
        self._leaves = 0
        self._finished = False
        self._v1 = _Tree(1, max_links, keep_blocks)
        self._v0 = _Tree(0, max_links, False) if with_cidv0 else None
        self._keep = keep_blocks

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size + self._chunks.pending

    def write(self, data: bytes | bytearray | memoryview) -> list[Block]:
        """Absorb ``data``; returns the blocks completed by it (leaves and internal nodes)."""
        if self._finished:
            raise RuntimeError("importer already finished")
        out: list[Block] = []
        for chunk in self._chunks.split(data):
            self._leaf(chunk, out)
        return out

    def finish(self) -> tuple[list[Block], ImportResult]:
        if self._finished:
            raise RuntimeError("importer already finished")
        out: list[Block] = []
        tail = self._chunks.rest()
        if tail or self._leaves == 0:  # an empty file is one empty raw leaf
            self._leaf(tail, out)
        self._finished = True
        root = self._v1.finish(out)
        v0 = self._v0.finish(out) if self._v0 is not None else None
        return out, ImportResult(root, self._size, v0, self._leaves + self._v1.nodes)

    def _leaf(self, chunk: bytes | memoryview, out: list[Block]) -> None:
        n = len(chunk)
        self._size += n
        self._leaves += 1
        cid = Cid(1, RAW, sha256_multihash(hashlib.sha256(chunk).digest()))
        if self._keep:
            out.append(Block(cid, chunk))
        self._v1.add_leaf(_Link(cid.to_bytes(), n, n), cid, out)
        if self._v0 is not None:
            link, v0 = _v0_leaf(chunk)
            self._v0.add_leaf(link, v0, out)

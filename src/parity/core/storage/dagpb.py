"""The dag-pb and UnixFS protobuf encodings, by hand (stdlib only).

dag-pb (https://ipld.io/specs/codecs/dag-pb/spec/)::

    message PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
    message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }

Canonical form writes Links before Data; kubo always writes Name (empty for file chunks) and
Tsize. UnixFS (https://specs.ipfs.tech/unixfs/), proto2, ``blocksizes`` not packed::

    message Data { required DataType Type = 1; optional bytes Data = 2;
                   optional uint64 filesize = 3; repeated uint64 blocksizes = 4; ... }
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from parity.core.storage.multiformats import decode_varint, encode_varint

__all__ = [
    "UNIXFS_FILE",
    "UNIXFS_RAW",
    "DagPbError",
    "PbLink",
    "PbNode",
    "UnixfsData",
    "decode_node",
    "decode_unixfs",
    "encode_node",
    "encode_unixfs_file",
    "unixfs_leaf_prefix",
]

UNIXFS_RAW = 0
UNIXFS_DIRECTORY = 1
UNIXFS_FILE = 2

_VARINT = 0
_I64 = 1
_LEN = 2
_I32 = 5


class DagPbError(ValueError):
    """A block is not valid dag-pb or UnixFS."""


def _key(field_no: int, wire: int) -> bytes:
    return encode_varint(field_no << 3 | wire)


def _len_field(field_no: int, payload: bytes) -> bytes:
    return _key(field_no, _LEN) + encode_varint(len(payload)) + payload


def encode_unixfs_file(
    filesize: int, blocksizes: Sequence[int] = (), data: bytes | None = None
) -> bytes:
    """A UnixFS ``File`` message: Type, optional Data, filesize, one field per blocksize."""
    out = bytearray(_key(1, _VARINT) + encode_varint(UNIXFS_FILE))
    if data:
        out += _len_field(2, data)
    out += _key(3, _VARINT) + encode_varint(filesize)
    bs_key = _key(4, _VARINT)
    for size in blocksizes:
        out += bs_key + encode_varint(size)
    return bytes(out)


def unixfs_leaf_prefix(chunk_len: int) -> tuple[bytes, bytes]:
    """Bytes before and after a chunk in kubo's CIDv0 leaf node (a dag-pb node whose Data is
    ``UnixFS{Type: File, Data: chunk, filesize: len}``), so the leaf can be hashed without
    copying the chunk: ``sha256(prefix ‖ chunk ‖ suffix)``."""
    head = _key(1, _VARINT) + encode_varint(UNIXFS_FILE)
    if chunk_len:
        head += _key(2, _LEN) + encode_varint(chunk_len)
    tail = _key(3, _VARINT) + encode_varint(chunk_len)
    inner_len = len(head) + chunk_len + len(tail)
    return _key(1, _LEN) + encode_varint(inner_len) + head, tail


def encode_node(links: Sequence[tuple[bytes, int]], data: bytes | None) -> bytes:
    """A dag-pb node; ``links`` are ``(binary CID, Tsize)`` with an empty Name, as kubo writes
    file links."""
    out = bytearray()
    for cid_bytes, tsize in links:
        link = _len_field(1, cid_bytes) + _len_field(2, b"") + _key(3, _VARINT)
        link += encode_varint(tsize)
        out += _len_field(2, link)
    if data is not None:
        out += _len_field(1, data)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class PbLink:
    hash: bytes
    name: str
    tsize: int | None


@dataclass(frozen=True, slots=True)
class PbNode:
    links: list[PbLink]
    data: bytes | None


@dataclass(frozen=True, slots=True)
class UnixfsData:
    type: int
    data: bytes = b""
    filesize: int | None = None
    blocksizes: list[int] = field(default_factory=list)


def _fields(buf: bytes | memoryview) -> list[tuple[int, int, int | memoryview]]:
    """Split a protobuf message into ``(field, wire type, value)``; unknown wire types refused."""
    view = memoryview(buf)
    out: list[tuple[int, int, int | memoryview]] = []
    pos = 0
    end = len(view)
    try:
        while pos < end:
            key, pos = decode_varint(view, pos)
            field_no, wire = key >> 3, key & 7
            if wire == _VARINT:
                value, pos = decode_varint(view, pos)
                out.append((field_no, wire, value))
            elif wire == _LEN:
                length, pos = decode_varint(view, pos)
                if pos + length > end:
                    raise DagPbError("length-delimited field runs past the end")
                out.append((field_no, wire, view[pos : pos + length]))
                pos += length
            elif wire in (_I64, _I32):
                pos += 8 if wire == _I64 else 4
                if pos > end:
                    raise DagPbError("fixed-width field runs past the end")
            else:
                raise DagPbError(f"unsupported protobuf wire type {wire}")
    except ValueError as exc:
        if isinstance(exc, DagPbError):
            raise
        raise DagPbError(str(exc)) from None
    return out


def decode_node(block: bytes | memoryview) -> PbNode:
    links: list[PbLink] = []
    data: bytes | None = None
    for field_no, wire, value in _fields(block):
        if field_no == 2 and wire == _LEN:
            assert isinstance(value, memoryview)
            links.append(_decode_link(value))
        elif field_no == 1 and wire == _LEN:
            assert isinstance(value, memoryview)
            data = bytes(value)
        else:
            raise DagPbError(f"unexpected field {field_no} in PBNode")
    return PbNode(links, data)


def _decode_link(buf: memoryview) -> PbLink:
    hash_: bytes | None = None
    name = ""
    tsize: int | None = None
    for field_no, wire, value in _fields(buf):
        if field_no == 1 and wire == _LEN:
            assert isinstance(value, memoryview)
            hash_ = bytes(value)
        elif field_no == 2 and wire == _LEN:
            assert isinstance(value, memoryview)
            try:
                name = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise DagPbError("link name is not UTF-8") from None
        elif field_no == 3 and wire == _VARINT:
            assert isinstance(value, int)
            tsize = value
        else:
            raise DagPbError(f"unexpected field {field_no} in PBLink")
    if hash_ is None:
        raise DagPbError("link without a Hash")
    return PbLink(hash_, name, tsize)


def decode_unixfs(buf: bytes | memoryview) -> UnixfsData:
    type_: int | None = None
    data = b""
    filesize: int | None = None
    blocksizes: list[int] = []
    for field_no, wire, value in _fields(buf):
        if field_no == 1 and wire == _VARINT:
            assert isinstance(value, int)
            type_ = value
        elif field_no == 2 and wire == _LEN:
            assert isinstance(value, memoryview)
            data = bytes(value)
        elif field_no == 3 and wire == _VARINT:
            assert isinstance(value, int)
            filesize = value
        elif field_no == 4 and wire == _VARINT:
            assert isinstance(value, int)
            blocksizes.append(value)
        elif field_no == 4 and wire == _LEN:  # a packed encoder's blocksizes
            assert isinstance(value, memoryview)
            pos = 0
            while pos < len(value):
                size, pos = decode_varint(value, pos)
                blocksizes.append(size)
        # hashType, fanout, mode, mtime: not needed to read a file
    if type_ is None:
        raise DagPbError("UnixFS data without a Type")
    return UnixfsData(type_, data, filesize, blocksizes)

"""The pure content-addressing core: CIDs equal kubo's (oracle vectors in
tests/contract/vectors.py), encodings round-trip, files read back by any byte range."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parity.core.storage.dagpb import (
    UNIXFS_FILE,
    DagPbError,
    decode_node,
    decode_unixfs,
    encode_node,
    encode_unixfs_file,
)
from parity.core.storage.importer import Block, CidV0Hasher, FileImporter
from parity.core.storage.multiformats import (
    DAG_PB,
    RAW,
    Cid,
    CidError,
    b58decode,
    b58encode,
    decode_varint,
    encode_varint,
)
from parity.core.storage.ranges import ByteRange, RangeNotSatisfiable, parse_range
from parity.core.storage.reader import NotAFile, child_cids, file_size, iter_file
from tests.contract.vectors import (
    HELLO,
    KUBO_DEFAULTS,
    MULTI_MIB,
    SMALL_THREE_LEVELS,
    SMALL_TREES,
    TWO_LEVELS,
    Vector,
)


def _import(
    data: bytes, piece: int, *, chunk_size: int = 262144, max_links: int = 174
) -> tuple[dict[Cid, bytes], Cid, Cid | None, int]:
    importer = FileImporter(chunk_size=chunk_size, max_links=max_links)
    blocks: list[Block] = []
    for i in range(0, len(data), piece):
        blocks += importer.write(data[i : i + piece])
    last, result = importer.finish()
    blocks += last
    assert result.blocks == len(blocks)
    return {b.cid: b.data for b in blocks}, result.cid, result.cid_v0, result.size


@pytest.mark.parametrize("vector", KUBO_DEFAULTS + SMALL_TREES, ids=lambda v: v.name)
def test_import_gives_the_oracle_cids(vector: Vector):
    data = vector.data()
    assert hashlib.sha256(data).hexdigest() == vector.sha256
    _, cid, v0, size = _import(
        data, 1_000_003, chunk_size=vector.chunk_size, max_links=vector.max_links
    )
    assert cid.encode() == vector.v1
    assert v0 is not None and v0.encode() == vector.v0
    assert size == vector.size


@pytest.mark.parametrize("piece", [1, 7, 1023, 4096, 262143, 262145])
def test_the_cid_does_not_depend_on_how_the_bytes_arrive(piece: int):
    data = MULTI_MIB.data() if piece > 1000 else SMALL_THREE_LEVELS.data()
    vector = MULTI_MIB if piece > 1000 else SMALL_THREE_LEVELS
    _, cid, v0, _ = _import(data, piece, chunk_size=vector.chunk_size, max_links=vector.max_links)
    assert cid.encode() == vector.v1
    assert v0 is not None and v0.encode() == vector.v0


def test_two_level_file_puts_the_last_leaves_in_a_second_subtree():
    blocks, cid, _, _ = _import(TWO_LEVELS.data(), 4 << 20)
    root = decode_node(blocks[cid])
    assert len(root.links) == 2
    first, second = (Cid.from_bytes(link.hash) for link in root.links)
    assert len(decode_node(blocks[first]).links) == 174
    rest = decode_node(blocks[second]).links  # the 175th chunk and the last byte
    assert [link.tsize for link in rest] == [262144, 1]
    assert all(Cid.from_bytes(link.hash).codec == RAW for link in rest)
    fs = decode_unixfs(root.data or b"")
    assert fs.type == UNIXFS_FILE
    assert fs.filesize == TWO_LEVELS.size
    assert fs.blocksizes == [174 * 262144, 262144 + 1]


def test_single_chunk_file_is_its_raw_leaf():
    blocks, cid, _, _ = _import(HELLO.data(), 100)
    assert cid.codec == RAW and cid.version == 1
    assert blocks == {cid: b"hello world\n"}


def test_importer_refuses_use_after_finish():
    importer = FileImporter()
    importer.finish()
    with pytest.raises(RuntimeError):
        importer.write(b"x")
    with pytest.raises(RuntimeError):
        importer.finish()


def test_without_cidv0_only_the_v1_cid_is_computed():
    importer = FileImporter(with_cidv0=False, keep_blocks=False)
    assert importer.write(b"hello world\n") == []
    blocks, result = importer.finish()
    assert blocks == []
    assert result.cid.encode() == HELLO.v1 and result.cid_v0 is None


# -- multiformats


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_varint_round_trips(n: int):
    raw = encode_varint(n)
    assert decode_varint(raw) == (n, len(raw))


@given(st.binary(max_size=64))
def test_base58_round_trips(data: bytes):
    assert b58decode(b58encode(data)) == data


@pytest.mark.parametrize("vector", KUBO_DEFAULTS, ids=lambda v: v.name)
def test_cids_parse_and_print_unchanged(vector: Vector):
    for text in (vector.v1, vector.v0):
        assert Cid.parse(text).encode() == text


def test_v0_and_v1_of_a_dag_pb_node_share_the_multihash():
    v1 = Cid.parse(MULTI_MIB.v1)
    assert v1.codec == DAG_PB
    v0 = v1.to_v0()
    assert v0.encode().startswith("Qm") and v0.multihash == v1.multihash
    assert v0.to_v1() == v1
    assert Cid.parse(v0.encode()) == v0
    assert Cid.from_bytes(v0.to_bytes()) == v0
    assert Cid.from_bytes(v1.to_bytes()) == v1


def test_other_multibase_spellings_parse():
    cid = Cid.parse(HELLO.v1)
    assert Cid.parse("B" + HELLO.v1[1:].upper()) == cid
    assert Cid.parse("f" + cid.to_bytes().hex()) == cid
    assert Cid.parse("z" + b58encode(cid.to_bytes())) == cid


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "Qm" + "1" * 44,
        "bafkrei",  # truncated
        "x" + HELLO.v1[1:],  # unknown multibase
        "b" + "a" * 300,  # too long
        HELLO.v1[:-2] + "!!",  # not base32
        "f01551220" + "00" * 31,  # digest shorter than declared
        "f0155" + "1114" + "00" * 20,  # sha1: not supported
        "f0171" + "1220" + "00" * 32,  # dag-cbor: not supported
        "f02551220" + "00" * 32,  # CID version 2
    ],
)
def test_unusable_cids_are_refused(text: str):
    with pytest.raises(CidError):
        Cid.parse(text)


def test_raw_cid_has_no_v0():
    with pytest.raises(CidError):
        Cid.parse(HELLO.v1).to_v0()


# -- dag-pb / UnixFS


def test_dag_pb_node_round_trips_with_links_before_data():
    link = Cid.parse(HELLO.v1).to_bytes()
    data = encode_unixfs_file(12, [12])
    node = encode_node([(link, 12)], data)
    assert node[0] == 0x12  # field 2 (Links) first
    decoded = decode_node(node)
    assert decoded.data == data
    assert [(x.hash, x.name, x.tsize) for x in decoded.links] == [(link, "", 12)]
    fs = decode_unixfs(data)
    assert (fs.type, fs.filesize, fs.blocksizes, fs.data) == (UNIXFS_FILE, 12, [12], b"")


def test_packed_blocksizes_are_read_too():
    packed = bytes([0x08, 0x02, 0x18, 0x05, 0x22, 0x02, 0x02, 0x03])
    assert decode_unixfs(packed).blocksizes == [2, 3]


@pytest.mark.parametrize(
    "raw",
    [
        b"\x12\x05\x0a\x01",  # link runs past the end
        b"\x1a\x00",  # field 3 in a PBNode
        b"\x12\x02\x12\x00",  # link without a Hash
        b"\x0b",  # wire type 3
        b"\xff" * 11,  # over-long varint
    ],
)
def test_malformed_nodes_are_refused(raw: bytes):
    with pytest.raises(DagPbError):
        decode_node(raw)


# -- reading back


@pytest.fixture(scope="module")
def small_tree() -> tuple[bytes, dict[Cid, bytes], Cid]:
    data = SMALL_THREE_LEVELS.data()
    blocks, cid, _, _ = _import(data, 5000, chunk_size=1024, max_links=4)
    return data, blocks, cid


def test_file_size_and_children(small_tree: tuple[bytes, dict[Cid, bytes], Cid]):
    data, blocks, cid = small_tree
    assert file_size(cid, blocks[cid]) == len(data)
    assert all(c in blocks for c in child_cids(cid, blocks[cid]))
    assert child_cids(Cid.parse(HELLO.v1), b"hello world\n") == []


@settings(max_examples=200, deadline=None)
@given(start=st.integers(min_value=0, max_value=70_100), length=st.integers(0, 70_100))
def test_any_byte_range_reads_back(
    small_tree: tuple[bytes, dict[Cid, bytes], Cid], start: int, length: int
):
    data, blocks, cid = small_tree
    end = start + length
    assert b"".join(iter_file(blocks.__getitem__, cid, start, end)) == data[start:end]


def test_whole_file_reads_back_and_only_needed_blocks_are_read(
    small_tree: tuple[bytes, dict[Cid, bytes], Cid],
):
    data, blocks, cid = small_tree
    assert b"".join(iter_file(blocks.__getitem__, cid)) == data
    seen: list[Cid] = []

    def get(c: Cid) -> bytes:
        seen.append(c)
        return blocks[c]

    assert b"".join(iter_file(get, cid, 5000, 5010)) == data[5000:5010]
    assert sum(1 for c in seen if c.codec == RAW) == 1


def test_inline_data_nodes_read_back():
    # kubo without raw leaves puts chunks inside UnixFS nodes; the reader handles both.
    leaf = encode_node([], encode_unixfs_file(5, data=b"hello"))
    leaf_cid = Cid.v1(DAG_PB, leaf)
    root = encode_node([(leaf_cid.to_bytes(), len(leaf))], encode_unixfs_file(5, [5]))
    root_cid = Cid.v1(DAG_PB, root)
    blocks = {leaf_cid: leaf, root_cid: root}
    assert b"".join(iter_file(blocks.__getitem__, root_cid)) == b"hello"
    assert b"".join(iter_file(blocks.__getitem__, root_cid, 1, 3)) == b"el"


def test_a_directory_is_not_a_file():
    directory = encode_node([], bytes([0x08, 0x01]))
    cid = Cid.v1(DAG_PB, directory)
    with pytest.raises(NotAFile):
        file_size(cid, directory)


# -- HTTP ranges


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-", 10, ByteRange(0, 10)),
        ("bytes=2-4", 10, ByteRange(2, 5)),
        ("bytes=2-400", 10, ByteRange(2, 10)),
        ("bytes=-3", 10, ByteRange(7, 10)),
        ("bytes=-30", 10, ByteRange(0, 10)),
        ("bytes=5-2", 10, None),  # invalid: ignored
        ("items=0-1", 10, None),
        ("bytes=0-1,3-4", 10, None),  # several ranges: sent whole
        ("bytes=a-b", 10, None),
        ("bytes=", 10, None),
    ],
)
def test_range_headers(header: str | None, size: int, expected: ByteRange | None):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0)])
def test_unsatisfiable_ranges(header: str, size: int):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_content_range_header():
    assert ByteRange(2, 5).content_range(10) == "bytes 2-4/10"


@pytest.mark.parametrize("vector", [HELLO, MULTI_MIB, SMALL_THREE_LEVELS], ids=lambda v: v.name)
def test_the_separate_cidv0_hasher_agrees(vector: Vector):
    hasher = CidV0Hasher(chunk_size=vector.chunk_size, max_links=vector.max_links)
    data = vector.data()
    for i in range(0, len(data), 70_001):
        hasher.write(bytearray(data[i : i + 70_001]))  # mutable input is copied, not viewed
    assert hasher.finish().encode() == vector.v0
    assert CidV0Hasher().finish().encode() == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"

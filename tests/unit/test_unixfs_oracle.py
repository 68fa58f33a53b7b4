"""Random files against an independent oracle, aleph-cid (kubo-compatible CIDs in Rust), when it
is installed (``pip install aleph-cid==0.1.0``; a test-only tool, never a runtime dependency).
The fixed vectors in tests/contract/vectors.py run everywhere; this adds random sizes around the
chunk and node boundaries."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parity.core.storage.importer import FileImporter

aleph_cid = pytest.importorskip("aleph_cid")

CHUNK = 262144
SIZES = st.one_of(
    st.integers(min_value=0, max_value=3000),
    st.integers(min_value=CHUNK - 2, max_value=CHUNK + 2),
    st.integers(min_value=3 * CHUNK - 2, max_value=3 * CHUNK + 2),
    st.integers(min_value=0, max_value=6 * CHUNK),
)


@settings(max_examples=40, deadline=None)
@given(size=SIZES, seed=st.binary(min_size=1, max_size=8), piece=st.integers(1, 3 * CHUNK))
def test_random_files_get_the_same_cids_as_aleph_cid(size: int, seed: bytes, piece: int):
    data = hashlib.shake_128(seed).digest(size) if size else b""
    importer = FileImporter(keep_blocks=False)
    for i in range(0, len(data), piece):
        importer.write(data[i : i + piece])
    _, result = importer.finish()
    hasher = aleph_cid.CidHasher.for_ipfs_v1_raw_leaves()
    hasher.update(data)
    assert result.cid.encode() == hasher.finalize()
    assert result.cid_v0 is not None
    assert result.cid_v0.encode() == aleph_cid.compute_cid(data)

"""Bytes in and out of the content store for FL: the recent-blob memory answers only for the
store that holds the blob, checks the expected sha256, and stays within its byte budget."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from parity.fl import store_io
from parity.fl.errors import ContentInvalid
from parity.storage.local import LocalContentStore


async def test_a_blob_written_to_one_store_is_not_read_from_another(tmp_path: Path) -> None:
    a = LocalContentStore(tmp_path / "a")
    b = LocalContentStore(tmp_path / "b")
    cid, sha = await store_io.put_bytes(a, b"update bytes")
    assert await store_io.get_bytes(a, cid, max_bytes=100, sha256=sha) == b"update bytes"
    with pytest.raises(ContentInvalid, match="no content"):
        await store_io.get_bytes(b, cid, max_bytes=100, sha256=sha)


async def test_a_remembered_blob_is_still_checked_against_the_expected_hash(
    tmp_path: Path,
) -> None:
    store = LocalContentStore(tmp_path)
    cid, _ = await store_io.put_bytes(store, b"model")
    other = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ContentInvalid, match="sha256"):
        await store_io.get_bytes(store, cid, max_bytes=100, sha256=other)
    # and the size cap: a remembered blob over it is read (and refused) by the store's rules
    with pytest.raises(ContentInvalid, match="at most 2 allowed"):
        await store_io.get_bytes(store, cid, max_bytes=2, sha256=None)


def test_the_memory_evicts_the_oldest_blobs_past_its_budget() -> None:
    memory = store_io.RecentBlobs(budget=10, largest=6)
    memory.add("a", b"aaaa", "ha")
    memory.add("b", b"bbbb", "hb")
    memory.add("big", b"x" * 7, "hx")  # larger than `largest`: not held
    assert memory.get("big") is None
    assert memory.get("a") == (b"aaaa", "ha")  # now the most recently used
    memory.add("c", b"cccc", "hc")  # 12 bytes > 10: the least recently used ("b") goes
    assert memory.get("b") is None
    assert memory.get("a") is not None and memory.get("c") is not None

"""The ContentStore contract: every adapter stores, reads, pins and collects the same way and
gives kubo's CIDs."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from parity.core.storage.multiformats import Cid
from parity.storage.errors import ContentNotFound
from parity.storage.ports import ContentStore
from tests.contract.vectors import EMPTY, HELLO, MULTI_MIB, ONE_CHUNK, QUICK, Vector


async def _pieces(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _read(store: ContentStore, cid: Cid, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([piece async for piece in store.cat(cid, start, end)])


@pytest.mark.parametrize("vector", QUICK, ids=lambda v: v.name)
async def test_put_gives_the_kubo_cids(store: ContentStore, vector: Vector):
    stored = await store.put(_pieces(vector.data(), 100_000))
    assert stored.cid.encode() == vector.v1
    assert stored.cid_v0 is not None and stored.cid_v0.encode() == vector.v0
    assert stored.size == vector.size
    assert await store.stat(stored.cid) == vector.size
    assert await _read(store, stored.cid) == vector.data()


async def test_stat_of_absent_content_is_none(store: ContentStore):
    assert await store.stat(Cid.parse(HELLO.v1)) is None
    assert await store.stat(Cid.parse(MULTI_MIB.v1)) is None


async def test_cat_of_absent_content_is_content_not_found(store: ContentStore):
    with pytest.raises(ContentNotFound):
        await _read(store, Cid.parse(MULTI_MIB.v1))


async def test_byte_ranges_read_back(store: ContentStore):
    data = MULTI_MIB.data()
    cid = (await store.put(_pieces(data))).cid
    chunk = 262144
    rng = random.Random(7)
    cases = [(0, 1), (chunk - 1, chunk + 1), (chunk, 2 * chunk), (len(data) - 5, len(data))]
    cases += [(0, None), (3 * chunk + 11, None)]
    for _ in range(10):
        a = rng.randrange(len(data))
        cases.append((a, min(len(data), a + rng.randrange(1, 3 * chunk))))
    for start, end in cases:
        assert await _read(store, cid, start, end) == data[start:end], (start, end)


async def test_the_cidv0_form_of_a_dag_root_names_the_same_content(store: ContentStore):
    data = MULTI_MIB.data()
    cid = (await store.put(_pieces(data))).cid
    v0 = cid.to_v0()
    assert await store.stat(v0) == len(data)
    assert await _read(store, v0, 10, 20) == data[10:20]


async def test_put_with_pin_pins_and_unpin_releases(store: ContentStore):
    stored = await store.put(_pieces(HELLO.data()), pin=True)
    assert stored.cid in await store.pins()
    await store.unpin(stored.cid)
    assert stored.cid not in await store.pins()
    await store.unpin(stored.cid)  # a no-op the second time


async def test_pin_of_stored_content_and_of_absent_content(store: ContentStore):
    stored = await store.put(_pieces(ONE_CHUNK.data()))
    assert stored.cid not in await store.pins()
    await store.pin(stored.cid)
    await store.pin(stored.cid)  # idempotent
    assert stored.cid in await store.pins()
    with pytest.raises(ContentNotFound):
        await store.pin(Cid.parse(MULTI_MIB.v1))


async def test_gc_removes_what_no_pin_reaches(store: ContentStore):
    pinned = await store.put(_pieces(MULTI_MIB.data()), pin=True)
    kept = await store.put(_pieces(HELLO.data()))
    loose = await store.put(_pieces(ONE_CHUNK.data()))
    report = await store.gc(keep=[kept.cid])
    assert report.removed_blocks >= 1
    assert await store.stat(loose.cid) is None
    assert await store.stat(kept.cid) == HELLO.size
    assert await _read(store, pinned.cid) == MULTI_MIB.data()


async def test_empty_upload_is_the_empty_file(store: ContentStore):
    stored = await store.put(_pieces(b""))
    assert stored.cid.encode() == EMPTY.v1 and stored.size == 0
    assert await _read(store, stored.cid) == b""


class Boom(Exception):
    pass


async def test_a_failing_upload_stream_fails_the_put_with_its_error(store: ContentStore):
    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * (3 << 20)
        raise Boom("client went away")

    with pytest.raises(Boom):
        await store.put(failing())


async def test_describe_says_what_and_whether_it_answers(store: ContentStore):
    info = await store.describe()
    assert info["kind"] == store.kind
    assert info["reachable"] is True

"""Bytes in and out of the content store for federated learning: global models, partitions,
held-out test splits, updates.

What the server writes here is pinned in the store, so garbage collection keeps it while no
account pins it; it needs no storage row for runners to fetch it: ``GET
/api/v1/storage/download/{cid}`` serves any CIDv1 the store holds to any authenticated caller
(a CID is a capability), runner tokens included. The database keeps only CID and sha256; the
sha256 is what a reader checks, so a store that returned other bytes is caught."""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator

from parity.core.storage.multiformats import Cid, CidError
from parity.fl.errors import ContentInvalid
from parity.storage.ports import ContentStore

CHUNK = 1024 * 1024
# Hashing more than this runs in a worker thread, off the event loop.
THREAD_HASH_BYTES = 1024 * 1024


async def sha256_hex(data: bytes) -> str:
    if len(data) > THREAD_HASH_BYTES:
        return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), CHUNK):
        yield bytes(view[start : start + CHUNK])


RECENT_BYTES = 64 << 20  # held per store, at most
RECENT_LARGEST = 4 << 20  # larger blobs are not held


class RecentBlobs:
    """The last blobs a process wrote to (or read from) one store, by CID, up to a byte budget:
    a round's updates are read back by its aggregation moments after they were written, and
    its new model by every next update's check. Content-addressed, so an entry never goes
    stale; kept per store object, so one store never answers for another."""

    def __init__(self, budget: int = RECENT_BYTES, largest: int = RECENT_LARGEST) -> None:
        self.budget = budget
        self.largest = largest
        self._held = 0
        self._blobs: OrderedDict[str, tuple[bytes, str]] = OrderedDict()

    def get(self, cid: str) -> tuple[bytes, str] | None:
        found = self._blobs.get(cid)
        if found is not None:
            self._blobs.move_to_end(cid)
        return found

    def add(self, cid: str, data: bytes, sha256: str) -> None:
        if len(data) > self.largest or cid in self._blobs:
            return
        self._blobs[cid] = (data, sha256)
        self._held += len(data)
        while self._held > self.budget:
            _, (old, _sha) = self._blobs.popitem(last=False)
            self._held -= len(old)


_RECENT: weakref.WeakKeyDictionary[ContentStore, RecentBlobs] = weakref.WeakKeyDictionary()


def recent(store: ContentStore) -> RecentBlobs:
    found = _RECENT.get(store)
    if found is None:
        found = _RECENT[store] = RecentBlobs()
    return found


async def put_bytes(store: ContentStore, data: bytes) -> tuple[str, str]:
    """Store ``data`` (pinned) and return its CIDv1 text and sha256 hex. Content-addressed: the
    same bytes give the same CID, so storing a recomputed object again changes nothing."""
    stored = await store.put(_chunks(data), pin=True)
    cid, sha256 = stored.cid.encode(), await sha256_hex(data)
    recent(store).add(cid, data, sha256)
    return cid, sha256


def parse_cid(text: str, *, field: str = "cid") -> Cid:
    """The CIDv1 a CID text names in this store; a 422 naming ``field`` when it is not one."""
    try:
        return Cid.parse(text).to_v1()
    except (CidError, ValueError) as exc:
        raise ContentInvalid(field, f"{text[:100]!r} is not a usable CID: {exc}") from None


async def get_bytes(
    store: ContentStore,
    cid: str,
    *,
    max_bytes: int,
    sha256: str | None,
    field: str = "cid",
) -> bytes:
    """The bytes stored under ``cid``, at most ``max_bytes`` of them, checked against
    ``sha256`` (hex) when given. Every refusal is a 422 naming ``field``: not a CID, not in
    the store, too large, or other bytes than the hash says."""
    root = parse_cid(cid, field=field)
    held = recent(store).get(root.encode())
    if held is not None and len(held[0]) <= max_bytes:
        if sha256 is not None and held[1] != sha256.lower():
            raise ContentInvalid(
                field, f"content {cid} has sha256 {held[1]}, not the expected {sha256}"
            )
        return held[0]
    size = await store.stat(root)
    if size is None:
        raise ContentInvalid(field, f"no content {cid} in this server's store")
    if size > max_bytes:
        raise ContentInvalid(field, f"content {cid} is {size} bytes; at most {max_bytes} allowed")
    parts: list[bytes] = []
    seen = 0
    async for piece in store.cat(root):
        seen += len(piece)
        if seen > max_bytes:  # the store's size was wrong: never hold more than allowed
            raise ContentInvalid(field, f"content {cid} exceeds {max_bytes} bytes")
        parts.append(piece)
    data = b"".join(parts)
    if sha256 is not None:
        actual = await sha256_hex(data)
        if actual != sha256.lower():
            raise ContentInvalid(
                field, f"content {cid} has sha256 {actual}, not the expected {sha256}"
            )
        recent(store).add(root.encode(), data, actual)
    return data


async def exists(store: ContentStore, cid: str, *, field: str = "cid") -> int:
    """The size of the content ``cid`` names; a 422 naming ``field`` when the store lacks it."""
    size = await store.stat(parse_cid(cid, field=field))
    if size is None:
        raise ContentInvalid(field, f"no content {cid} in this server's store")
    return size


def stream(store: ContentStore, cid: str) -> AsyncIterator[bytes]:
    """The stored file's bytes as the store yields them (for a download response)."""
    return store.cat(parse_cid(cid))

"""Storage use cases: upload (streamed into the content store, recorded after), read, pin with
per-account quotas, unpin, garbage collection.

A CID is a capability: any authenticated caller who knows it may read the content. Pins belong
to accounts and count against that account's quota; the store keeps what at least one account
pins. The database is the source of truth for pins; the store's own pin set follows it (set in
the same unit of work, released after commit, repaired by :func:`collect_garbage`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from parity.auth.schemas import Principal
from parity.core.storage.multiformats import Cid, CidError
from parity.db.hooks import after_commit
from parity.db.pagination import Cursor
from parity.db.session import Database
from parity.db.types import check_name
from parity.errors import InvalidInput
from parity.logging import get_logger
from parity.storage import repository as repo
from parity.storage.errors import (
    ContentNotFound,
    InvalidCid,
    PinNotFound,
    StorageQuotaExceeded,
    UploadTooLarge,
)
from parity.storage.models import StoragePin, StoredObject
from parity.storage.ports import ContentStore, GcReport, Stored
from parity.storage.schemas import ContentRead, PinRead, UsageRead

log = get_logger("parity.storage")

OBJECT_PRUNE_BATCH = 1000


@dataclass(frozen=True)
class StorageConfig:
    max_upload_bytes: int
    quota_bytes: int
    max_pins: int
    gateway_url: str  # "" when none is configured
    download_base: str  # absolute URL of .../storage/download/
    gc_grace_seconds: float


def parse_cid(text: str) -> Cid:
    try:
        return Cid.parse(text)
    except CidError as exc:
        raise InvalidCid(text, str(exc)) from None


# -- reading


async def _canonical(session: AsyncSession, cid: Cid) -> Cid:
    """The CIDv1 content a CID names: a plain-``ipfs add`` CIDv0 maps through its alias."""
    if cid.version == 0:
        alias = await repo.cid_for_v0(session, cid.encode())
        if alias is not None:
            return Cid.parse(alias)
    return cid.to_v1()


async def resolve(session: AsyncSession, store: ContentStore, text: str) -> tuple[Cid, int]:
    """The stored content a CID names and its size; ContentNotFound when the store lacks it."""
    cid = await _canonical(session, parse_cid(text))
    size = await store.stat(cid)
    if size is None:
        raise ContentNotFound(f"no content {text} in this server's store")
    return cid, size


def _content_read(
    cfg: StorageConfig,
    cid: Cid,
    size: int,
    obj: StoredObject | None,
    *,
    pinned: bool,
    retained: bool,
) -> ContentRead:
    text = cid.encode()
    gateway = f"{cfg.gateway_url.rstrip('/')}/ipfs/{text}" if cfg.gateway_url else None
    return ContentRead(
        cid=text,
        cid_v0=obj.cid_v0 if obj is not None else None,
        size=size,
        pinned=pinned,
        retained=retained,
        created_at=obj.created_at if obj is not None else None,
        gateway_url=gateway,
        download_url=cfg.download_base + text,
    )


async def describe(
    session: AsyncSession,
    store: ContentStore,
    cfg: StorageConfig,
    principal: Principal,
    text: str,
) -> ContentRead:
    cid, size = await resolve(session, store, text)
    key = cid.encode()
    obj = await repo.get_object(session, key)
    mine = await repo.get_pin(session, principal.address, key) is not None
    retained = mine or await repo.count_pins_of(session, key) > 0
    return _content_read(cfg, cid, size, obj, pinned=mine, retained=retained)


# -- uploading


def check_declared_size(cfg: StorageConfig, declared: int | None) -> None:
    """Refuse before reading a body whose declared length is already too large."""
    if declared is not None and declared > cfg.max_upload_bytes:
        raise _too_large(cfg)


def _too_large(cfg: StorageConfig) -> UploadTooLarge:
    return UploadTooLarge(
        f"uploads are limited to {cfg.max_upload_bytes} bytes (STORAGE_MAX_UPLOAD_BYTES)",
        details={"max_upload_bytes": cfg.max_upload_bytes},
    )


async def check_quota_room(
    session: AsyncSession, cfg: StorageConfig, owner: str, declared: int | None
) -> None:
    """Refuse early when pinning ``declared`` more bytes would exceed the ``owner`` account's
    quota (the pin itself re-checks under the usage row lock)."""
    usage = await repo.get_usage(session, owner)
    used = usage.pinned_bytes if usage is not None else 0
    count = usage.pin_count if usage is not None else 0
    _check_quota(cfg, owner, used, count, declared or 0)


def _check_quota(cfg: StorageConfig, address: str, used: int, count: int, adding: int) -> None:
    if used + adding > cfg.quota_bytes or count + 1 > cfg.max_pins:
        raise StorageQuotaExceeded(
            f"{address}: {_over_what(cfg, used, count, adding)} ({used} of "
            f"{cfg.quota_bytes} bytes and {count} of {cfg.max_pins} pins used); "
            "unpin something first",
            details={
                "quota_bytes": cfg.quota_bytes,
                "pinned_bytes": used,
                "requested_bytes": adding,
                "max_pins": cfg.max_pins,
                "pin_count": count,
            },
        )


def _over_what(cfg: StorageConfig, used: int, count: int, adding: int) -> str:
    """Which limit a new pin would pass: the pin count, the bytes it adds or, when its size is
    not known yet (a body of undeclared length), the bytes already pinned."""
    if count + 1 > cfg.max_pins:
        return "one more pin would exceed the pin limit (STORAGE_MAX_PINS)"
    if adding == 0:
        return "the storage quota (STORAGE_QUOTA_BYTES) is used up"
    return f"pinning {adding} more bytes would exceed the storage quota (STORAGE_QUOTA_BYTES)"


async def _limited(
    chunks: AsyncIterable[bytes], limit: int, cfg: StorageConfig
) -> AsyncIterator[bytes]:
    seen = 0
    async for piece in chunks:
        seen += len(piece)
        if seen > limit:
            raise _too_large(cfg)
        yield piece


async def store_stream(
    store: ContentStore, cfg: StorageConfig, chunks: AsyncIterable[bytes]
) -> Stored:
    """Stream a file into the store (no database session is held meanwhile). The store computes
    the CID as the bytes pass; nothing is pinned yet, so an upload that is refused later is left
    for garbage collection."""
    return await store.put(_limited(chunks, cfg.max_upload_bytes, cfg), pin=False)


async def record_upload(
    session: AsyncSession,
    store: ContentStore,
    cfg: StorageConfig,
    owner: str,
    stored: Stored,
    *,
    pin: bool,
    name: str | None,
    now: datetime,
) -> ContentRead:
    """Record stored content; with ``pin``, pinned for the ``owner`` account (its quota)."""
    key = stored.cid.encode()
    v0 = stored.cid_v0.encode() if stored.cid_v0 is not None else None
    obj = await repo.ensure_object(session, key, v0, stored.size, now)
    mine = False
    if pin:
        await _pin(session, store, cfg, owner, stored.cid, stored.size, name, now)
        mine = True
    else:
        mine = await repo.get_pin(session, owner, key) is not None
    retained = mine or await repo.count_pins_of(session, key) > 0
    return _content_read(cfg, stored.cid, stored.size, obj, pinned=mine, retained=retained)


# -- pins


async def _pin(
    session: AsyncSession,
    store: ContentStore,
    cfg: StorageConfig,
    address: str,
    cid: Cid,
    size: int,
    name: str | None,
    now: datetime,
) -> tuple[StoragePin, bool]:
    if name is not None:
        # The routes check names where they arrive (naming their field); this keeps any other
        # caller from storing what PostgreSQL refuses (NUL) or SQLite would keep.
        try:
            check_name(name)
        except ValueError as exc:
            raise InvalidInput("name", str(exc)) from None
    key = cid.encode()
    usage = await repo.lock_usage(session, address, now)
    existing = await repo.get_pin(session, address, key)
    if existing is not None:
        if name is not None and name != existing.name:
            existing.name = name
            await session.flush()
        return existing, False
    _check_quota(cfg, address, usage.pinned_bytes, usage.pin_count, size)
    row = StoragePin(
        id=uuid.uuid4(), cid=key, owner_address=address, size=size, name=name, created_at=now
    )
    await repo.add_pin(session, row)
    await repo.change_usage(session, address, size, 1, now)
    await store.pin(cid)  # last: if the store refuses, the rows roll back
    return row, True


async def pin_content(
    session: AsyncSession,
    store: ContentStore,
    cfg: StorageConfig,
    principal: Principal,
    text: str,
    name: str | None,
    now: datetime,
) -> tuple[PinRead, bool]:
    """Pin content the store holds for the caller; returns the pin and whether it is new."""
    cid, size = await resolve(session, store, text)
    await repo.ensure_object(session, cid.encode(), None, size, now)
    row, created = await _pin(session, store, cfg, principal.address, cid, size, name, now)
    return pin_read(row), created


async def unpin_content(
    session: AsyncSession, store: ContentStore, principal: Principal, text: str, now: datetime
) -> None:
    cid = await _canonical(session, parse_cid(text))
    key = cid.encode()
    await repo.lock_usage(session, principal.address, now)
    row = await repo.get_pin(session, principal.address, key)
    if row is None:
        raise PinNotFound(f"you do not pin {text}")
    await repo.delete_pin(session, row.id)
    await repo.change_usage(session, principal.address, -row.size, -1, now)
    if await repo.count_pins_of(session, key) == 0:

        async def release() -> None:
            # A pin committed meanwhile by someone else is re-pinned by collect_garbage.
            await store.unpin(cid)

        after_commit(session, release)


def pin_read(row: StoragePin) -> PinRead:
    return PinRead(id=row.id, cid=row.cid, size=row.size, name=row.name, created_at=row.created_at)


async def list_pins(
    session: AsyncSession, principal: Principal, limit: int, cursor: Cursor | None
) -> list[StoragePin]:
    return await repo.list_pins(session, principal.address, limit, cursor)


async def usage(session: AsyncSession, cfg: StorageConfig, principal: Principal) -> UsageRead:
    row = await repo.get_usage(session, principal.address)
    return UsageRead(
        address=principal.address,
        pinned_bytes=row.pinned_bytes if row is not None else 0,
        pin_count=row.pin_count if row is not None else 0,
        quota_bytes=cfg.quota_bytes,
        max_pins=cfg.max_pins,
        max_upload_bytes=cfg.max_upload_bytes,
    )


# -- garbage collection


@dataclass(frozen=True)
class GcResult:
    report: GcReport
    repinned: int
    lost: list[str]
    pruned_objects: int


async def collect_garbage(
    db: Database, store: ContentStore, now: datetime, grace_seconds: float
) -> GcResult:
    """Remove blocks no account pins. First re-pins in the store whatever the database says is
    pinned (repairs a lost release race); spares blocks younger than ``grace_seconds`` (uploads
    in flight); then forgets unpinned objects whose content is gone."""
    async with db.read_session() as session:
        roots = {Cid.parse(c) for c in await repo.pinned_cids(session)}
    repinned = 0
    lost: list[str] = []
    for cid in roots - await store.pins():
        try:
            await store.pin(cid)
            repinned += 1
        except ContentNotFound:
            lost.append(cid.encode())
            log.warning("pinned_content_missing", cid=cid.encode())
    async with db.read_session() as session:  # pins committed meanwhile are kept too
        roots |= {Cid.parse(c) for c in await repo.pinned_cids(session)}
    cutoff = now - timedelta(seconds=grace_seconds)
    report = await store.gc(keep=roots, older_than=cutoff.timestamp())
    pruned = await _prune_objects(db, store, cutoff)
    return GcResult(report, repinned, lost, pruned)


async def _prune_objects(db: Database, store: ContentStore, cutoff: datetime) -> int:
    async with db.read_session() as session:
        candidates = await repo.unpinned_objects_before(session, cutoff, OBJECT_PRUNE_BATCH)
    gone = [c for c in candidates if await store.stat(Cid.parse(c)) is None]
    if not gone:
        return 0
    async with db.transaction() as session:
        return await repo.delete_unpinned_objects(session, gone)

"""All storage SQL."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.pagination import Cursor, newest_first
from parity.storage.models import StoragePin, StorageUsage, StoredObject


async def _insert_ignore(
    session: AsyncSession, model: Any, values: dict[str, Any], key: str
) -> None:
    """INSERT … ON CONFLICT (key) DO NOTHING: concurrent first writers do not collide."""
    if session.get_bind().dialect.name == "postgresql":
        stmt: Any = postgresql.insert(model).values(**values)
    else:
        stmt = sqlite.insert(model).values(**values)
    await session.execute(stmt.on_conflict_do_nothing(index_elements=[key]))


async def ensure_object(
    session: AsyncSession, cid: str, cid_v0: str | None, size: int, now: datetime
) -> StoredObject:
    await _insert_ignore(
        session,
        StoredObject,
        {"cid": cid, "cid_v0": cid_v0, "size": size, "created_at": now},
        "cid",
    )
    row = await get_object(session, cid)
    assert row is not None
    if row.cid_v0 is None and cid_v0 is not None:
        row.cid_v0 = cid_v0
        await session.flush()
    return row


async def get_object(session: AsyncSession, cid: str) -> StoredObject | None:
    return (
        await session.execute(
            select(StoredObject)
            .where(StoredObject.cid == cid)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


async def cid_for_v0(session: AsyncSession, cid_v0: str) -> str | None:
    q = select(StoredObject.cid).where(StoredObject.cid_v0 == cid_v0).limit(1)
    return (await session.execute(q)).scalar_one_or_none()


async def lock_usage(session: AsyncSession, address: str, now: datetime) -> StorageUsage:
    """The account's usage row, created if missing, locked until commit (PostgreSQL; SQLite
    writers are serialized anyway)."""
    await _insert_ignore(
        session,
        StorageUsage,
        {"owner_address": address, "pinned_bytes": 0, "pin_count": 0, "updated_at": now},
        "owner_address",
    )
    q = (
        select(StorageUsage)
        .where(StorageUsage.owner_address == address)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(q)).scalar_one()


async def get_usage(session: AsyncSession, address: str) -> StorageUsage | None:
    return await session.get(StorageUsage, address)


async def change_usage(
    session: AsyncSession, address: str, delta_bytes: int, delta_pins: int, now: datetime
) -> None:
    await session.execute(
        update(StorageUsage)
        .where(StorageUsage.owner_address == address)
        .values(
            pinned_bytes=StorageUsage.pinned_bytes + delta_bytes,
            pin_count=StorageUsage.pin_count + delta_pins,
            updated_at=now,
        )
    )


async def get_pin(session: AsyncSession, address: str, cid: str) -> StoragePin | None:
    q = select(StoragePin).where(StoragePin.owner_address == address, StoragePin.cid == cid)
    return (await session.execute(q)).scalar_one_or_none()


async def add_pin(session: AsyncSession, pin: StoragePin) -> None:
    session.add(pin)
    await session.flush()


async def delete_pin(session: AsyncSession, pin_id: uuid.UUID) -> bool:
    res: Any = await session.execute(delete(StoragePin).where(StoragePin.id == pin_id))
    return bool(res.rowcount)


async def count_pins_of(session: AsyncSession, cid: str) -> int:
    q = select(func.count()).select_from(StoragePin).where(StoragePin.cid == cid)
    return int((await session.execute(q)).scalar_one())


async def list_pins(
    session: AsyncSession, address: str, limit: int, cursor: Cursor | None
) -> list[StoragePin]:
    q = select(StoragePin).where(StoragePin.owner_address == address)
    q = newest_first(q, StoragePin.created_at, StoragePin.id, cursor, limit)
    return list((await session.execute(q)).scalars())


async def pinned_cids(session: AsyncSession) -> set[str]:
    return set((await session.execute(select(StoragePin.cid).distinct())).scalars())


def _unpinned() -> Any:
    return ~select(StoragePin.id).where(StoragePin.cid == StoredObject.cid).exists()


async def unpinned_objects_before(session: AsyncSession, cutoff: datetime, limit: int) -> list[str]:
    q = (
        select(StoredObject.cid)
        .where(StoredObject.created_at < cutoff, _unpinned())
        .order_by(StoredObject.created_at)
        .limit(limit)
    )
    return list((await session.execute(q)).scalars())


async def delete_unpinned_objects(session: AsyncSession, cids: list[str]) -> int:
    res: Any = await session.execute(
        delete(StoredObject).where(StoredObject.cid.in_(cids), _unpinned())
    )
    return int(res.rowcount or 0)

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from parity.idempotency.models import IdempotencyRecord


async def find(session: AsyncSession, identity: str, key: str) -> IdempotencyRecord | None:
    q = select(IdempotencyRecord).where(
        IdempotencyRecord.identity == identity, IdempotencyRecord.key == key
    )
    return (await session.scalars(q)).first()


async def add(session: AsyncSession, record: IdempotencyRecord) -> None:
    session.add(record)
    await session.flush()


async def remove(session: AsyncSession, record: IdempotencyRecord) -> None:
    await session.delete(record)
    await session.flush()

"""All SQL of the identity domain."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ColumnElement, Row, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from parity.auth.models import Account, AuthNonce, AuthToken
from parity.db.pagination import Cursor, newest_first


async def ensure_account(session: AsyncSession, address: str, now: datetime) -> None:
    """Insert the account unless it exists; concurrent first sign-ins of one address race
    here, so the insert ignores a conflict instead of failing one of them."""
    dialect = session.get_bind().dialect.name
    ins = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        ins(Account)
        .values(address=address, created_at=now, last_login_at=None)
        .on_conflict_do_nothing(index_elements=["address"])
    )
    await session.execute(stmt)


async def touch_login(session: AsyncSession, address: str, now: datetime) -> None:
    await session.execute(
        update(Account).where(Account.address == address).values(last_login_at=now)
    )


async def add_nonce(session: AsyncSession, nonce: AuthNonce) -> None:
    session.add(nonce)
    await session.flush()


async def open_nonces(
    session: AsyncSession, address: str, now: datetime, limit: int, nonce: str | None
) -> list[AuthNonce]:
    q = select(AuthNonce).where(
        AuthNonce.address == address,
        AuthNonce.consumed_at.is_(None),
        AuthNonce.expires_at > now,
    )
    if nonce is not None:
        q = q.where(AuthNonce.nonce == nonce)
    q = q.order_by(AuthNonce.issued_at.desc()).limit(limit)
    return list((await session.scalars(q)).all())


async def consume_nonce(session: AsyncSession, nonce_id: uuid.UUID, now: datetime) -> bool:
    """Conditional update: only one transaction can consume a nonce."""
    res = await session.execute(
        update(AuthNonce)
        .where(AuthNonce.id == nonce_id, AuthNonce.consumed_at.is_(None))
        .values(consumed_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(res, "rowcount", 0) == 1)


async def add_token(session: AsyncSession, token: AuthToken) -> None:
    session.add(token)
    await session.flush()


# Built once: the token lookup runs on every request, so skip re-building the statement.
_FIND_TOKEN = select(
    AuthToken.id,
    AuthToken.kind,
    AuthToken.address,
    AuthToken.runner_id,
    AuthToken.expires_at,
    AuthToken.revoked_at,
).where(AuthToken.token_hash == bindparam("token_hash"))


TokenRow = Row[uuid.UUID, str, str, uuid.UUID | None, datetime | None, datetime | None]


async def find_token(db: AsyncSession | AsyncConnection, token_hash: str) -> TokenRow | None:
    """The columns identity needs (no ORM object), by the unique index on ``token_hash``."""
    return (await db.execute(_FIND_TOKEN, {"token_hash": token_hash})).first()


async def _revoke(session: AsyncSession, which: ColumnElement[bool], now: datetime) -> int:
    """Revoke the tokens ``which`` selects that are not revoked yet; how many were."""
    res = await session.execute(
        update(AuthToken)
        .where(which, AuthToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(res, "rowcount", 0))


async def revoke_token(session: AsyncSession, token_id: uuid.UUID, now: datetime) -> bool:
    return await _revoke(session, AuthToken.id == token_id, now) == 1


async def revoke_all(session: AsyncSession, address: str, now: datetime) -> int:
    return await _revoke(session, AuthToken.address == address, now)


async def revoke_runner_tokens(session: AsyncSession, runner_id: uuid.UUID, now: datetime) -> int:
    return await _revoke(session, AuthToken.runner_id == runner_id, now)


async def get_api_key(session: AsyncSession, key_id: uuid.UUID) -> AuthToken | None:
    tok = await session.get(AuthToken, key_id)
    return tok if tok is not None and tok.kind == "api_key" else None


async def list_api_keys(
    session: AsyncSession, address: str, limit: int, after: Cursor | None
) -> list[AuthToken]:
    q = select(AuthToken).where(AuthToken.address == address, AuthToken.kind == "api_key")
    q = newest_first(q, AuthToken.created_at, AuthToken.id, after, limit)
    return list((await session.scalars(q)).all())


async def count_accounts(session: AsyncSession) -> int:
    from sqlalchemy import func

    return int((await session.scalar(select(func.count()).select_from(Account))) or 0)

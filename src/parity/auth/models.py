from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from parity.db.base import Base


class Account(Base):
    __tablename__ = "accounts"

    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    created_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]


class AuthNonce(Base):
    __tablename__ = "auth_nonces"
    __table_args__ = (Index("ix_auth_nonces_address_open", "address", "consumed_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(42))
    nonce: Mapped[str] = mapped_column(String(64), unique=True)
    message: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    consumed_at: Mapped[datetime | None]


class AuthToken(Base):
    __tablename__ = "auth_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display_prefix: Mapped[str] = mapped_column(String(24))
    address: Mapped[str] = mapped_column(ForeignKey("accounts.address"), index=True)
    name: Mapped[str | None] = mapped_column(String(100))
    runner_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]

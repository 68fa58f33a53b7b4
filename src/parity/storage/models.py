"""Stored content (one row per CID first uploaded or pinned here), account pins, and each
account's pinned bytes (the quota counter, updated under a row lock)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from parity.db.base import Base


class StoredObject(Base):
    __tablename__ = "storage_objects"

    cid: Mapped[str] = mapped_column(String(100), primary_key=True)  # CIDv1, base32
    cid_v0: Mapped[str | None] = mapped_column(String(64), index=True)  # plain `ipfs add` CID
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(index=True)


class StoragePin(Base):
    __tablename__ = "storage_pins"
    __table_args__ = (
        UniqueConstraint("owner_address", "cid"),
        Index("ix_storage_pins_owner_created", "owner_address", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    cid: Mapped[str] = mapped_column(ForeignKey("storage_objects.cid"), index=True)
    owner_address: Mapped[str] = mapped_column(ForeignKey("accounts.address"))
    size: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]


class StorageUsage(Base):
    __tablename__ = "storage_usage"

    owner_address: Mapped[str] = mapped_column(ForeignKey("accounts.address"), primary_key=True)
    pinned_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    pin_count: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]

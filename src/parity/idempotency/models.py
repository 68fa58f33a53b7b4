from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from parity.db.base import Base


class IdempotencyRecord(Base):
    """The stored answer to a creating POST, replayed for the same key and identity (24 h)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("identity", "key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    identity: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(512))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)

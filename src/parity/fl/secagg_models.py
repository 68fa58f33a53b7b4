"""Secure aggregation (SecAgg+) inside one federated-learning round: the round's protocol
state and the stage messages the participants exchange through the server.

The server stores only what the protocol lets it see: public keys, share bundles sealed for
their recipient, hash commitments, masked vectors and the unmask shares of the last stage.
No row here ever holds an individual update in clear."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from parity.db.base import Base


class FLSecAggRound(Base):
    """One SecAgg+ round: its stage (``advertise_keys → share_keys → masked_input → unmask``,
    then ``done`` or ``failed``), the stage's deadline, and what fixes the round's protocol
    (the participant indices at open, the communication graph's seed, the vector size).
    ``survivors``/``dropped`` are set when the masked-input stage closes."""

    __tablename__ = "fl_secagg_rounds"

    round_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("fl_rounds.id", ondelete="CASCADE"), primary_key=True
    )
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("fl_sessions.id", ondelete="CASCADE"), index=True
    )
    stage: Mapped[str] = mapped_column(String(16), index=True)
    stage_deadline_at: Mapped[datetime]
    participants: Mapped[list[int]] = mapped_column(JSON)
    graph_seed: Mapped[str] = mapped_column(String(64))
    vector_size: Mapped[int] = mapped_column(Integer)
    # Per stage: its deadline and, once closed, when and who took part (``members``).
    stages: Mapped[dict[str, Any]] = mapped_column(JSON)
    survivors: Mapped[list[int] | None] = mapped_column(JSON)
    dropped: Mapped[list[int] | None] = mapped_column(JSON)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class FLSecAggMessage(Base):
    """One stage message. ``sender_index`` is a participant index (``None``: the server's own
    unmask request); ``recipient_index`` is the participant a message is relayed to (a sealed
    share bundle), ``None`` for a message to the server. Small fields sit in ``payload``
    (base64 for bytes); a masked vector or a sealed bundle sits in ``data``."""

    __tablename__ = "fl_secagg_messages"
    __table_args__ = (
        Index("ix_fl_secagg_messages_stage_sender", "round_id", "stage", "sender_index"),
        Index("ix_fl_secagg_messages_stage_recipient", "round_id", "stage", "recipient_index"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("fl_sessions.id", ondelete="CASCADE"), index=True
    )
    round_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("fl_rounds.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16))
    sender_index: Mapped[int | None] = mapped_column(Integer)
    recipient_index: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]

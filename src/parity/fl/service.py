"""Federated-learning sessions (ARCHITECTURE §4-§6): create (validated strictly, the dataset
checked in the store, the reward pool held in escrow in the same transaction), read and list
(the caller's; an operator's: all), cancel (open rounds end, their ``fl_train`` tasks are
cancelled, the pool is released), rounds, participants, metrics and the global model.
Starting a session and the rounds themselves live in ``start``, ``rounds`` and ``updates``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.auth.schemas import Principal
from parity.db.pagination import Cursor, decode_keyed, encode_keyed
from parity.errors import InvalidInput
from parity.fl import repository as repo
from parity.fl import rounds, store_io
from parity.fl.deps import FLDeps
from parity.fl.errors import (
    NoGlobalModel,
    RoundNotFound,
    SessionNotFound,
    SessionStateConflict,
)
from parity.fl.models import FLParticipant, FLRound, FLSession
from parity.fl.spec import SessionSpec, parse_session_create
from parity.ledger import pools
from parity.storage import service as storage_service
from parity.storage.errors import ContentNotFound

PENDING, ACTIVE, CANCELLED = "pending", "active", "cancelled"
CANCEL_REASON = "the federated-learning session was cancelled"
DATASET_FIELD = "training_data.dataset_cid"


# -- create ---------------------------------------------------------------------------------


async def _dataset_cid(session: AsyncSession, deps: FLDeps, text: str) -> str:
    """The CIDv1 the given dataset CID names in this store (a plain-``ipfs add`` CIDv0 of a
    file uploaded here maps to it); a 422 naming the field when the store lacks it."""
    try:
        cid, _ = await storage_service.resolve(session, deps.store, text)
    except ContentNotFound:
        raise InvalidInput(
            DATASET_FIELD,
            f"no content {text} in this server's store; upload the dataset first "
            "(POST /api/v1/storage/upload)",
        ) from None
    except InvalidInput as exc:  # not a CID at all
        raise InvalidInput(DATASET_FIELD, exc.message.partition(": ")[2] or exc.message) from None
    return cid.encode()


def _draw_seed(deps: FLDeps) -> int:
    return int.from_bytes(deps.tasks.random_bytes(4), "big")


async def create_session(
    session: AsyncSession, deps: FLDeps, principal: Principal, body: Mapping[str, Any]
) -> FLSession:
    """Validate the body, check the dataset is in the store, store the session (``pending``)
    and hold its reward pool. Reading and partitioning the data happen at start."""
    spec: SessionSpec = parse_session_create(body)
    training_data = spec.training_data_json()
    if spec.dataset_cid is not None:
        training_data["dataset_cid"] = await _dataset_cid(session, deps, spec.dataset_cid)
    seed = spec.seed if spec.seed is not None else _draw_seed(deps)
    training_data["seed"] = seed
    now = deps.clock.now()
    row = FLSession(
        id=uuid.uuid4(),
        creator_address=principal.address,
        name=spec.name,
        description=spec.description,
        model_type=spec.model_type,
        status=PENDING,
        failure_reason=None,
        current_round=0,
        total_rounds=spec.total_rounds,
        min_participants=spec.min_participants,
        max_participants=spec.max_participants,
        config=spec.config_json(),
        training_data=training_data,
        seed=seed,
        test_cid=None,
        test_sha256=None,
        global_model_cid=None,
        global_model_sha256=None,
        global_model_round=None,
        model_shapes=None,
        opt_state_cid=None,
        reward_pool=spec.reward_pool,
        created_at=now,
        updated_at=now,
        started_at=None,
        completed_at=None,
    )
    await repo.add(session, row)
    if deps.ledger is not None:
        # Stake-gated like all work; the pool is held only when the server prices work.
        await pools.reserve_pool(
            session,
            deps.ledger,
            source_type=rounds.POOL_SOURCE,
            source_id=str(row.id),
            client=principal.address,
            amount=spec.reward_pool or 0,
            what=f"the reward pool of federated-learning session {row.name!r}",
        )
    return row


# -- read -----------------------------------------------------------------------------------


async def get_session(
    session: AsyncSession, principal: Principal, session_id: uuid.UUID, *, lock: bool = False
) -> FLSession:
    """The caller's session (an operator's: any); someone else's answers like a missing one."""
    row = await repo.get_session(session, session_id, lock=lock)
    if row is None or (row.creator_address != principal.address and not principal.is_admin):
        raise SessionNotFound(f"federated-learning session {session_id} not found")
    return row


async def participant_count(session: AsyncSession, fl_session: FLSession) -> int:
    return (await repo.participant_counts(session, [fl_session.id])).get(fl_session.id, 0)


@dataclass(frozen=True)
class SessionPage:
    rows: list[FLSession]  # fetched with one past the page (see parity.db.pagination)
    participant_counts: dict[uuid.UUID, int]


async def list_sessions(
    session: AsyncSession, principal: Principal, cursor: Cursor | None, limit: int
) -> SessionPage:
    """The caller's sessions, newest first (an operator's list holds everyone's)."""
    creator = None if principal.is_admin else principal.address
    rows = await repo.list_sessions(session, creator, cursor, limit)
    counts = await repo.participant_counts(session, [r.id for r in rows[:limit]])
    return SessionPage(rows, counts)


# -- cancel ---------------------------------------------------------------------------------


async def cancel_session(
    session: AsyncSession, deps: FLDeps, principal: Principal, session_id: uuid.UUID
) -> FLSession:
    """pending/active → cancelled: open rounds fail with the reason, the ``fl_train`` tasks
    still waiting are cancelled (a running one is asked to stop), what is left of the reward
    pool is released. Cancelling a cancelled session answers with it; a finished one is 409."""
    row = await get_session(session, principal, session_id, lock=True)
    if row.status == CANCELLED:
        return row
    if row.status not in (PENDING, ACTIVE):
        raise SessionStateConflict(
            f"session is {row.status}; only a pending or active session can be cancelled",
            code="session_finished",
            details={"status": row.status},
        )
    now = deps.clock.now()
    for r in await repo.open_rounds(session, row.id):
        # The round ends first: a task-ended hook or the aggregation job that runs after this
        # commit finds it no longer open and leaves it alone.
        r.status = "failed"
        r.failure_reason = CANCEL_REASON
        r.closed_at = r.closed_at or now
        await session.flush()
        await rounds.end_waiting_slots(session, deps, r.id, CANCEL_REASON)
    row.status = CANCELLED
    # ``completed_at`` is when a session ended, whichever way (``status`` says which): a
    # client waiting for the end reads it for a cancelled session as for the others.
    row.completed_at = now
    row.updated_at = now
    await session.flush()
    await rounds.release_pool(session, deps, row)
    return row


# -- rounds, participants, metrics, model ---------------------------------------------------


def encode_round_cursor(number: int) -> str:
    return encode_keyed("round", number)


def decode_round_cursor(value: str | None) -> int | None:
    if not value:
        return None
    return decode_keyed(value, "round", lambda parts: int(*parts))


@dataclass(frozen=True)
class RoundPage:
    rounds: list[FLRound]
    slot_counts: dict[tuple[uuid.UUID, str], int]
    next_cursor: str | None


async def list_rounds(
    session: AsyncSession,
    principal: Principal,
    session_id: uuid.UUID,
    cursor: str | None,
    limit: int,
) -> RoundPage:
    """The session's rounds, newest first."""
    row = await get_session(session, principal, session_id)
    rounds = await repo.list_rounds(session, row.id, decode_round_cursor(cursor), limit)
    page = rounds[:limit]
    nxt = encode_round_cursor(page[-1].number) if len(rounds) > limit else None
    counts = await repo.slot_counts(session, [r.id for r in page])
    return RoundPage(page, counts, nxt)


async def get_round(
    session: AsyncSession, principal: Principal, session_id: uuid.UUID, number: int
) -> tuple[FLRound, dict[tuple[uuid.UUID, str], int]]:
    row = await get_session(session, principal, session_id)
    found = await repo.get_round(session, row.id, number)
    if found is None:
        raise RoundNotFound(f"session {session_id} has no round {number}")
    return found, await repo.slot_counts(session, [found.id])


@dataclass(frozen=True)
class ParticipantPage:
    participants: list[FLParticipant]
    slot_counts: dict[tuple[uuid.UUID, str], int]
    next_cursor: str | None


def encode_participant_cursor(p: FLParticipant) -> str:
    return encode_keyed("participant", p.participant_index, p.joined_at.isoformat(), p.id)


def _participant_key(parts: list[str]) -> repo.ParticipantKey:
    index, joined, id_ = parts
    return int(index), datetime.fromisoformat(joined), uuid.UUID(id_)


def decode_participant_cursor(value: str | None) -> repo.ParticipantKey | None:
    if not value:
        return None
    return decode_keyed(value, "participant", _participant_key)


async def list_participants(
    session: AsyncSession,
    principal: Principal,
    session_id: uuid.UUID,
    cursor: str | None,
    limit: int,
) -> ParticipantPage:
    """The session's participants by index (replaced ones beside their successors), a page
    of ``limit`` after ``cursor``."""
    row = await get_session(session, principal, session_id)
    after = decode_participant_cursor(cursor)
    found = await repo.list_participants(session, row.id, after, limit + 1)
    page = found[:limit]
    nxt = encode_participant_cursor(page[-1]) if len(found) > limit else None
    counts = await repo.slot_counts_by_participant(session, row.id, [p.id for p in page])
    return ParticipantPage(page, counts, nxt)


async def session_rounds(
    session: AsyncSession, principal: Principal, session_id: uuid.UUID
) -> tuple[FLSession, list[FLRound]]:
    """The session and all its rounds, oldest first (metrics)."""
    row = await get_session(session, principal, session_id)
    return row, await repo.rounds_in_order(session, row.id)


def require_model(fl_session: FLSession) -> str:
    """The global model's CID; 404 ``no_global_model`` before the session has one."""
    if fl_session.global_model_cid is None:
        raise NoGlobalModel(
            f"session {fl_session.id} has no global model yet (status {fl_session.status}); "
            "it gets one when it starts"
        )
    return fl_session.global_model_cid


async def model_file(deps: FLDeps, fl_session: FLSession) -> tuple[str, int]:
    """The global model's CID and size in the store (a download streams it)."""
    cid = require_model(fl_session)
    # A store that does not answer is a 503 (its own error), not a missing model.
    size = await deps.store.stat(store_io.parse_cid(cid))
    if size is None:
        raise NoGlobalModel(
            f"the global model {cid} of session {fl_session.id} is not in the store"
        )
    return cid, size

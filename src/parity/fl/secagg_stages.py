"""SecAgg+ rounds on the server: opening one, closing its stages, and unmasking the sum
(the protocol is :mod:`parity.core.fl.secagg`; its server functions
:mod:`parity.core.fl.secagg_server`).

A SecAgg+ round runs four stages inside the round's ``fl_train`` tasks, each with its own
deadline (``stage_timeout_seconds`` after it opened; the first three never past the round's
deadline): ``advertise_keys → share_keys → masked_input`` while the round is ``collecting``,
then ``unmask`` while it is ``unmasking``. A stage closes as soon as every participant still in
the round sent its message, or at its deadline; whoever did not is dropped (its task
cancelled), and the round fails — with its session, saying why — once fewer participants remain
than the round can unmask (``reconstruction_threshold``) or than it requires (``min_share``).
The masked-input stage replaces the plain model update: a slot counts as ``submitted`` when its
masked vector arrives. Unmasking runs in the rounds job, off the event loop and outside any
transaction; its result is the example-weighted mean delta of the survivors' updates (under
central DP their clipped mean plus the noise, :mod:`parity.fl.secagg_dp`), stored in
the content store (an aggregate: the server never holds an individual update in clear), and
the round goes on to ``aggregating`` where :func:`secure_mean` hands it to the aggregation.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.clock import utc_iso
from parity.core.fl.privacy_errors import SecAggError
from parity.core.fl.secagg_config import SecAggConfig
from parity.core.fl.secagg_server import unmask_request
from parity.db.hooks import after_commit
from parity.fl import rounds
from parity.fl import rounds_repository as rounds_repo
from parity.fl import secagg_repository as repo
from parity.fl.deps import FLDeps
from parity.fl.models import FLRound, FLRoundSlot, FLSession
from parity.fl.secagg_models import FLSecAggMessage, FLSecAggRound
from parity.fl.secagg_plan import (
    b64,
    config_of,
    enabled,
    layout_of,
    members,
    pid,
    setups_of,
    vector_size,
)
from parity.logging import get_logger
from parity.tasks import internal
from parity.waiters import Waiters

log = get_logger("parity.fl")
# What other modules use as ``secagg_stages.X`` (the plan's helpers live in secagg_plan).
__all__ = [
    "ADVERTISE",
    "BELL",
    "DONE",
    "FAILED",
    "MASKED",
    "ORDER",
    "SHARE",
    "STAGES",
    "UNMASK",
    "UNMASKING",
    "b64",
    "close_locked",
    "close_stage",
    "config_of",
    "due",
    "enabled",
    "fail_round",
    "layout_of",
    "mark_closed",
    "members",
    "open_round",
    "pid",
    "ring",
    "rings",
    "setups_of",
    "stage_due",
    "vector_size",
]

ADVERTISE = "advertise_keys"
SHARE = "share_keys"
MASKED = "masked_input"
UNMASK = "unmask"
STAGES = (ADVERTISE, SHARE, MASKED, UNMASK)
DONE = "done"
FAILED = "failed"
ORDER = {ADVERTISE: 0, SHARE: 1, MASKED: 2, UNMASK: 3, DONE: 4}
UNMASKING = "unmasking"  # fl_rounds.status while the unmask replies are collected
JOB_BATCH = 50
_VERB = {
    ADVERTISE: "advertised keys",
    SHARE: "shared keys",
    MASKED: "sent a masked input",
}
_MISSED = {
    ADVERTISE: "did not advertise keys in the advertise_keys stage",
    SHARE: "did not share keys in the share_keys stage",
    MASKED: "did not send a masked input in the masked_input stage",
}

# Long-polls of a round's stage messages wait here, woken when one of its stages closes.
BELL: Waiters[uuid.UUID] = Waiters()
_rings = [0]  # how many times any round's stage closed (a read begun before is stale)


def ring(round_id: uuid.UUID) -> None:
    """After the commit that closed a stage of the round (or ended it): wake its waiters."""
    _rings[0] += 1
    BELL.wake_key(round_id)


def rings() -> int:
    return _rings[0]


def _mark(state: FLSecAggRound, stage: str, **values: Any) -> None:
    stages = dict(state.stages or {})
    stages[stage] = {**stages.get(stage, {}), **values}
    state.stages = stages  # a new dict: the JSON column sees the change


def mark_closed(state: FLSecAggRound, now: datetime) -> None:
    """Record when the current stage ended (unless its close already did)."""
    if "closed_at" not in (state.stages or {}).get(state.stage, {}):
        _mark(state, state.stage, closed_at=utc_iso(now))
    state.updated_at = now


# -- opening ----------------------------------------------------------------------------------


async def open_round(
    session: AsyncSession,
    deps: FLDeps,
    fl_session: FLSession,
    round_: FLRound,
    indices: Sequence[int],
) -> dict[str, Any] | None:
    """For a SecAgg+ session: the round's protocol state (stage ``advertise_keys``) and what
    its ``fl_train`` tasks carry as ``secure_aggregation``; None for a plain session."""
    config = config_of(fl_session)
    if config is None:
        return None
    now = round_.opened_at
    deadline = min(now + timedelta(seconds=config.stage_timeout_seconds), round_.deadline_at)
    graph_seed = deps.tasks.random_bytes(32).hex()
    participants = sorted(indices)
    session.add(
        FLSecAggRound(
            round_id=round_.id,
            session_id=fl_session.id,
            stage=ADVERTISE,
            stage_deadline_at=deadline,
            participants=participants,
            graph_seed=graph_seed,
            vector_size=vector_size(layout_of(fl_session)),
            stages={ADVERTISE: {"deadline_at": utc_iso(deadline)}},
            survivors=None,
            dropped=None,
            created_at=now,
            updated_at=now,
        )
    )
    return {**asdict(config), "participants": participants, "graph_seed": graph_seed}


# -- closing the first three stages -----------------------------------------------------------


def _too_few(round_: FLRound, config: SecAggConfig, count: int, stage: str) -> str:
    need = max(config.reconstruction_threshold, round_.required_updates)
    return (
        f"round {round_.number}: secure aggregation: {count} of {round_.participants} "
        f"participants {_VERB[stage]} by the end of the {stage} stage, {need} required "
        f"(reconstruction_threshold {config.reconstruction_threshold}, required updates "
        f"{round_.required_updates})"
    )


async def cancel_active(
    session: AsyncSession, deps: FLDeps, round_id: uuid.UUID, reason: str
) -> None:
    """Cancel the tasks of the round's participants that sent their masked input and still
    hold their task (the others end with their slot)."""
    for slot in await repo.slots_with_active_tasks(session, round_id, [rounds_repo.SUBMITTED]):
        await internal.cancel_internal_task(session, deps.tasks, slot.task_id, reason)


async def fail_round(
    session: AsyncSession,
    deps: FLDeps,
    fl_session: FLSession,
    round_: FLRound,
    state: FLSecAggRound,
    reason: str,
    now: datetime,
) -> None:
    """The round fails with ``reason`` (and its session, while active); every task of the
    round still running is cancelled."""
    if round_.status in (rounds_repo.COLLECTING, UNMASKING):
        await rounds_repo.set_round_status(
            session,
            round_.id,
            round_.status,
            status=rounds_repo.FAILED,
            closed_at=round_.closed_at or now,
            failure_reason=reason,
        )
    mark_closed(state, now)
    state.stage = FAILED
    state.updated_at = now
    await rounds.end_waiting_slots(session, deps, round_.id, reason)
    await cancel_active(session, deps, round_.id, reason)
    await session.flush()
    if fl_session.status == "active":
        await rounds.fail_session(session, deps, fl_session, reason, now)
    log.info("fl_secagg_round_failed", round_id=str(round_.id), reason=reason[:300])
    rid = round_.id
    after_commit(session, lambda: ring(rid))


async def _drop_others(
    session: AsyncSession,
    deps: FLDeps,
    slots: Sequence[FLRoundSlot],
    keep: set[int],
    reason: str,
) -> None:
    for slot in slots:
        if (
            slot.status == rounds_repo.ASSIGNED
            and slot.participant_index not in keep
            and await rounds_repo.drop_slot(session, slot.id, reason)
        ):
            await internal.cancel_internal_task(session, deps.tasks, slot.task_id, reason)


def stage_due(
    state: FLSecAggRound, slots: Sequence[FLRoundSlot], sent: set[int], now: datetime
) -> bool:
    """A stage closes at its deadline, or once every participant still waiting sent."""
    waiting = [
        s for s in slots if s.status == rounds_repo.ASSIGNED and s.participant_index not in sent
    ]
    return now >= state.stage_deadline_at or not waiting


async def due(session: AsyncSession, deps: FLDeps, state: FLSecAggRound) -> bool:
    """Whether :func:`close_stage` would close the round's stage now (read only)."""
    if state.stage not in (ADVERTISE, SHARE, MASKED):
        return False
    slots = await rounds_repo.slots_of(session, state.round_id)
    sent = await repo.senders(session, state.round_id, state.stage)
    return stage_due(state, slots, sent, deps.clock.now())


async def close_stage(session: AsyncSession, deps: FLDeps, round_id: uuid.UUID) -> bool:
    """Close the round's current stage when it is due (advertise, share or masked input), in
    the caller's transaction; False when it is not due or not one of those."""
    locked = await repo.lock_round(session, round_id)
    if locked is None:
        return False
    fl_session, round_, state = locked
    if state.stage not in (ADVERTISE, SHARE, MASKED):
        return False
    slots = await rounds_repo.slots_of(session, round_id)
    sent = await repo.senders(session, round_id, state.stage)
    return await close_locked(session, deps, fl_session, round_, state, slots, sent)


async def close_locked(
    session: AsyncSession,
    deps: FLDeps,
    fl_session: FLSession,
    round_: FLRound,
    state: FLSecAggRound,
    slots: Sequence[FLRoundSlot],
    sent: set[int],
) -> bool:
    """:func:`close_stage` with the session, round and state already locked and the round's
    slots and the stage's senders read in the caller's transaction (a stage message that may
    be the stage's last): who sent goes on, the others are dropped."""
    if state.stage not in (ADVERTISE, SHARE, MASKED):
        return False
    now = deps.clock.now()
    if round_.status != rounds_repo.COLLECTING or fl_session.status != "active":
        why = round_.failure_reason or f"the session is {fl_session.status}"
        await fail_round(session, deps, fl_session, round_, state, why, now)
        return True
    if not stage_due(state, slots, sent, now):
        return False
    config = config_of(fl_session)
    assert config is not None
    stage = state.stage
    status = {s.participant_index: s.status for s in slots}
    wanted = rounds_repo.SUBMITTED if stage == MASKED else rounds_repo.ASSIGNED
    took_part = {i for i in sent if status.get(i) == wanted}
    if stage != ADVERTISE:
        took_part &= set(members(state, SHARE if stage == MASKED else ADVERTISE))
    late = f"round {round_.number}: this participant {_MISSED[stage]} before its deadline"
    await _drop_others(session, deps, slots, took_part, late)
    _mark(state, stage, closed_at=utc_iso(now), members=sorted(took_part))
    if len(took_part) < max(config.reconstruction_threshold, round_.required_updates):
        await fail_round(
            session,
            deps,
            fl_session,
            round_,
            state,
            _too_few(round_, config, len(took_part), stage),
            now,
        )
        return True
    if stage == MASKED:
        return await _open_unmask(session, deps, fl_session, round_, state, config, took_part, now)
    nxt = SHARE if stage == ADVERTISE else MASKED
    deadline = min(now + timedelta(seconds=config.stage_timeout_seconds), round_.deadline_at)
    _next_stage(session, state, nxt, deadline, now)
    return True


def _next_stage(
    session: AsyncSession, state: FLSecAggRound, stage: str, deadline: datetime, now: datetime
) -> None:
    state.stage = stage
    state.stage_deadline_at = deadline
    state.updated_at = now
    _mark(state, stage, deadline_at=utc_iso(deadline))
    rid = state.round_id
    after_commit(session, lambda: ring(rid))


async def _open_unmask(
    session: AsyncSession,
    deps: FLDeps,
    fl_session: FLSession,
    round_: FLRound,
    state: FLSecAggRound,
    config: SecAggConfig,
    survivors: set[int],
    now: datetime,
) -> bool:
    """Masked inputs are in: the round is ``unmasking`` and the survivors are asked for the
    shares that remove the masks (core :func:`unmask_request`, refused below the threshold)."""
    sharers = members(state, SHARE)
    setups = setups_of(fl_session, round_, state, config)
    try:
        request = unmask_request(setups, [pid(i) for i in sharers], [pid(i) for i in survivors])
    except SecAggError as exc:
        reason = f"round {round_.number}: secure aggregation: {exc.reason}"
        await fail_round(session, deps, fl_session, round_, state, reason, now)
        return True
    state.survivors = sorted(survivors)
    state.dropped = sorted(set(sharers) - survivors)
    session.add(
        FLSecAggMessage(
            id=uuid.uuid4(),
            session_id=fl_session.id,
            round_id=round_.id,
            round=round_.number,
            stage=UNMASK,
            sender_index=None,
            recipient_index=None,
            payload={
                "survivors": [int(u) for u in request.survivors],
                "dropped": [int(u) for u in request.dropped],
            },
            data=None,
            created_at=now,
        )
    )
    await rounds_repo.set_round_status(
        session, round_.id, rounds_repo.COLLECTING, status=UNMASKING, closed_at=now
    )
    deadline = now + timedelta(seconds=config.stage_timeout_seconds)
    _next_stage(session, state, UNMASK, deadline, now)
    return True

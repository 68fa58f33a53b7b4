"""SecAgg+ stage messages over HTTP (``…/sessions/{id}/rounds/{n}/secagg/{stage}``): a
participant posts its own message for a stage and long-polls the messages addressed to it.

Posting (runner token, fenced by the claim token of the participant's ``fl_train`` task, which
stays leased for the whole round) is refused with 409 ``stage_closed`` naming the stage's
deadline once it passed or the stage closed, 409 ``stage_not_open`` before the stage opens,
422 naming the field for a malformed message and 422 ``secagg_refused`` for one the protocol
refuses (a copied key, shares sent to a participant that is not a neighbour, a vector value
outside the modulus). A repeat of an accepted message answers the same again; a different one is
409 ``secagg_message_exists``. The message that completes a stage closes it at once; the
masked input also records the participant's reported figures on its slot (it stands in for the
plain model update), and the unmask reply completes the participant's task.

Reading answers ``ready: false`` until the stage's messages are final (the stage closed; for
``unmask``, the request is out), waiting up to ``wait`` seconds (30 at most) without holding a
database connection: a round's waiters are woken when one of its stages closes, and check again
every few seconds in case another replica closed it. Messages by stage: ``advertise_keys`` —
the neighbours' public keys; ``share_keys`` — the sealed bundles sent to the caller;
``masked_input`` — none; ``unmask`` — the server's request naming survivors and dropped.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.hooks import after_commit
from parity.db.session import Database
from parity.errors import Conflict, InvalidInput
from parity.fl import rounds_repository as rounds_repo
from parity.fl import secagg_messages as messages
from parity.fl import secagg_repository as repo
from parity.fl import secagg_stages as stages
from parity.fl.deps import FLDeps
from parity.fl.errors import NotAParticipant, RoundClosed, RoundNotFound
from parity.fl.models import FLParticipant, FLSession
from parity.fl.spec_fields import (
    check_finite_tree,
    read_mapping,
    read_str,
    refuse_unknown,
    required,
)
from parity.tasks import lifecycle

MAX_WAIT_SECONDS = 30.0
MAX_TOKEN = 512


class NotSecAggRound(Conflict):
    """Stage messages for a round that does not run secure aggregation."""

    code = "secure_aggregation_off"


class SecureAggregationRequired(Conflict):
    """A plain model update for a session that runs secure aggregation."""

    code = "secure_aggregation_required"


class StageClosed(Conflict):
    code = "stage_closed"


class StageNotOpen(Conflict):
    code = "stage_not_open"


class MessageExists(Conflict):
    code = "secagg_message_exists"


def refuse_plain_update(fl_session: FLSession, round_number: int) -> None:
    """A SecAgg+ session takes masked inputs only: a plain update would put one participant's
    update in clear on the server."""
    if stages.enabled(fl_session):
        raise SecureAggregationRequired(
            f"session {fl_session.id} uses secure aggregation: post the masked input to "
            f"/api/v1/federated-learning/sessions/{fl_session.id}/rounds/{round_number}"
            f"/secagg/{stages.MASKED}, never a plain model update",
            details={"round": round_number, "stage": stages.MASKED},
        )


def check_stage(value: str) -> str:
    if value not in stages.STAGES:
        raise InvalidInput("stage", f"unknown stage {value!r}; valid: {', '.join(stages.STAGES)}")
    return value


async def _caller(
    session: AsyncSession, runner_id: uuid.UUID, session_id: uuid.UUID, number: int
) -> messages.Caller:
    found = await repo.round_by_number(session, session_id, number)
    if found is None:
        raise RoundNotFound(f"session {session_id} has no round {number}")
    fl_session, round_, state = found
    config = stages.config_of(fl_session)
    if state is None or config is None:
        raise NotSecAggRound(f"round {number} of session {session_id} is not a SecAgg+ round")
    slot = await repo.slot_of_runner(session, round_.id, runner_id)
    if slot is None:
        raise NotAParticipant(f"this runner holds no slot in round {number} of {session_id}")
    return messages.Caller(fl_session, round_, state, slot, config)


def _check_round(caller: messages.Caller) -> None:
    round_, state, slot = caller.round_, caller.state, caller.slot
    details = {"round": round_.number, "status": round_.status}
    if state.stage == stages.FAILED or round_.status == rounds_repo.FAILED:
        why = round_.failure_reason or f"round {round_.number} failed"
        raise RoundClosed(why, details=details)
    if slot.status == rounds_repo.DROPPED:
        raise RoundClosed(
            f"this runner was dropped from round {round_.number}: {slot.drop_reason}",
            details=details,
        )


def _check_post(caller: messages.Caller, stage: str, now: datetime) -> None:
    """The stage is the round's current one and its deadline has not passed."""
    _check_round(caller)
    state, number = caller.state, caller.round_.number
    info = (state.stages or {}).get(stage, {})
    details = {
        "round": number,
        "stage": stage,
        "current_stage": state.stage,
        "deadline_at": info.get("deadline_at"),
    }
    current = stages.ORDER.get(state.stage, len(stages.ORDER))
    if current > stages.ORDER[stage]:
        raise StageClosed(
            f"the {stage} stage of round {number} is closed: it closed at "
            f"{info.get('closed_at')} (its deadline was {info.get('deadline_at')})",
            details=details,
        )
    if current < stages.ORDER[stage]:
        raise StageNotOpen(
            f"the {stage} stage of round {number} is not open yet: the round is in its "
            f"{state.stage} stage",
            details=details,
        )
    if now >= state.stage_deadline_at:
        raise StageClosed(
            f"the {stage} stage of round {number} closed at its deadline "
            f"{state.stage_deadline_at.isoformat()}",
            details={**details, "deadline_at": state.stage_deadline_at.isoformat()},
        )
    allowed = {
        stages.ADVERTISE: None,
        stages.SHARE: stages.members(state, stages.ADVERTISE),
        stages.MASKED: stages.members(state, stages.SHARE),
        stages.UNMASK: state.survivors or [],
    }[stage]
    if allowed is not None and caller.index not in allowed:
        raise RoundClosed(
            f"this runner is not part of the {stage} stage of round {number}", details=details
        )


# -- posting ---------------------------------------------------------------------------------


def _claim_token(value: Any) -> str:
    return read_str(
        required({"claim_token": value}, "claim_token", "claim_token"),
        "claim_token",
        max_length=MAX_TOKEN,
    )


async def post_message(
    db: Database,
    deps: FLDeps,
    runner_id: uuid.UUID,
    session_id: uuid.UUID,
    number: int,
    stage: str,
    body: Mapping[str, Any],
) -> dict[str, Any]:
    """Accept a participant's message for ``stage`` (see the module docstring)."""
    stage = check_stage(stage)
    body = read_mapping(body, "body")
    refuse_unknown(body, messages.KEYS[stage], "")
    check_finite_tree(body)
    token = _claim_token(body.get("claim_token"))
    figures = messages.figures(body) if stage == stages.MASKED else None
    async with db.transaction() as session:
        found = await _caller(session, runner_id, session_id, number)
        locked = await repo.lock_round(session, found.round_.id)
        if locked is None:
            raise RoundNotFound(f"session {session_id} has no round {number}")
        caller = await _caller(session, runner_id, session_id, number)
        now = deps.clock.now()
        stored = await repo.messages(session, caller.round_.id, stage, sender=caller.index)
        if stored:
            _check_round(caller)
            built = await messages.BUILDERS[stage](session, caller, body, now)
            if messages.same(stored, built):
                return messages.answer(caller, stage)
            raise MessageExists(
                f"this participant already posted a different {stage} message in round {number}",
                details={"round": number, "stage": stage},
            )
        _check_post(caller, stage, now)
        await lifecycle.current_attempt(session, runner_id, caller.slot.task_id, token)
        built = await messages.BUILDERS[stage](session, caller, body, now)
        session.add_all(built)
        if figures is not None:
            await _record_figures(session, caller, figures, now)
        if stage == stages.UNMASK:
            await _complete_task(session, deps, runner_id, caller, token)
        else:
            await session.flush()
            if await stages.due(session, deps, caller.state):
                await stages.close_stage(session, deps, caller.round_.id)
        return messages.answer(caller, stage)


async def _record_figures(
    session: AsyncSession, caller: messages.Caller, figures: messages.Figures, now: datetime
) -> None:
    """The masked input stands in for the update: the slot counts as submitted, with what the
    participant reports (its examples never more than the partition the server gave it)."""
    slot = caller.slot
    participant = await session.get(FLParticipant, slot.participant_id)
    known = participant.num_examples if participant is not None else None
    slot.status = rounds_repo.SUBMITTED
    slot.num_examples = min(figures.data_size, known) if known else figures.data_size
    slot.loss = figures.loss
    slot.accuracy = figures.accuracy
    slot.training_time_ms = figures.training_time_ms
    slot.submitted_at = now


async def _complete_task(
    session: AsyncSession,
    deps: FLDeps,
    runner_id: uuid.UUID,
    caller: messages.Caller,
    token: str,
) -> None:
    """The unmask reply is a participant's last message: its task completes with it; the last
    reply wakes the rounds job, which unmasks the sum."""
    slot = caller.slot
    report = lifecycle.Report(
        output=json.dumps({"round": caller.round_.number, "secure_aggregation": "unmasked"}),
        usage={
            "data_size": slot.num_examples,
            "loss": slot.loss,
            "accuracy": slot.accuracy,
            "training_time_ms": slot.training_time_ms,
        },
    )
    await lifecycle.complete(session, deps.tasks, runner_id, slot.task_id, token, report)
    await session.flush()
    waiting = await repo.slots_with_active_tasks(session, caller.round_.id, [rounds_repo.SUBMITTED])
    if not waiting:
        after_commit(session, deps.rounds_now.set)


# -- reading ---------------------------------------------------------------------------------


def _ready(caller: messages.Caller, stage: str) -> bool:
    current = caller.state.stage
    if stage == stages.UNMASK:
        return current in (stages.UNMASK, stages.DONE)
    return stages.ORDER.get(current, -1) > stages.ORDER[stage]


async def read_messages(
    db: Database,
    deps: FLDeps,
    runner_id: uuid.UUID,
    session_id: uuid.UUID,
    number: int,
    stage: str,
    *,
    claim_token: str | None,
    wait: float,
    recheck_seconds: float,
) -> dict[str, Any]:
    """The messages of ``stage`` addressed to the caller once they are final (see the module
    docstring); ``ready: false`` when ``wait`` seconds passed first."""
    stage = check_stage(stage)
    token = _claim_token(claim_token)
    give_up = time.monotonic() + min(max(wait, 0.0), MAX_WAIT_SECONDS)
    fenced = False
    while True:
        async with db.read_session() as session:
            caller = await _caller(session, runner_id, session_id, number)
            _check_round(caller)
            if not fenced:
                await lifecycle.current_attempt(session, runner_id, caller.slot.task_id, token)
                fenced = True
            if _ready(caller, stage):
                return _read_answer(
                    caller, stage, True, await messages.relayed(session, caller, stage)
                )
            overdue = (
                caller.state.stage == stage
                and stage != stages.UNMASK
                and deps.clock.now() >= caller.state.stage_deadline_at
            )
        round_id = caller.round_.id
        if overdue:
            # Its deadline passed and the rounds job has not closed it yet: close it now.
            async with db.transaction() as session:
                await stages.close_stage(session, deps, round_id)
            continue
        remaining = give_up - time.monotonic()
        if remaining <= 0:
            return _read_answer(caller, stage, False, [])
        await stages.BELL.wait(round_id, min(remaining, recheck_seconds))


def _read_answer(
    caller: messages.Caller, stage: str, ready: bool, relayed: list[dict[str, Any]]
) -> dict[str, Any]:
    state = caller.state
    return {
        "session_id": str(caller.fl_session.id),
        "round": caller.round_.number,
        "stage": stage,
        "ready": ready,
        "current_stage": state.stage,
        "stage_deadline_at": (state.stages or {}).get(stage, {}).get("deadline_at"),
        "messages": relayed,
    }

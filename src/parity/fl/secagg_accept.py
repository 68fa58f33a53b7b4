"""Accepting SecAgg+ stage messages: the checks a message passes and the transaction that stores
it, for a batch of one round's stage at a time (:mod:`parity.fl.secagg_inbox`).

One transaction per batch: the session, the round and its SecAgg+ state locked in that order
(on SQLite read in one statement: its one writer needs no row locks), the round's slots with
their tasks' claims, and the stage's messages to the server, each read once; then every
message is checked on its own (the stage is the round's current one and open, the sender a
participant still in it holding its task's current claim, the message as the protocol wants
it) and the accepted ones inserted together. A refused message is refused alone: its checks
run before anything of it is written. The batch's last message that completes the stage
closes it in the same transaction, which keeps what the close made final for the stage's
waiters (:mod:`parity.fl.secagg_relay`); unmask replies complete their participants' tasks,
and once no survivor holds its task the rounds job is woken to unmask the sum.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.clock import utc_iso
from parity.core.tasks.states import ACTIVE
from parity.db.hooks import after_commit
from parity.errors import Conflict, ParityError
from parity.fl import rounds_repository as rounds_repo
from parity.fl import secagg_messages as messages
from parity.fl import secagg_relay as relay
from parity.fl import secagg_repository as repo
from parity.fl import secagg_stages as stages
from parity.fl import update_sql
from parity.fl.deps import FLDeps
from parity.fl.errors import NotAParticipant, RoundClosed, RoundNotFound
from parity.fl.examples import cap_of, counted_examples, fixes_first_count
from parity.fl.spec_update import Figures
from parity.tasks import lifecycle
from parity.tasks.queue.executors import SessionExecutor

_ACTIVE = frozenset(s.value for s in ACTIVE)


class NotSecAggRound(Conflict):
    """Stage messages for a round that does not run secure aggregation."""

    code = "secure_aggregation_off"


class StageClosed(Conflict):
    code = "stage_closed"


class StageNotOpen(Conflict):
    code = "stage_not_open"


class MessageExists(Conflict):
    code = "secagg_message_exists"


@dataclass
class Pending:
    """One participant's stage message on its way in, and what became of it: ``caller`` once
    accepted (or recognised as a repeat), ``error`` when refused."""

    runner_id: uuid.UUID
    body: Mapping[str, Any]
    token: str
    figures: Figures | None
    caller: messages.Caller | None = None
    error: Exception | None = None


def check_round(caller: messages.Caller) -> None:
    """The round still runs and goes on with the caller."""
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


def check_post(caller: messages.Caller, stage: str, now: datetime) -> None:
    """The stage is the round's current one and its deadline has not passed."""
    check_round(caller)
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
            f"{utc_iso(state.stage_deadline_at)}",
            details={**details, "deadline_at": utc_iso(state.stage_deadline_at)},
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


async def accept_batch(
    session: AsyncSession,
    deps: FLDeps,
    session_id: uuid.UUID,
    number: int,
    stage: str,
    batch: list[Pending],
) -> None:
    """Store the batch's messages in the caller's transaction (see the module docstring),
    setting each one's outcome; a repeat of an accepted message changes nothing."""
    fl_session, round_, state = await repo.lock_round_by_number(session, session_id, number)
    if fl_session is None or round_ is None:
        raise RoundNotFound(f"session {session_id} has no round {number}")
    config = stages.config_of(fl_session)
    if state is None or config is None:
        raise NotSecAggRound(f"round {number} of session {session_id} is not a SecAgg+ round")
    claims = {c.slot.runner_id: c for c in await repo.slots_with_claims(session, round_.id)}
    stored = await repo.sent_to_server(session, round_.id, messages.CHECKED_AGAINST[stage])
    seen = {name: dict(by_sender) for name, by_sender in stored.items()}
    now = deps.clock.now()
    accepted: dict[int, messages.Built] = {}
    for p in batch:
        try:
            claim = claims.get(p.runner_id)
            if claim is None:
                raise NotAParticipant(
                    f"this runner holds no slot in round {number} of {session_id}"
                )
            caller = messages.Caller(fl_session, round_, state, claim.slot, config)
            rows = await _accept_one(session, deps, caller, claim, stage, p, seen, accepted, now)
        except ParityError as exc:
            p.error = exc
            continue
        p.caller = caller
        if rows:
            accepted[caller.index] = rows
            seen[stage][caller.index] = next(r.payload for r in rows if r.recipient_index is None)
    if not accepted:
        return
    await session.flush()
    if stage == stages.UNMASK:
        survivors = await repo.slots_with_active_tasks(session, round_.id, [rounds_repo.SUBMITTED])
        if not survivors:  # every reply is in (or its task ended): time to unmask
            after_commit(session, deps.wake)
        return
    slots = [c.slot for c in claims.values()]
    sent = set(seen[stage])
    if not stages.stage_due(state, slots, sent, now):
        return
    await stages.close_locked(session, deps, fl_session, round_, state, slots, sent)
    # What the close made final, kept for its waiters (woken by the close): none reads it.
    final = relay.REPLY_STAGE[stage]
    if relay.is_final(state.stage, final):
        bundles = await repo.relayed_bundles(session, round_.id) if stage == stages.SHARE else None
        made = relay.relay_of(fl_session, round_, state, final, seen.get(stages.ADVERTISE), bundles)
        snapshot = relay.snapshot_of(fl_session, round_, state)
        after_commit(session, functools.partial(relay.RELAYS.prime, snapshot, made))


async def _accept_one(
    session: AsyncSession,
    deps: FLDeps,
    caller: messages.Caller,
    claim: repo.SlotClaim,
    stage: str,
    p: Pending,
    seen: dict[str, dict[int, dict[str, Any]]],
    accepted: dict[int, messages.Built],
    now: datetime,
) -> messages.Built | None:
    """One message's checks and rows (None: a repeat of the accepted one). Everything that can
    refuse it runs before any of it is written."""
    number = caller.round_.number
    if caller.index in seen[stage]:
        before = accepted.get(caller.index) or await repo.messages(
            session, caller.round_.id, stage, sender=caller.index
        )
        check_round(caller)
        if messages.same(before, messages.BUILDERS[stage](caller, p.body, now, seen)):
            return None
        raise MessageExists(
            f"this participant already posted a different {stage} message in round {number}",
            details={"round": number, "stage": stage},
        )
    check_post(caller, stage, now)
    if stage != stages.UNMASK and not lifecycle.holds_current_claim(
        claim.task_runner_id, claim.task_status, claim.task_token_hash, p.runner_id, p.token
    ):
        # Not the task's current claim as read: the queue's fence says why (or lets it by).
        await lifecycle.current_attempt(session, p.runner_id, claim.slot.task_id, p.token)
    rows = messages.BUILDERS[stage](caller, p.body, now, seen)
    if stage == stages.UNMASK:  # the last message: its task completes with it (fenced there)
        await _complete_task(session, deps, p.runner_id, caller, p.token)
    session.add_all(rows)
    if p.figures is not None:
        await _record_figures(session, caller, claim.partition_rows, p.figures, now)
    return rows


async def _record_figures(
    session: AsyncSession,
    caller: messages.Caller,
    known: int | None,
    figures: Figures,
    now: datetime,
) -> None:
    """The masked input stands in for the update: the slot counts as submitted, with what the
    participant reports (its examples never more than the partition the server gave it or,
    with runner-local data, than its first accepted report and the session's cap:
    :mod:`parity.fl.examples`)."""
    slot = caller.slot
    training_data = caller.fl_session.training_data
    slot.status = rounds_repo.SUBMITTED
    slot.num_examples = counted_examples(figures.data_size, known, cap_of(training_data))
    if fixes_first_count(training_data, known):
        await update_sql.fix_first_count(
            SessionExecutor(session), slot.participant_id, slot.num_examples
        )
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
    """The unmask reply is a participant's last message: its task completes with it (refused,
    with nothing written, when the claim is not the task's current one)."""
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

"""SecAgg+ stage messages over HTTP (``…/sessions/{id}/rounds/{n}/secagg/{stage}``): a
participant posts its own message for a stage and receives the messages addressed to it, in
the answer of the post (``?wait=S``) or by a long-poll of the stage.

Posting (runner token, fenced by the claim token of the participant's ``fl_train`` task, which
stays leased for the whole round) is refused with 409 ``stage_closed`` naming the stage's
deadline once it passed or the stage closed, 409 ``stage_not_open`` before the stage opens,
422 naming the field for a malformed message and 422 ``secagg_refused`` for one the protocol
refuses (a copied key, shares sent to a participant that is not a neighbour, a vector value
outside the modulus). A repeat of an accepted message answers the same again; a different one is
409 ``secagg_message_exists``. The message that completes a stage closes it at once, in its
own transaction (the round's slots and the stage's senders are read once, under the round's
locks, for both the checks and the close); the masked input also records the participant's
reported figures on its slot (it stands in for the plain model update), and the unmask reply
completes the participant's task.

With ``wait``, the answer of the first three stages' posts carries ``reply``: what the
participant needs next, as the long-poll of that stage answers it (the neighbours' keys after
``advertise_keys``, the bundles sent to it after ``share_keys``, the unmask request after
``masked_input``), so one request per stage does what a post and a long-poll did. When the
round went on without the participant while it waited, the post still answers 200 (its
message is in) and ``reply`` carries the long-poll's refusal as ``error``.

Reading answers ``ready: false`` until the stage's messages are final (the stage closed; for
``unmask``, the request is out), waiting up to ``wait`` seconds (30 at most) without holding a
database connection (:mod:`parity.fl.secagg_relay`). Messages by stage: ``advertise_keys`` —
the neighbours' public keys; ``share_keys`` — the sealed bundles sent to the caller;
``masked_input`` — none; ``unmask`` — the server's request naming survivors and dropped.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.session import Database
from parity.errors import Conflict, InvalidInput
from parity.fl import secagg_accept as accept
from parity.fl import secagg_messages as messages
from parity.fl import secagg_relay as relay
from parity.fl import secagg_repository as repo
from parity.fl import secagg_stages as stages
from parity.fl.deps import FLDeps
from parity.fl.errors import NotAParticipant, RoundClosed, RoundNotFound
from parity.fl.models import FLSession
from parity.fl.secagg_accept import MessageExists, NotSecAggRound, StageClosed, StageNotOpen
from parity.fl.secagg_inbox import Inbox
from parity.fl.spec_fields import (
    check_finite_tree,
    read_mapping,
    read_str,
    refuse_unknown,
    required,
)
from parity.fl.spec_update import parse_figures
from parity.tasks import lifecycle

__all__ = [
    "MessageExists",
    "NotSecAggRound",
    "SecureAggregationRequired",
    "StageClosed",
    "StageNotOpen",
    "check_stage",
    "post_message",
    "read_messages",
    "refuse_plain_update",
]

MAX_TOKEN = 512


class SecureAggregationRequired(Conflict):
    """A plain model update for a session that runs secure aggregation."""

    code = "secure_aggregation_required"


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
    *,
    wait: float | None = None,
    recheck_seconds: float = 2.0,
) -> dict[str, Any]:
    """Accept a participant's message for ``stage`` (see the module docstring). With ``wait``
    (not for ``unmask``, the last stage) the answer's ``reply`` carries what the participant
    needs next, as the long-poll of its stage would answer: the neighbours' keys after
    ``advertise_keys``, the bundles sent to it after ``share_keys``, the unmask request after
    ``masked_input``, waiting for them up to ``wait`` seconds."""
    stage = check_stage(stage)
    body = read_mapping(body, "body")
    refuse_unknown(body, messages.KEYS[stage], "")
    check_finite_tree(body)
    token = _claim_token(body.get("claim_token"))
    # The masked input's figures (in clear: not the update), as a plain update reports them.
    figures = parse_figures(body) if stage == stages.MASKED else None
    pending = accept.Pending(runner_id, body, token, figures)
    run = functools.partial(_run_batch, db, deps, session_id, number, stage)
    await INBOX.submit((session_id, number, stage), pending, run)
    if pending.error is not None:
        raise pending.error
    caller = pending.caller
    assert caller is not None
    out = messages.answer(caller, stage)
    reply_stage = relay.REPLY_STAGE.get(stage)
    if wait is None or reply_stage is None:
        return out
    try:
        out["reply"] = await relay.await_relay(
            db,
            deps,
            caller.round_.id,
            caller.index,
            reply_stage,
            wait=wait,
            recheck_seconds=recheck_seconds,
        )
    except RoundClosed as exc:  # the message is in; the round went on without the caller
        error = {"code": exc.code, "message": exc.message, "details": exc.details}
        out["reply"] = {"stage": reply_stage, "ready": False, "messages": [], "error": error}
    return out


# One round's messages for one stage, batched (:mod:`parity.fl.secagg_inbox`).
INBOX: Inbox[tuple[uuid.UUID, int, str], accept.Pending] = Inbox()


async def _run_batch(
    db: Database,
    deps: FLDeps,
    session_id: uuid.UUID,
    number: int,
    stage: str,
    batch: list[accept.Pending],
) -> None:
    """One transaction for the batch; when it fails as a whole (the round is gone, the
    database refused it), each of its messages is tried again on its own, so each gets its
    own answer."""
    try:
        async with db.transaction() as session:
            await accept.accept_batch(session, deps, session_id, number, stage, batch)
    except Exception as exc:
        if len(batch) == 1:
            batch[0].caller, batch[0].error = None, exc
            return
        for p in batch:
            p.caller, p.error = None, None
            await _run_batch(db, deps, session_id, number, stage, [p])


# -- reading ---------------------------------------------------------------------------------


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
    async with db.read_session() as session:
        caller = await _caller(session, runner_id, session_id, number)
        accept.check_round(caller)
        await lifecycle.current_attempt(session, runner_id, caller.slot.task_id, token)
    return await relay.await_relay(
        db,
        deps,
        caller.round_.id,
        caller.index,
        stage,
        wait=wait,
        recheck_seconds=recheck_seconds,
    )

"""Opening a round, and ending a session (ARCHITECTURE §4-§5, FL "Round rules").

A round gives every active participant one ``fl_train`` task, routed to its runner only
(``tasks.internal``: an FL task never moves), and one slot that records whether its update
arrived. Between rounds a participant whose runner is gone is replaced by an eligible runner
not yet in the session (it takes over the index and the partition); without one it has no slot
that round and counts as dropped. With runner-local data a stand-in's example count is fixed
afresh by its own first update (it trains on its own copy of the data set). Everything here
runs in the caller's transaction."""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.clock import utc_iso
from parity.core.fl.aggregators import MethodConfig, parse_method
from parity.core.fl.model import ModelSpec, parse_model_spec
from parity.core.tasks.states import TaskType
from parity.fl import events, privacy, secagg_dp, secagg_stages
from parity.fl import repository as session_repo
from parity.fl import rounds_repository as repo
from parity.fl.deps import FLDeps
from parity.fl.models import FLParticipant, FLRound, FLRoundSlot, FLSession
from parity.fl.views import MODEL_FORMAT
from parity.ledger import pools
from parity.runners.models import Runner
from parity.tasks import handoff, internal, runner_side

POOL_SOURCE = "fl_session"


@dataclass(frozen=True)
class RoundSettings:
    """What the round machinery reads of a session's stored (already validated) config."""

    model: ModelSpec
    method: MethodConfig
    train_config: dict[str, Any]
    min_share: float | None
    round_timeout_seconds: float | None
    max_update_norm: float | None


def settings_of(fl_session: FLSession) -> RoundSettings:
    """The session's round settings, parsed by the FL core from its stored config."""
    config = fl_session.config
    model = parse_model_spec(fl_session.model_type, config["model_config"])
    method = parse_method(config["aggregation_method"], config.get("aggregation_params"))
    train = {
        "learning_rate": float(config["learning_rate"]),
        "batch_size": int(config["batch_size"]),
        "local_epochs": int(config["local_epochs"]),
        "mu": float(method.params.get("mu", 0.0)),
    }
    timeout = config.get("round_timeout_seconds")
    share, norm = config.get("min_share"), config.get("max_update_norm")
    return RoundSettings(
        model=model,
        method=method,
        train_config=train,
        min_share=None if share is None else float(share),
        round_timeout_seconds=None if timeout is None else float(timeout),
        max_update_norm=None if norm is None else float(norm),
    )


def required_updates(settings: RoundSettings, participants: int) -> int:
    """Every participant, or ``ceil(min_share * k)`` of them; never fewer than the aggregation
    method needs (Krum), never more than the round has; none for a sampled round that drew
    nobody (it aggregates noise alone)."""
    if participants == 0:
        return 0
    if settings.min_share is None:
        need = participants
    else:
        # The small slack keeps a product such as 0.7 * 10 = 7.000000000000001 at 7.
        need = math.ceil(settings.min_share * participants - 1e-9)
    need = max(need, settings.method.info.min_updates(settings.method.params), 1)
    return min(need, max(participants, 1))


def task_seed(session_seed: int, number: int, index: int) -> int:
    """The local-shuffle seed of one participant in one round (32 bits, stable)."""
    digest = hashlib.sha256(f"{session_seed}:{number}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _data(fl_session: FLSession, participant: FLParticipant, k: int) -> dict[str, Any]:
    data = fl_session.training_data
    if data.get("runner_dataset"):
        return {
            "kind": "runner_dataset",
            "name": data["runner_dataset"],
            "partition": {
                "strategy": data["split_strategy"],
                "options": dict(data.get("metadata") or {}),
                "seed": fl_session.seed,
                "num_participants": k,
                "participant_index": participant.participant_index,
                "test_split": data.get("test_split"),
            },
        }
    return {
        "kind": "partition",
        "cid": participant.partition_cid,
        "sha256": participant.partition_sha256,
        "format": "npz",
        "rows": participant.num_examples,
    }


def task_config(
    deps: FLDeps,
    fl_session: FLSession,
    settings: RoundSettings,
    round_: FLRound,
    participant: FLParticipant,
    k: int,
) -> dict[str, Any]:
    """The ``fl_train`` task config, exactly as runners read it (the FL contract)."""
    return {
        "session_id": str(fl_session.id),
        "round_id": str(round_.id),
        "round": round_.number,
        "participant_index": participant.participant_index,
        "num_participants": k,
        "model_type": fl_session.model_type,
        "model_config": dict(fl_session.config["model_config"]),
        "global_model": {
            "cid": round_.model_in_cid,
            "sha256": round_.model_in_sha256,
            "format": MODEL_FORMAT,
        },
        "data": _data(fl_session, participant, k),
        "train_config": dict(settings.train_config),
        "seed": task_seed(fl_session.seed, round_.number, participant.participant_index),
        "deadline_at": utc_iso(round_.deadline_at),
        "update_limits": {
            "max_norm": settings.max_update_norm,
            "max_json_bytes": deps.max_update_json_bytes,
        },
        # What the runner applies itself: local DP, or central DP's clip in a SecAgg+ round.
        "privacy": privacy.task_privacy(fl_session) or secagg_dp.task_privacy(fl_session),
    }


# -- runners ---------------------------------------------------------------------------------


async def eligible_runners(
    session: AsyncSession,
    dataset: str | None,
    exclude: Iterable[uuid.UUID] = (),
) -> list[Runner]:
    """Runners a session may take now, least loaded first (active claims over slots), then
    by id: online, not draining, not banned, advertising FL (and ``dataset`` when named)."""
    skip = set(exclude)
    found = [
        r
        for r in await repo.fl_runners(session)
        if r.id not in skip and (dataset is None or dataset in (r.fl_datasets or []))
    ]
    claims = await runner_side.active_counts(session, [r.id for r in found])
    return sorted(
        found,
        key=lambda r: (claims.get(r.id, 0) / max(r.max_concurrent_tasks, 1), str(r.id)),
    )


def can_push(runner: Runner | None) -> bool:
    """Whether an offer to this runner is pushed (it has a push URL); the others are woken
    from their long-poll."""
    return runner is not None and bool(runner.webhook_url and runner.webhook_secret)


def _usable(runner: Runner | None) -> bool:
    return (
        runner is not None
        and runner.status == "online"
        and runner.banned_at is None
        and not runner.drain_requested
    )


async def _replace_gone(
    session: AsyncSession,
    fl_session: FLSession,
    participants: list[FLParticipant],
    runners: dict[uuid.UUID, Runner],
    now: datetime,
) -> list[FLParticipant]:
    """Participants whose runner can take a task now, a replacement standing in for each
    gone runner where one is free (added to ``runners``); a participant left without one gets
    no slot."""
    gone = [p for p in participants if not _usable(runners.get(p.runner_id))]
    if not gone:
        return participants
    dataset = fl_session.training_data.get("runner_dataset")
    spare = await eligible_runners(session, dataset, exclude=[p.runner_id for p in participants])
    result = [p for p in participants if p not in gone]
    for old, new_runner in zip(gone, spare, strict=False):
        old.status = repo.REPLACED
        old.left_at = now
        stand_in = FLParticipant(
            id=uuid.uuid4(),
            session_id=fl_session.id,
            runner_id=new_runner.id,
            participant_index=old.participant_index,
            status=repo.ACTIVE_PARTICIPANT,
            partition_cid=old.partition_cid,
            partition_sha256=old.partition_sha256,
            # Runner-local data: the count was the old runner's word, not the stand-in's.
            num_examples=None if dataset else old.num_examples,
            label_counts=old.label_counts,
            joined_at=now,
            left_at=None,
        )
        await session_repo.add(session, stand_in)
        runners[new_runner.id] = new_runner
        result.append(stand_in)
    return sorted(result, key=lambda p: p.participant_index)


# -- opening a round -------------------------------------------------------------------------


async def open_round(
    session: AsyncSession, deps: FLDeps, fl_session: FLSession, number: int, now: datetime
) -> FLRound:
    """Open round ``number`` from the session's current global model: the round row, one
    targeted ``fl_train`` task (offered, pushed to a runner with a push URL) and one slot per
    participant whose runner can take it."""
    settings = settings_of(fl_session)
    participants = await repo.active_participants(session, fl_session.id)
    k = len(participants)
    runners = await repo.runners_by_id(session, [p.runner_id for p in participants])
    if number > 1:
        participants = await _replace_gone(session, fl_session, participants, runners, now)
    # With DP participant sampling the round takes a Poisson sample (its own size); else all.
    participants, size = privacy.sample_round(fl_session, participants, k)
    timeout = settings.round_timeout_seconds or deps.round_timeout_seconds
    assert fl_session.global_model_cid is not None and fl_session.global_model_sha256 is not None
    round_ = FLRound(
        id=uuid.uuid4(),
        session_id=fl_session.id,
        number=number,
        status=repo.COLLECTING,
        participants=size,
        required_updates=required_updates(settings, size),
        model_in_cid=fl_session.global_model_cid,
        model_in_sha256=fl_session.global_model_sha256,
        model_out_cid=None,
        model_out_sha256=None,
        metrics=None,
        failure_reason=None,
        opened_at=now,
        deadline_at=now + timedelta(seconds=timeout),
        closed_at=None,
        completed_at=None,
    )
    await session_repo.add(session, round_)
    await _assign(session, deps, fl_session, settings, round_, participants, runners, k)
    fl_session.current_round = number
    fl_session.updated_at = now
    await session.flush()
    return round_


async def _assign(
    session: AsyncSession,
    deps: FLDeps,
    fl_session: FLSession,
    settings: RoundSettings,
    round_: FLRound,
    participants: list[FLParticipant],
    runners: dict[uuid.UUID, Runner],
    k: int,
) -> None:
    """One task offered to the participant's runner, and one slot, per participant; the task
    claimed at once for a participant whose runner's long-poll waits here (``tasks.handoff``)."""
    items = []
    # A SecAgg+ session's round also gets its protocol state; its tasks carry the settings.
    secure = await secagg_stages.open_round(
        session, deps, fl_session, round_, [p.participant_index for p in participants]
    )
    for p in participants:
        config = task_config(deps, fl_session, settings, round_, p, k)
        if secure is not None:
            config["secure_aggregation"] = secure
        items.append(
            internal.Routed(
                title=f"FL {fl_session.name[:160]}: round {round_.number}, "
                f"participant {p.participant_index}",
                config=config,
                runner_id=p.runner_id,
                push=can_push(runners.get(p.runner_id)),
            )
        )
    tasks = await internal.create_routed_internal_tasks(
        session,
        deps.tasks,
        task_type=TaskType.FL_TRAIN,
        creator=fl_session.creator_address,
        items=items,
        max_attempts=1,
    )
    session.add_all(
        FLRoundSlot(
            id=uuid.uuid4(),
            round_id=round_.id,
            session_id=fl_session.id,
            participant_id=p.id,
            participant_index=p.participant_index,
            runner_id=p.runner_id,
            task_id=task.id,
            status=repo.ASSIGNED,
            update_cid=None,
            update_sha256=None,
            num_examples=None,
            loss=None,
            accuracy=None,
            training_time_ms=None,
            update_norm=None,
            drop_reason=None,
            submitted_at=None,
        )
        for p, task in zip(participants, tasks, strict=True)
    )
    # A participant whose long-poll waits here gets its task's claim from this transaction.
    for p, task in zip(participants, tasks, strict=True):
        await handoff.hand_over(session, deps.tasks, task.id, p.runner_id)


# -- ending ----------------------------------------------------------------------------------


async def end_waiting_slots(
    session: AsyncSession, deps: FLDeps, round_id: uuid.UUID, reason: str
) -> int:
    """Drop the round's slots still waiting for an update and cancel their tasks."""
    n = 0
    for slot in await repo.slots_of(session, round_id):
        if slot.status == repo.ASSIGNED and await repo.drop_slot(session, slot.id, reason):
            await internal.cancel_internal_task(session, deps.tasks, slot.task_id, reason)
            n += 1
    return n


async def release_pool(session: AsyncSession, deps: FLDeps, fl_session: FLSession) -> None:
    """Return what the session's reward pool still holds to its creator."""
    if deps.ledger is None or not fl_session.reward_pool:
        return
    await pools.release_pool(
        session, deps.ledger, source_type=POOL_SOURCE, source_id=str(fl_session.id)
    )


async def fail_session(
    session: AsyncSession, deps: FLDeps, fl_session: FLSession, reason: str, now: datetime
) -> None:
    """The session fails with ``reason``: pool released, ``fl.session.failed`` sent."""
    fl_session.status = "failed"
    fl_session.failure_reason = reason
    fl_session.completed_at = now
    fl_session.updated_at = now
    await session.flush()
    await release_pool(session, deps, fl_session)
    await events.emit_session_event(session, deps, events.SESSION_FAILED, fl_session, reason=reason)


async def complete_session(
    session: AsyncSession, deps: FLDeps, fl_session: FLSession, now: datetime
) -> None:
    fl_session.status = "completed"
    fl_session.completed_at = now
    fl_session.updated_at = now
    await session.flush()
    await release_pool(session, deps, fl_session)
    await events.emit_session_event(
        session,
        deps,
        events.SESSION_COMPLETED,
        fl_session,
        global_model={
            "round": fl_session.global_model_round,
            "cid": fl_session.global_model_cid,
            "sha256": fl_session.global_model_sha256,
        },
    )

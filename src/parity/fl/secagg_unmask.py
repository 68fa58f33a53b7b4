"""The last SecAgg+ stage on the server: removing the masks from the sum of the survivors'
masked inputs, and the rounds-job step that moves SecAgg+ rounds along.

:func:`finish_unmask` reads the round's stage messages, lets the FL core sum the masked vectors
and rebuild, from the survivors' shares, each survivor's self-mask seed and each dropped
participant's mask key (a tampered share is outvoted and named, or fails the round when too few
honest ones are left), and decodes the exact sum into the example-weighted mean delta — off the
event loop and outside any transaction (under central DP, the equally weighted mean of clipped
deltas with the noise already added, :mod:`parity.fl.secagg_dp`: nothing less private is ever
stored). It stores that mean (an aggregate) in the content store and, in one transaction that
starts by checking the stage is still ``unmask``, moves the round ``unmasking → aggregating``;
the aggregation then reads it back with :func:`secure_mean`.
"""

from __future__ import annotations

import asyncio
import base64
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.fl.aggregation import Weights
from parity.core.fl.errors import FLConfigError
from parity.core.fl.privacy_errors import SecAggError
from parity.core.fl.quantize import Layout, decode_sum
from parity.core.fl.secagg import (
    KeyAdvert,
    MaskedInput,
    RoundSetup,
    UnmaskReply,
    UnmaskRequest,
)
from parity.core.fl.secagg_config import SecAggConfig
from parity.core.fl.secagg_server import UnmaskResult, sum_masked, unmask_sum
from parity.core.fl.tensors import decode, encode
from parity.db.hooks import after_commit
from parity.db.session import Database
from parity.errors import Conflict
from parity.fl import rounds_repository as rounds_repo
from parity.fl import secagg_dp, store_io
from parity.fl import secagg_repository as repo
from parity.fl import secagg_stages as stages
from parity.fl.deps import FLDeps
from parity.fl.models import FLRound, FLSession
from parity.fl.secagg_models import FLSecAggMessage, FLSecAggRound
from parity.logging import get_logger

log = get_logger("parity.fl")

HEADER_SLACK = 1024 * 1024


class SecureSumMissing(Conflict):
    """An aggregating SecAgg+ round without its unmasked mean (it cannot be aggregated)."""

    code = "secure_sum_missing"


@dataclass(frozen=True)
class Inputs:
    """What unmasking needs, read from the round's stage messages."""

    fl_session: FLSession
    round_: FLRound
    setups: dict[str, RoundSetup]
    config: SecAggConfig
    layout: Layout
    adverts: dict[str, KeyAdvert]
    commitments: dict[str, bytes]
    inputs: list[MaskedInput]
    request: UnmaskRequest
    replies: list[UnmaskReply]


def _bytes(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def _shares(payload: dict[str, Any], key: str) -> dict[str, bytes]:
    return {str(owner): _bytes(text) for owner, text in (payload.get(key) or {}).items()}


async def _read(
    session: AsyncSession, fl_session: FLSession, round_: FLRound, state: FLSecAggRound
) -> Inputs:
    config = stages.config_of(fl_session)
    assert config is not None and state.survivors is not None and state.dropped is not None
    advertisers = set(stages.members(state, stages.ADVERTISE))
    sharers = set(stages.members(state, stages.SHARE))
    survivors = set(state.survivors)

    by_stage: dict[str, list[FLSecAggMessage]] = {stage: [] for stage in stages.STAGES}
    for m in await repo.messages(session, round_.id, None, to_server=True):
        by_stage[m.stage].append(m)
    adverts = {
        stages.pid(m.sender_index): KeyAdvert(
            stages.pid(m.sender_index), _bytes(m.payload["c_public"]), _bytes(m.payload["s_public"])
        )
        for m in by_stage[stages.ADVERTISE]
        if m.sender_index in advertisers
    }
    commitments = {
        stages.pid(m.sender_index): _bytes(m.payload["commitment"])
        for m in by_stage[stages.SHARE]
        if m.sender_index in sharers
    }
    inputs = [
        MaskedInput(
            stages.pid(m.sender_index), np.frombuffer(m.data or b"", "<u8").astype(np.uint64)
        )
        for m in by_stage[stages.MASKED]
        if m.sender_index in survivors
    ]
    replies = [
        UnmaskReply(
            stages.pid(m.sender_index),
            _shares(m.payload, "self_mask_shares"),
            _shares(m.payload, "key_shares"),
        )
        for m in by_stage[stages.UNMASK]
        if m.sender_index is not None and m.sender_index in survivors
    ]
    request = UnmaskRequest(
        tuple(sorted(stages.pid(i) for i in state.survivors)),
        tuple(sorted(stages.pid(i) for i in state.dropped)),
    )
    return Inputs(
        fl_session,
        round_,
        stages.setups_of(fl_session, round_, state, config),
        config,
        stages.layout_of(fl_session),
        adverts,
        commitments,
        inputs,
        request,
        replies,
    )


def unmask(found: Inputs) -> tuple[dict[str, Any], UnmaskResult, dict[str, Any]]:
    """The survivors' example-weighted mean delta per tensor (under central DP their equally
    weighted mean plus the noise), the unmasking's result (who survived, who dropped, which
    shares were refused) and the DP figures. Pure but for the noise."""
    masked_sum, _ = sum_masked(found.setups, found.commitments, found.inputs)
    result = unmask_sum(
        found.setups, found.adverts, found.commitments, masked_sum, found.request, found.replies
    )
    m = len(result.survivors)
    dp = secagg_dp.central_dp(found.fl_session)
    if dp is None:
        return decode_sum(result.total, m, found.config, found.layout), result, {}
    mean, figures = secagg_dp.noised_mean(dp, result.total, m, found.config, found.layout)
    return mean, result, figures


def _unmasked_blob(found: Inputs) -> tuple[bytes, UnmaskResult, dict[str, Any]]:
    """:func:`unmask` and the mean's file, in one worker thread."""
    mean, result, dp_figures = unmask(found)
    return encode(mean), result, dp_figures


def _index(who: str) -> int | str:
    return int(who) if who.isdigit() else who


def _public(result: UnmaskResult, cid: str, sha256: str) -> dict[str, Any]:
    return {
        "mean_delta_cid": cid,
        "mean_delta_sha256": sha256,
        "inputs": len(result.survivors),
        "survivors": [_index(u) for u in result.survivors],
        "dropped": [_index(u) for u in result.dropped],
        "rejected_shares": [
            {"holder": _index(h), "owner": _index(o)} for h, o in result.rejected_shares
        ],
    }


async def _due(session: AsyncSession, deps: FLDeps, state: FLSecAggRound, ended: bool) -> bool:
    """Unmasking is due at the stage's deadline, once every survivor has answered, or at
    once when the round or its session ended meanwhile (a cancel)."""
    if state.stage != stages.UNMASK:
        return False
    if ended or deps.clock.now() >= state.stage_deadline_at:
        return True
    # Every survivor answered (its reply completed its task) or gave up its task.
    waiting = await repo.slots_with_active_tasks(session, state.round_id, [rounds_repo.SUBMITTED])
    return not waiting


async def finish_unmask(db: Database, deps: FLDeps, round_id: uuid.UUID) -> bool:
    """Unmask a round whose unmask stage is due (see the module docstring); True when this
    call moved it on (to ``aggregating``, or ``failed`` with the reason)."""
    async with db.read_session() as session:
        found_round = await repo.round_with_state(session, round_id)
        if found_round is None:
            return False
        fl_session, round_, state = found_round
        going = fl_session.status == "active" and round_.status == stages.UNMASKING
        if not await _due(session, deps, state, ended=not going):
            return False
        found = await _read(session, fl_session, round_, state) if going else None
    failure: str | None = None
    public: dict[str, Any] = {}
    dp_figures: dict[str, Any] = {}
    if found is None:
        failure = round_.failure_reason or f"the session is {fl_session.status}"
    else:
        try:
            blob, result, dp_figures = await asyncio.to_thread(_unmasked_blob, found)
            cid, sha256 = await store_io.put_bytes(deps.store, blob)
            public = _public(result, cid, sha256)
        except (SecAggError, FLConfigError) as exc:
            reason = exc.reason if isinstance(exc, SecAggError) else str(exc)
            failure = (
                f"round {round_.number}: secure aggregation could not unmask the sum: {reason}"
            )
    async with db.transaction() as session:
        return await _apply(session, deps, round_id, failure, public, dp_figures)


async def _apply(
    session: AsyncSession,
    deps: FLDeps,
    round_id: uuid.UUID,
    failure: str | None,
    public: dict[str, Any],
    dp_figures: dict[str, Any],
) -> bool:
    locked = await repo.lock_round(session, round_id)
    if locked is None:
        return False
    fl_session, round_, state = locked
    if state.stage != stages.UNMASK:
        return False  # applied already (another replica, a restart between the two steps)
    now = deps.clock.now()
    if failure is not None:
        await stages.fail_round(session, deps, fl_session, round_, state, failure, now)
        return True
    if not await rounds_repo.set_round_status(
        session,
        round_id,
        stages.UNMASKING,
        status=rounds_repo.AGGREGATING,
        metrics={"secagg": public, **dp_figures},
    ):
        return False
    stages.mark_closed(state, now)
    state.stage = stages.DONE
    await stages.cancel_active(
        session,
        deps,
        round_id,
        f"round {round_.number} was unmasked without this participant's unmask reply",
    )
    if public["rejected_shares"]:
        log.warning(
            "fl_secagg_rejected_shares",
            round_id=str(round_id),
            shares=public["rejected_shares"][:20],
        )
    after_commit(session, deps.wake)
    after_commit(session, lambda: stages.ring(round_id))
    return True


# -- aggregation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureMean:
    """An unmasked SecAgg+ round: the survivors' example-weighted mean delta (local model
    minus the round's global model; noised under central DP), how many inputs it averages,
    the round's SecAgg+ figures (survivors, dropped, refused shares) and its DP figures."""

    delta: Weights
    inputs: int
    figures: dict[str, Any]
    dp_figures: dict[str, Any] = field(default_factory=dict)

    def mean_model(self, reference: Weights) -> Weights:
        """The mean of the survivors' local models: the round's global model plus the delta."""
        return {
            name: (np.asarray(a, np.float64) + np.asarray(self.delta[name], np.float64)).astype(
                np.float32
            )
            for name, a in reference.items()
        }


async def secure_mean(deps: FLDeps, fl_session: FLSession, round_: FLRound) -> SecureMean:
    """The unmasked mean of an aggregating SecAgg+ round, read back from the content store."""
    info = (round_.metrics or {}).get("secagg")
    if not isinstance(info, dict) or not info.get("mean_delta_cid"):
        raise SecureSumMissing(f"round {round_.number} has no unmasked secure sum")
    values = sum(math.prod(shape) for _, shape in stages.layout_of(fl_session))
    data = await store_io.get_bytes(
        deps.store,
        str(info["mean_delta_cid"]),
        max_bytes=values * 4 + HEADER_SLACK,
        sha256=info.get("mean_delta_sha256"),
    )
    delta = await asyncio.to_thread(decode, data)
    figures = {k: v for k, v in info.items() if k not in ("mean_delta_cid", "mean_delta_sha256")}
    dp = {k: v for k, v in (round_.metrics or {}).items() if k.startswith("dp_")}
    return SecureMean(delta, int(info["inputs"]), figures, dp)


# -- the rounds job's step -------------------------------------------------------------------


async def advance_rounds(db: Database, deps: FLDeps) -> int:
    """Close the SecAgg+ stages that are due and unmask the rounds whose replies are in (or
    whose unmask deadline passed); how many moved on. A round whose unmasking cannot read or
    write the content store now is logged and tried again next tick."""
    async with db.read_session() as session:
        open_ids = await repo.open_states(session, stages.STAGES, stages.JOB_BATCH)
    n = 0
    for round_id in open_ids:
        async with db.read_session() as session:
            state = await repo.get_state(session, round_id)
            if state is None:
                continue
            unmasking = state.stage == stages.UNMASK
            due = unmasking or await stages.due(session, deps, state)
        if not due:
            continue
        if not unmasking:
            async with db.transaction() as session:
                n += int(await stages.close_stage(session, deps, round_id))
            continue
        try:
            n += int(await finish_unmask(db, deps, round_id))
        except Exception as exc:
            log.warning(
                "fl_secagg_unmask_retry",
                round_id=str(round_id),
                error=type(exc).__name__,
                detail=str(exc)[:200],
            )
    return n

"""Aggregating a round: a re-entrant step keyed by the round (ARCHITECTURE §5).

:func:`compute_round` reads the round's input model and its accepted updates from the content
store one at a time, aggregates them with the FL core in a worker thread (FedAvg and the other
streaming methods fold each update into a running weighted sum, so memory stays one model;
median, trimmed mean and Krum need them all), evaluates the result on the held-out test split
and stores it. Everything it writes is content-addressed, so computing a round again gives the
same CIDs. :func:`apply_round` then records it in one transaction that starts with a
conditional ``aggregating -> completed`` UPDATE: a second apply (another replica, a restart
between the two steps) finds nothing to change and stops. The same transaction moves the
session's global model, pays the round's rewards, and opens the next round or completes the
session."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.fl.aggregation import WeightedSum, Weights
from parity.core.fl.aggregators import AggregationResult, aggregate, aggregate_mean
from parity.core.fl.errors import FLConfigError
from parity.core.fl.fedopt import ServerOptState
from parity.core.fl.model import evaluate
from parity.core.fl.tensors import decode, encode
from parity.db.session import Database
from parity.errors import ParityError
from parity.fl import datasets, events, privacy, rounds, secagg_stages, secagg_unmask, store_io
from parity.fl import repository as session_repo
from parity.fl import rounds_repository as repo
from parity.fl.deps import FLDeps
from parity.fl.models import FLRound, FLRoundSlot, FLSession
from parity.fl.updates import MODELS, model_bytes_cap, model_values
from parity.ledger import pools
from parity.ledger import service as ledger_service
from parity.logging import get_logger

log = get_logger("parity.fl")

REWARD_KIND = "fl_reward"
TEST_CACHE_ENTRIES = 4
FOLD_BATCH_BYTES = 8 * 1024 * 1024  # update bytes decoded and summed per worker-thread call
# Small work runs on the event loop's thread: a worker thread's hand-over (and the GIL's way
# back to a busy loop) costs more than the numpy it runs. Budgets, in values touched:
INLINE_FOLD_VALUES = 1 << 18  # model values x updates folded by a FedAvg-family round
INLINE_EVAL_WORK = 1 << 21  # held-out rows x model values of the test evaluation
INLINE_ENCODE_VALUES = 1 << 16  # model values of the new global model's safetensors file
MAX_TEST_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Aggregated:
    """A computed (stored, not yet applied) round result."""

    round_id: uuid.UUID
    model_cid: str
    model_sha256: str
    opt_state_cid: str | None
    metrics: dict[str, Any] = field(default_factory=dict)


class _TestSplits:
    """Decoded held-out splits by CID (content-addressed: never stale)."""

    def __init__(self) -> None:
        self._splits: OrderedDict[str, tuple[Any, Any]] = OrderedDict()

    async def get(self, deps: FLDeps, cid: str, sha256: str | None) -> tuple[Any, Any]:
        cached = self._splits.get(cid)
        if cached is not None:
            self._splits.move_to_end(cid)
            return cached
        data = await store_io.get_bytes(deps.store, cid, max_bytes=MAX_TEST_BYTES, sha256=sha256)
        found = await asyncio.to_thread(datasets.decode_arrays, data)
        self._splits[cid] = found
        while len(self._splits) > TEST_CACHE_ENTRIES:
            self._splits.popitem(last=False)
        return found

    def clear(self) -> None:
        self._splits.clear()


TESTS = _TestSplits()


# -- compute -------------------------------------------------------------------------------


async def _update(deps: FLDeps, slot: FLRoundSlot, cap: int) -> bytes:
    assert slot.update_cid is not None
    return await store_io.get_bytes(
        deps.store, slot.update_cid, max_bytes=cap, sha256=slot.update_sha256
    )


def _examples(slot: FLRoundSlot) -> int:
    return max(int(slot.num_examples or 0), 1)


async def _aggregate(
    deps: FLDeps,
    fl_session: FLSession,
    slots: Sequence[FLRoundSlot],
    reference: Weights,
    state: ServerOptState | None,
) -> AggregationResult:
    method = rounds.settings_of(fl_session).method
    cap = model_bytes_cap(fl_session.model_shapes or {})
    if method.info.streaming:
        total = WeightedSum()
        batch: list[tuple[bytes, int]] = []
        held = 0

        def fold(items: list[tuple[bytes, int]]) -> None:
            for data, n in items:
                total.add(decode(data), n)

        # Folded a batch at a time (one worker-thread call per batch, not per update); the
        # bytes held stay under FOLD_BATCH_BYTES plus one update, however many participants.
        for slot in slots:
            data = await _update(deps, slot, cap)
            batch.append((data, _examples(slot)))
            held += len(data)
            if held >= FOLD_BATCH_BYTES:
                await asyncio.to_thread(fold, batch)
                batch, held = [], 0

        def finish() -> AggregationResult:
            fold(batch)
            return aggregate_mean(method, reference, total.mean(), state)

        # A small round (all of it under FOLD_BATCH_BYTES, so folded only here) on the loop.
        values = model_values(fl_session.model_shapes or {})
        if values * len(slots) <= INLINE_FOLD_VALUES:
            return finish()
        return await asyncio.to_thread(finish)
    updates = []
    for slot in slots:
        data = await _update(deps, slot, cap)
        updates.append((await asyncio.to_thread(decode, data), _examples(slot)))
    return await asyncio.to_thread(aggregate, method, reference, updates, state)


async def _opt_state(deps: FLDeps, fl_session: FLSession) -> ServerOptState | None:
    if fl_session.opt_state_cid is None:
        return None
    cap = 2 * model_bytes_cap(fl_session.model_shapes or {})
    data = await store_io.get_bytes(
        deps.store, fl_session.opt_state_cid, max_bytes=cap, sha256=None
    )
    return await asyncio.to_thread(ServerOptState.from_bytes, data)


# Means as convex combinations (each value times its share): finite for any finite values,
# where a sum first would overflow past float's range (a reported loss may be up to 1e308).
def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(v / len(values) for v in values) if values else None


def _weighted(values: Sequence[float], weights: Sequence[int]) -> float | None:
    total = sum(weights)
    if not total:
        return None
    return math.fsum(v * (w / total) for v, w in zip(values, weights, strict=True))


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: a round's metrics are
    stored and served as JSON, which has no such numbers (a diverged model's test loss)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def train_metrics(slots: Sequence[FLRoundSlot]) -> dict[str, Any]:
    """What the accepted updates report: counts, mean and example-weighted loss/accuracy,
    the slowest participant's training time."""
    weights = [_examples(s) for s in slots]
    losses = [float(s.loss or 0.0) for s in slots]
    accuracies = [float(s.accuracy or 0.0) for s in slots]
    return {
        "participants": len(slots),
        "examples": sum(weights),
        "train_loss_mean": _mean(losses),
        "train_loss_weighted": _weighted(losses, weights),
        "train_accuracy_mean": _mean(accuracies),
        "train_accuracy_weighted": _weighted(accuracies, weights),
        "slowest_training_ms": max((int(s.training_time_ms or 0) for s in slots), default=0),
    }


async def _secure(
    deps: FLDeps,
    fl_session: FLSession,
    round_: FLRound,
    reference: Weights,
    state: ServerOptState | None,
) -> tuple[AggregationResult, dict[str, Any]]:
    """A SecAgg+ round: the server holds only the survivors' unmasked mean delta
    (:mod:`parity.fl.secagg_unmask`; under central DP the runners' clipped deltas with the
    noise sigma = z * C / m already added at unmasking, :mod:`parity.fl.secagg_dp`); the
    method finishes from the mean model it gives."""
    secure = await secagg_unmask.secure_mean(deps, fl_session, round_)
    mean = secure.mean_model(reference)
    method = rounds.settings_of(fl_session).method
    result = await asyncio.to_thread(aggregate_mean, method, reference, mean, state)
    return result, {"secagg": secure.figures, **secure.dp_figures}


async def compute_round(
    deps: FLDeps,
    fl_session: FLSession,
    round_: FLRound,
    slots: Sequence[FLRoundSlot],
    dp_context: privacy.RoundContext | None = None,
) -> Aggregated:
    """Aggregate, evaluate and store a round's new global model (see the module docstring).
    A central-DP round clips and noises around the aggregation (:mod:`parity.fl.privacy`;
    ``dp_context`` carries its clip norm and participant count)."""
    cap = model_bytes_cap(fl_session.model_shapes or {})
    reference = await MODELS.get(deps, round_.model_in_cid, round_.model_in_sha256, cap)
    settings = rounds.settings_of(fl_session)
    state = await _opt_state(deps, fl_session) if settings.method.info.stateful else None
    central = await privacy.central_round(
        fl_session,
        round_,
        slots,
        reference,
        settings.method,
        state,
        lambda slot: _update(deps, slot, cap),
        dp_context,
    )
    dp_figures: dict[str, Any] = {}
    if secagg_stages.enabled(fl_session):
        result, dp_figures = await _secure(deps, fl_session, round_, reference, state)
    elif central is None:
        result = await _aggregate(deps, fl_session, slots, reference, state)
    else:
        result, dp_figures = central
    metrics = train_metrics(slots)
    metrics.update(dp_figures)
    metrics.update(privacy.round_metrics(fl_session, round_.number))
    metrics["test_loss"] = metrics["test_accuracy"] = None
    values = model_values(fl_session.model_shapes or {})
    if fl_session.test_cid is not None:
        x, y = await TESTS.get(deps, fl_session.test_cid, fl_session.test_sha256)
        if len(x) * values <= INLINE_EVAL_WORK:
            scored = evaluate(settings.model, result.weights, x, y)
        else:
            scored = await asyncio.to_thread(evaluate, settings.model, result.weights, x, y)
        metrics["test_loss"], metrics["test_accuracy"] = scored.loss, scored.accuracy
    if result.selected is not None:
        metrics["selected"] = [slots[i].participant_index for i in result.selected]
    if values <= INLINE_ENCODE_VALUES:
        blob = encode(result.weights)
    else:
        blob = await asyncio.to_thread(encode, result.weights)
    cid, sha256 = await store_io.put_bytes(deps.store, blob)
    opt_cid = None
    if result.state is not None:
        opt_cid, _ = await store_io.put_bytes(
            deps.store, await asyncio.to_thread(result.state.to_bytes)
        )
    return Aggregated(round_.id, cid, sha256, opt_cid, json_safe(metrics))


async def pay_rewards(
    session: AsyncSession,
    deps: FLDeps,
    fl_session: FLSession,
    round_: FLRound,
    examples: Mapping[int, tuple[uuid.UUID, int]],
) -> None:
    """Each accepted update's share of the round's pool (``pool // total_rounds``) by
    examples, once per (session, round, participant); ``examples`` maps a participant index to
    (runner, examples). Rounding dust stays in the pool and is released at the end."""
    ledger = deps.ledger
    pool = fl_session.reward_pool or 0
    total = sum(n for _, n in examples.values())
    if ledger is None or pool <= 0 or total <= 0:
        return
    round_pool = pool // fl_session.total_rounds
    runners = await repo.runners_by_id(session, [r for r, _ in examples.values()])
    for index, (runner_id, n) in sorted(examples.items()):
        runner = runners.get(runner_id)
        amount = round_pool * n // total
        if runner is None or amount <= 0:
            continue
        await pools.pay_from_pool(
            session,
            ledger,
            source_type=rounds.POOL_SOURCE,
            source_id=str(fl_session.id),
            payment_source_id=f"{fl_session.id}:{round_.number}:{index}",
            kind=REWARD_KIND,
            amount=amount,
            payee=ledger_service.runner_account(ledger, runner.owner_address, runner.device_id),
            facts={
                "session_id": str(fl_session.id),
                "round": round_.number,
                "participant_index": index,
                "runner_id": str(runner_id),
                "examples": n,
                "round_examples": total,
            },
        )


# -- apply -----------------------------------------------------------------------------------


async def _locked(session: AsyncSession, round_id: uuid.UUID) -> tuple[FLSession, FLRound] | None:
    """The round's session and then the round, both locked (always in that order)."""
    found = await repo.get_round(session, round_id)
    if found is None:
        return None
    fl_session = await session_repo.get_session(session, found.session_id, lock=True)
    round_ = await repo.get_round(session, round_id, lock=True)
    if fl_session is None or round_ is None:
        return None
    return fl_session, round_


async def apply_round(session: AsyncSession, deps: FLDeps, agg: Aggregated) -> bool:
    """Record a computed round once (False when it was applied already or is no longer
    aggregating); then the next round opens, or the session completes."""
    locked = await _locked(session, agg.round_id)
    if locked is None:
        return False
    fl_session, round_ = locked
    if round_.status != repo.AGGREGATING:
        return False
    now = deps.clock.now()
    if fl_session.status != "active":  # cancelled meanwhile: the round ends with it
        return await repo.set_round_status(
            session,
            round_.id,
            repo.AGGREGATING,
            status=repo.FAILED,
            failure_reason=f"the session is {fl_session.status}",
        )
    duration = max(int((now - round_.opened_at).total_seconds() * 1000), 0)
    metrics = {
        **agg.metrics,
        "duration_ms": duration,
        "coordination_overhead_ms": max(duration - int(agg.metrics["slowest_training_ms"]), 0),
    }
    changed = await repo.set_round_status(
        session,
        round_.id,
        repo.AGGREGATING,
        status=repo.COMPLETED,
        completed_at=now,
        model_out_cid=agg.model_cid,
        model_out_sha256=agg.model_sha256,
        metrics=metrics,
    )
    if not changed:
        return False
    fl_session.global_model_cid = agg.model_cid
    fl_session.global_model_sha256 = agg.model_sha256
    fl_session.global_model_round = round_.number
    if agg.opt_state_cid is not None:
        fl_session.opt_state_cid = agg.opt_state_cid
    fl_session.updated_at = now
    await session.flush()
    slots = await repo.submitted_slots(session, round_.id)
    await pay_rewards(
        session,
        deps,
        fl_session,
        round_,
        {s.participant_index: (s.runner_id, _examples(s)) for s in slots},
    )
    await events.emit_session_event(
        session,
        deps,
        events.ROUND_COMPLETED,
        fl_session,
        round=round_.number,
        metrics=metrics,
        global_model={"round": round_.number, "cid": agg.model_cid, "sha256": agg.model_sha256},
    )
    if round_.number >= fl_session.total_rounds:
        await rounds.complete_session(session, deps, fl_session, now)
    elif (budget := privacy.budget_stop(fl_session, round_.number)) is not None:
        # The next round would pass max_epsilon: the model stays this round's, within budget.
        await rounds.fail_session(session, deps, fl_session, budget, now)
    else:
        await rounds.open_round(session, deps, fl_session, round_.number + 1, now)
    return True


async def fail_round(session: AsyncSession, deps: FLDeps, round_id: uuid.UUID, why: str) -> bool:
    """A round that cannot be aggregated (an update unreadable in the store, a method that
    refuses the updates) fails, and its session with it."""
    locked = await _locked(session, round_id)
    if locked is None:
        return False
    fl_session, round_ = locked
    reason = f"round {round_.number}: aggregation failed: {why}"
    now = deps.clock.now()
    if not await repo.set_round_status(
        session, round_id, repo.AGGREGATING, status=repo.FAILED, failure_reason=reason
    ):
        return False
    if fl_session.status == "active":
        await rounds.fail_session(session, deps, fl_session, reason, now)
    return True


async def aggregate_round(db: Database, deps: FLDeps, round_id: uuid.UUID) -> bool:
    """Compute and apply one aggregating round; True when this call applied (or failed) it."""
    async with db.read_session() as session:
        round_ = await repo.get_round(session, round_id)
        if round_ is None or round_.status != repo.AGGREGATING:
            return False
        fl_session = await session.get(FLSession, round_.session_id)
        slots = await repo.submitted_slots(session, round_id)
        dp_context = (
            await privacy.round_context(session, fl_session, round_) if fl_session else None
        )
    if fl_session is None:
        return False
    try:
        agg = await compute_round(deps, fl_session, round_, slots, dp_context)
    except (FLConfigError, ParityError) as exc:
        # A refusal, not an outage: the same inputs would be refused again.
        why = exc.message if isinstance(exc, ParityError) else str(exc)
        log.warning("fl_aggregation_failed", round_id=str(round_id), detail=why[:200])
        async with db.transaction() as session:
            return await fail_round(session, deps, round_id, why)
    async with db.transaction() as session:
        return await apply_round(session, deps, agg)

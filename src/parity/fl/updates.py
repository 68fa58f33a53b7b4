"""A participant's model update (``POST /federated-learning/model-updates``).

Checked before anything is written: the round is collecting and its deadline has not passed
(409 ``round_closed``), the caller holds a slot in it (403 ``not_a_participant``), the tensors
match the round's global model by name and shape, are finite and within the session's norm
bound (422 naming the tensor). The update is then stored as safetensors in the content store
(off the event loop, before the transaction), and one transaction completes the slot's
``fl_train`` task through the task queue (fenced by the claim token) and records the update on
the slot. Repeating an accepted update with the same claim token answers the same again.
The last update of a round wakes the rounds job after commit, so the round closes at once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from parity.clock import utc_iso
from parity.core.fl.aggregation import Weights
from parity.core.fl.errors import TensorError
from parity.core.fl.tensors import decode, encode, from_lists, validate_update
from parity.db.hooks import after_commit
from parity.db.session import Database
from parity.errors import InvalidInput
from parity.fl import rounds_repository as repo
from parity.fl import secagg_service, store_io, update_sql
from parity.fl.deps import FLDeps
from parity.fl.errors import NotAParticipant, RoundClosed, RoundNotFound, UpdateConflict
from parity.fl.examples import cap_of, counted_examples, fixes_first_count
from parity.fl.models import FLRoundSlot, FLSession
from parity.fl.rounds import settings_of
from parity.fl.spec import ModelUpdate, parse_model_update
from parity.tasks import lifecycle
from parity.tasks.queue.executors import SessionExecutor, executor_for

Slot = TypeVar("Slot", FLRoundSlot, update_sql.SlotView)
T = TypeVar("T")

HEADER_SLACK = 1024 * 1024  # a safetensors header and metadata, beyond the tensor bytes
MODEL_CACHE_ENTRIES = 8
# Up to this many model values (~0.1 ms of numpy per thousand) an update's JSON tensors are
# checked and encoded on the event loop.
INLINE_CHECK_VALUES = 16_384
INLINE_DECODE_BYTES = 128 * 1024  # a safetensors file this small decodes in ~0.1 ms


class ModelCache:
    """Decoded models by CID (content-addressed, so an entry can never go stale): every update
    of a round is checked against the same global model, read and decoded once. The updates
    of a round arrive together: those that miss while the model is being read wait for that
    one read instead of each starting their own."""

    def __init__(self, entries: int = MODEL_CACHE_ENTRIES) -> None:
        self._entries = entries
        self._models: OrderedDict[str, Weights] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Weights]] = {}
        self.loads = 0  # reads from the store (tests and diagnostics)

    async def get(self, deps: FLDeps, cid: str, sha256: str, max_bytes: int) -> Weights:
        found = self._models.get(cid)
        if found is not None:
            self._models.move_to_end(cid)
            return found
        loading = self._loading.get(cid)
        if loading is None or loading.get_loop() is not asyncio.get_running_loop():
            # (A read left pending by an event loop that has since closed never finishes.)
            loading = asyncio.ensure_future(self._load(deps, cid, sha256, max_bytes))
            self._loading[cid] = loading
            loading.add_done_callback(lambda done: self._forget(cid, done))
        # Shielded: a caller that goes away does not cancel the read the others wait for.
        return await asyncio.shield(loading)

    def _forget(self, cid: str, done: asyncio.Future[Weights]) -> None:
        if self._loading.get(cid) is done:
            del self._loading[cid]

    async def _load(self, deps: FLDeps, cid: str, sha256: str, max_bytes: int) -> Weights:
        self.loads += 1
        data = await store_io.get_bytes(deps.store, cid, max_bytes=max_bytes, sha256=sha256)
        # Decoding is a copy per tensor: on the loop for a small model (a thread hop would
        # cost more), in a worker thread for a large one.
        small = len(data) <= INLINE_DECODE_BYTES
        weights = decode(data) if small else await asyncio.to_thread(decode, data)
        self._models[cid] = weights
        while len(self._models) > self._entries:
            self._models.popitem(last=False)
        return weights

    def clear(self) -> None:
        self._models.clear()


MODELS = ModelCache()


def model_values(shapes: dict[str, Any]) -> int:
    """How many values a model of these shapes holds."""
    return sum(math.prod(int(d) for d in shape) for shape in shapes.values())


def model_bytes_cap(shapes: dict[str, Any]) -> int:
    """The largest safetensors file a model of these shapes can be (float64 values allowed)."""
    return model_values(shapes) * 8 + HEADER_SLACK


@dataclass(frozen=True)
class Checked:
    cid: str
    sha256: str
    norm: float


def _answer(number: int, participant_index: int, norm: float | None) -> dict[str, Any]:
    return {
        "message": "Model update submitted successfully",
        "update": {"round": number, "participant_index": participant_index, "norm": norm},
    }


def _closed(
    round_: update_sql.RoundView | update_sql.RoundState, now: datetime
) -> RoundClosed | None:
    if round_.status != repo.COLLECTING:
        return RoundClosed(
            f"round {round_.number} is {round_.status}; it no longer accepts updates",
            details={"round": round_.number, "status": round_.status},
        )
    if now >= round_.deadline_at:
        return RoundClosed(
            f"round {round_.number} closed at its deadline {utc_iso(round_.deadline_at)}",
            details={"round": round_.number, "deadline_at": utc_iso(round_.deadline_at)},
        )
    return None


def _dropped(number: int, slot: FLRoundSlot | update_sql.SlotView) -> RoundClosed | None:
    if slot.status != repo.DROPPED:
        return None
    return RoundClosed(
        f"this runner was dropped from round {number}: {slot.drop_reason}",
        details={"round": number, "status": slot.status},
    )


def _check_slot(
    update: ModelUpdate,
    round_: update_sql.RoundView | update_sql.RoundState,
    slot: Slot | None,
) -> Slot:
    if slot is None:
        raise NotAParticipant(
            f"this runner holds no slot in round {round_.number} of session {update.session_id}"
        )
    if update.task_id is not None and update.task_id != slot.task_id:
        raise InvalidInput("task_id", "task_id is not this runner's task for that round")
    return slot


async def submit_update(
    db: Database, deps: FLDeps, runner_id: uuid.UUID, body: dict[str, Any]
) -> dict[str, Any]:
    """Accept one participant's update for its round (see the module docstring)."""
    update = parse_model_update(body)
    async with db.lookup() as conn:
        found = await update_sql.update_target(conn, update.round_id, runner_id)
    if found is None or found.round.session_id != update.session_id:
        raise RoundNotFound(f"session {update.session_id} has no round {update.round_id}")
    round_, fl_session, known = found.round, found.session, found.partition_rows
    secagg_service.refuse_plain_update(fl_session, round_.number)
    slot = _check_slot(update, round_, found.slot)
    if slot.status != repo.SUBMITTED:
        closed = _closed(round_, deps.clock.now()) or _dropped(round_.number, slot)
        if closed is not None:
            raise closed
        # The claim token is checked before anything is stored: a refused update leaves
        # nothing behind in the content store. The usual case (the current claim of an active
        # task) is recognised from the row already read; the queue's fence explains any other.
        if not lifecycle.holds_current_claim(
            found.task_runner_id,
            found.task_status,
            found.task_token_hash,
            runner_id,
            update.claim_token,
        ):
            async with db.read_session() as session:
                await lifecycle.current_attempt(
                    session, runner_id, slot.task_id, update.claim_token
                )
    # What the update counts for (its FedAvg weight, its reward share): what the runner
    # reports, never more than the partition the server gave it or, with runner-local data,
    # than its first accepted report and the session's cap (parity.fl.examples).
    training_data = fl_session.training_data
    examples = counted_examples(update.data_size, known, cap_of(training_data))
    fixes = fixes_first_count(training_data, known) and slot.participant_id is not None
    if slot.status == repo.SUBMITTED:
        # A repeat: the transaction below answers it once the token is checked; it must be the
        # update that was accepted, not another one.
        await _refuse_another(fl_session, update, slot, examples)
        checked = Checked(slot.update_cid or "", slot.update_sha256 or "", slot.update_norm or 0.0)
    else:
        checked = await _check_and_store(deps, fl_session, round_, update)
    async with db.transaction() as session:
        answer, waiting = await _accept(
            session,
            deps,
            runner_id,
            update,
            checked,
            examples,
            slot.task_id,
            repeat=slot.status == repo.SUBMITTED,
            fixes_count_of=slot.participant_id if fixes else None,
        )
    if waiting > 0 and not db.is_sqlite:
        # Updates of one round are accepted side by side on PostgreSQL: each may have counted
        # the others as still waiting before they committed. Counted again now, the last of
        # them is sure to see the round complete. (SQLite serializes writes: the count held.)
        async with db.read_session() as session:
            if await update_sql.waiting_count(SessionExecutor(session), update.round_id) == 0:
                deps.wake(update.round_id)
    return answer


async def _refuse_another(
    fl_session: FLSession, update: ModelUpdate, slot: update_sql.SlotView, examples: int
) -> None:
    """409 ``update_conflict`` unless ``update`` is the one its slot accepted: the same
    figures and the same tensors (by CID, or by the digest of their encoding)."""
    figures = (examples, update.loss, update.accuracy, update.training_time_ms)
    differs = figures != slot.figures
    if not differs and update.update_cid is not None:
        differs = update.update_cid != slot.update_cid
    elif not differs and update.weights is not None:
        shapes = _shapes(fl_session)
        weights = update.weights

        def digest() -> str:
            with _tensor_field("weights"):
                return hashlib.sha256(encode(from_lists(weights, shapes))).hexdigest()

        differs = await _sized_to_loop(shapes, digest) != slot.update_sha256
    if differs:
        raise UpdateConflict(
            f"this claim's update for round {update.round_id} was accepted already with other "
            "figures or weights; a repeat must be the same request",
            details={"task_id": str(slot.task_id)},
        )


async def _check_and_store(
    deps: FLDeps, fl_session: FLSession, round_: update_sql.RoundView, update: ModelUpdate
) -> Checked:
    shapes = _shapes(fl_session)
    cap = model_bytes_cap(fl_session.model_shapes or {})
    reference = await MODELS.get(deps, round_.model_in_cid, round_.model_in_sha256, cap)
    max_norm = settings_of(fl_session).max_update_norm
    if update.weights is not None:
        weights = update.weights

        def from_json() -> tuple[bytes, float]:
            with _tensor_field("weights"):
                parsed = from_lists(weights, shapes)
                norm = validate_update(parsed, reference, max_norm=max_norm)
            return encode(parsed), norm

        data, norm = await _sized_to_loop(shapes, from_json)
        cid, sha256 = await store_io.put_bytes(deps.store, data)
        return Checked(cid, sha256, norm)
    assert update.update_cid is not None
    data = await store_io.get_bytes(
        deps.store,
        update.update_cid,
        max_bytes=cap,
        sha256=update.update_sha256,
        field="update_cid",
    )

    def from_file() -> float:
        with _tensor_field("update_cid"):
            return validate_update(decode(data), reference, max_norm=max_norm)

    norm = await asyncio.to_thread(from_file)
    return Checked(update.update_cid, await store_io.sha256_hex(data), norm)


def _shapes(fl_session: FLSession) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(int(d) for d in shape)
        for name, shape in (fl_session.model_shapes or {}).items()
    }


async def _sized_to_loop(shapes: dict[str, tuple[int, ...]], work: Callable[[], T]) -> T:
    """``work`` over a model of ``shapes``: on the loop when the model is small (a thread hop
    would cost more than the work), in a worker thread otherwise."""
    if model_values(shapes) <= INLINE_CHECK_VALUES:
        return work()
    return await asyncio.to_thread(work)


@contextmanager
def _tensor_field(where: str) -> Iterator[None]:
    """A core tensor refusal as a 422 naming the tensor (``weights.fc1.weight``)."""
    try:
        yield
    except TensorError as exc:
        field = where if exc.field in ("weights", "model") else f"{where}.{exc.field}"
        raise InvalidInput(field, exc.reason) from None


async def _accept(
    session: AsyncSession,
    deps: FLDeps,
    runner_id: uuid.UUID,
    update: ModelUpdate,
    checked: Checked,
    examples: int,
    task_id: uuid.UUID,
    *,
    repeat: bool,
    fixes_count_of: uuid.UUID | None = None,
) -> tuple[dict[str, Any], int]:
    """Record the update in the caller's transaction; returns the answer and how many slots
    of the round were still waiting (as this transaction saw them). ``repeat``: the slot was
    read as submitted already (a retried update). ``fixes_count_of``: the runner-local
    participant whose count this update fixes (its first accepted one)."""
    shared = session.get_bind().dialect.name != "sqlite"
    x = await executor_for(session)
    round_ = await update_sql.round_state(x, update.round_id, shared=shared)
    if round_ is None:
        raise RoundNotFound(f"session {update.session_id} has no round {update.round_id}")
    report = lifecycle.Report(
        output=json.dumps({"update_cid": checked.cid, "norm": checked.norm}),
        output_cid=checked.cid,
        result_hash=checked.sha256,
        usage={
            "data_size": update.data_size,
            "loss": update.loss,
            "accuracy": update.accuracy,
            "training_time_ms": update.training_time_ms,
        },
    )
    if not repeat:
        closed = _closed(round_, deps.clock.now())
        if closed is not None:
            raise closed
    # The task's completion is the fence: another claim's token is refused here, and the same
    # token again (a retry after a timeout) answers with the completed task.
    await lifecycle.complete(session, deps.tasks, runner_id, task_id, update.claim_token, report)
    index = None
    if not repeat:
        done = update_sql.Submitted(
            checked.cid,
            checked.sha256,
            checked.norm,
            examples,
            update.loss,
            update.accuracy,
            update.training_time_ms,
            deps.clock.now(),
        )
        index = await update_sql.submit_slot(x, update.round_id, runner_id, done)
        if index is not None and fixes_count_of is not None:
            await update_sql.fix_first_count(x, fixes_count_of, examples)
    if index is None:
        # Not waiting any more: dropped (refused, and the completion above rolls back with
        # it), or submitted by this update's twin (answered as a repeat).
        slot = _check_slot(
            update, round_, await repo.slot_of_runner(session, update.round_id, runner_id)
        )
        dropped = _dropped(round_.number, slot)
        if dropped is not None:
            raise dropped
        return _answer(round_.number, slot.participant_index, slot.update_norm), 0
    waiting = await update_sql.waiting_count(x, update.round_id)
    if waiting == 0:
        round_id = update.round_id
        after_commit(session, lambda: deps.wake(round_id))
    return _answer(round_.number, index, checked.norm), waiting

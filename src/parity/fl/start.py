"""Starting a session: select the participants, read and partition the data set, store the
partitions, the held-out test split and the initial global model, then (one transaction) bind
the participants, activate the session and open round 1.

The data work (decode, partition, encode) runs in a worker thread and the store writes happen
before the transaction, so no database lock is held meanwhile; everything written to the store
is content-addressed, so a start that loses a race (or is retried) stores nothing new."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from parity.auth.schemas import Principal
from parity.core.fl.model import init_weights
from parity.core.fl.partitioning import parse_options
from parity.core.fl.tensors import encode, shapes_of
from parity.db.session import Database
from parity.fl import datasets, events, rounds, service, store_io
from parity.fl import repository as session_repo
from parity.fl import rounds_repository as repo
from parity.fl.deps import FLDeps
from parity.fl.errors import InsufficientRunners, SessionStateConflict
from parity.fl.models import FLParticipant, FLSession
from parity.fl.spec_fields import translated
from parity.runners.models import Runner

# The largest data set a session may partition on the server (read into memory once).
MAX_DATASET_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Part:
    cid: str
    sha256: str
    rows: int
    label_counts: dict[str, int]


@dataclass(frozen=True)
class Prepared:
    """What start stored: the initial model, each participant's partition (server-side data
    only), the held-out test split (when asked for)."""

    model_cid: str
    model_sha256: str
    shapes: dict[str, list[int]]
    parts: list[Part] | None
    test: tuple[str, str] | None


def _check_pending(fl_session: FLSession) -> None:
    if fl_session.status != service.PENDING:
        raise SessionStateConflict(
            f"session is {fl_session.status}; only a pending session can be started",
            code="session_not_pending",
            details={"status": fl_session.status},
        )


async def start_session(
    db: Database, deps: FLDeps, principal: Principal, session_id: uuid.UUID
) -> FLSession:
    """Start a pending session (its creator or an operator). 409 ``insufficient_runners`` when
    fewer than ``min_participants`` eligible runners are online; 409 when not pending."""
    async with db.read_session() as session:
        row = await service.get_session(session, principal, session_id)
        _check_pending(row)
        dataset = row.training_data.get("runner_dataset")
        runners = await rounds.eligible_runners(session, dataset)
        if dataset and len(runners) < row.min_participants:
            online = len(await rounds.eligible_runners(session, None))
            raise _too_few(row.min_participants, len(runners), dataset, online - len(runners))
    if len(runners) < row.min_participants:
        raise _too_few(row.min_participants, len(runners))
    chosen = runners[: row.max_participants]
    prepared = await _prepare(deps, row, len(chosen))
    async with db.transaction() as session:
        fl_session = await service.get_session(session, principal, session_id, lock=True)
        _check_pending(fl_session)
        await _activate(session, deps, fl_session, chosen, prepared)
    return fl_session


def _too_few(
    need: int, have: int, dataset: str | None = None, without: int = 0
) -> InsufficientRunners:
    """409 ``insufficient_runners``; for a runner dataset it says that only the FL runners
    serving it count, and how many others are online."""
    if dataset is None:
        return InsufficientRunners(
            f"insufficient online runners: need {need}, have {have}",
            details={"need": need, "have": have},
        )
    others = (
        f"{without} FL runner{' is' if without == 1 else 's are'} online without it"
        if without
        else "no other FL runner is online"
    )
    return InsufficientRunners(
        f"insufficient online runners: need {need}, have {have} serving runner_dataset "
        f"{dataset!r} (only online FL runners that advertise that data set count; {others})",
        details={"need": need, "have": have, "runner_dataset": dataset, "without_dataset": without},
    )


async def _activate(
    session: Any, deps: FLDeps, fl_session: FLSession, chosen: list[Runner], prepared: Prepared
) -> None:
    now = deps.clock.now()
    for index, runner in enumerate(chosen):
        part = prepared.parts[index] if prepared.parts is not None else None
        await session_repo.add(
            session,
            FLParticipant(
                id=uuid.uuid4(),
                session_id=fl_session.id,
                runner_id=runner.id,
                participant_index=index,
                status=repo.ACTIVE_PARTICIPANT,
                partition_cid=part.cid if part else None,
                partition_sha256=part.sha256 if part else None,
                num_examples=part.rows if part else None,
                label_counts=part.label_counts if part else None,
                joined_at=now,
                left_at=None,
            ),
        )
    fl_session.status = service.ACTIVE
    fl_session.started_at = now
    fl_session.global_model_cid = prepared.model_cid
    fl_session.global_model_sha256 = prepared.model_sha256
    fl_session.global_model_round = 0
    fl_session.model_shapes = prepared.shapes
    if prepared.test is not None:
        fl_session.test_cid, fl_session.test_sha256 = prepared.test
    await rounds.open_round(session, deps, fl_session, 1, now)
    await events.emit_session_event(
        session,
        deps,
        events.SESSION_STARTED,
        fl_session,
        participants=len(chosen),
        runner_ids=[str(r.id) for r in chosen],
    )


# -- the data and the initial model -----------------------------------------------------------


@dataclass(frozen=True)
class _Blobs:
    model: bytes
    shapes: dict[str, list[int]]
    parts: list[tuple[bytes, int, dict[str, int]]] | None
    test: bytes | None


def _initial_model(fl_session: FLSession) -> tuple[bytes, dict[str, list[int]]]:
    weights = init_weights(rounds.settings_of(fl_session).model, fl_session.seed)
    return encode(weights), shapes_of(weights)


def _server_data(fl_session: FLSession, data: bytes, k: int) -> _Blobs:
    """Read, check against the model, hold out, partition and encode (a worker thread)."""
    td = fl_session.training_data
    x, y, _classes = datasets.load_dataset(data, td["data_format"])
    datasets.check_model_fit(x, y, rounds.settings_of(fl_session).model)
    plan = datasets.plan_partitions(
        x,
        y,
        strategy=td["split_strategy"],
        metadata=td.get("metadata") or {},
        num_participants=k,
        seed=fl_session.seed,
        test_split=td.get("test_split"),
    )
    parts = [
        (datasets.encode_arrays(px, py), int(py.shape[0]), dict(hist))
        for (px, py), hist in zip(plan.participants, plan.histograms, strict=True)
    ]
    test = None if plan.test is None else datasets.encode_arrays(*plan.test)
    model, shapes = _initial_model(fl_session)
    return _Blobs(model, shapes, parts, test)


def _runner_data(fl_session: FLSession, k: int) -> _Blobs:
    """A runner-local data set: only the partition options are checked (for the real count)."""
    td = fl_session.training_data
    with translated():
        parse_options(td["split_strategy"], td.get("metadata") or {}, k)
    model, shapes = _initial_model(fl_session)
    return _Blobs(model, shapes, None, None)


async def _prepare(deps: FLDeps, fl_session: FLSession, k: int) -> Prepared:
    cid = fl_session.training_data.get("dataset_cid")
    if cid:
        data = await store_io.get_bytes(
            deps.store, cid, max_bytes=MAX_DATASET_BYTES, sha256=None, field=service.DATASET_FIELD
        )
        blobs = await asyncio.to_thread(_server_data, fl_session, data, k)
        del data
    else:
        blobs = await asyncio.to_thread(_runner_data, fl_session, k)
    model_cid, model_sha = await store_io.put_bytes(deps.store, blobs.model)
    parts: list[Part] | None = None
    if blobs.parts is not None:
        parts = []
        for blob, rows, hist in blobs.parts:
            part_cid, part_sha = await store_io.put_bytes(deps.store, blob)
            parts.append(Part(part_cid, part_sha, rows, hist))
    test = None if blobs.test is None else await store_io.put_bytes(deps.store, blobs.test)
    return Prepared(model_cid, model_sha, blobs.shapes, parts, test)

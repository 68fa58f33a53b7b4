"""The ``fl_train`` executor: one participant's local training for one FL round.

It fetches the round's global model (safetensors) and this participant's partition (NPZ) by CID
from the server's content store, checking each against the sha256 the task names (or reads and
partitions a runner-local data set), trains from the global model with
:func:`parity.core.fl.train.train_local` in a worker thread (the event loop keeps beating, so
the claim's lease is renewed as for any task), timing only the training itself, and posts the
update to ``/api/v1/federated-learning/model-updates``. The server completes the task with the
accepted update, so a successful outcome comes back marked ``reported``. Anything that goes
wrong ends as a failed outcome whose error says what and where; a round that closed before the
update arrived (409 ``round_closed``) is logged and not tried again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from numpy.typing import NDArray

from parity.agent.client import ServerClient, ServerError
from parity.agent.executors import CancelToken, LogSink, Outcome
from parity.agent.fl import local_dp, torch_trainer
from parity.agent.fl.config import Blob, FlTask, LocalData, parse_fl_task
from parity.agent.fl.data import FlDataError, LocalDatasets
from parity.agent.fl.fetch import FetchError, decode_partition, fetch_verified
from parity.agent.fl.retry import until_reachable
from parity.agent.fl.secagg import SecureRound, parse_secure_task
from parity.core.fl.aggregation import Weights
from parity.core.fl.errors import FLConfigError
from parity.core.fl.model import ModelSpec
from parity.core.fl.tensors import decode, encode, validate_update
from parity.core.fl.train import TrainConfig, TrainResult, train_local
from parity.logging import get_logger

__all__ = ["FlExecutor"]

log = get_logger("parity.runner")
# An unreachable server (restarting) or a 5xx is tried again for this long: the same claim
# token makes a repeated update harmless, and the server keeps leases through its own restart.
SUBMIT_WINDOW_SECONDS = 60.0
CACHED_PARTITIONS = 4  # partitions kept, one per session this runner takes part in
# A model file this small is decoded, and an update this small written as JSON, on the event
# loop's thread: a worker thread's hand-over costs more than the work (~5 ms of a round's
# critical path on a busy machine, measured with the 64-32-10 MLP's 10 KB model).
INLINE_MODEL_BYTES = 256 * 1024
Arrays = tuple[NDArray[np.float32], NDArray[np.int64]]


class FlExecutor:
    """Executor for ``fl_train`` tasks. ``claim_token_of`` (task id -> claim token) is set by
    the runner loop: the update is fenced by the task's claim, which a task dict does not
    carry."""

    def __init__(
        self,
        client: ServerClient,
        datasets: LocalDatasets | Mapping[str, Path] | None = None,
        *,
        trainer: str = "numpy",
    ) -> None:
        self.client = client
        self.trainer = trainer_named(trainer)
        self.datasets = datasets if isinstance(datasets, LocalDatasets) else LocalDatasets(datasets)
        self.claim_token_of: Callable[[str], str | None] | None = None
        self._partitions: dict[Blob, Arrays] = {}  # content-addressed, so never stale

    @property
    def dataset_names(self) -> list[str]:
        """The runner-local data sets advertised at registration."""
        return self.datasets.names

    async def run(self, task: dict[str, Any], logs: LogSink, cancel: CancelToken) -> Outcome:
        task_id = str(task.get("id"))
        try:
            # Local-mode DP is applied here; any other privacy setting is refused by the parser.
            config, local = local_dp.split_task_privacy(task.get("config"))
            job = parse_fl_task(config)
            secure = parse_secure_task(config)
        except FLConfigError as exc:
            return _failed(f"invalid fl_train config: {exc}")
        token = self.claim_token_of(task_id) if self.claim_token_of is not None else None
        if token is None:
            return _failed("no claim token is held for this task")
        fetch_started = time.monotonic()
        try:
            global_weights, x, y = await self._inputs(job)
        except (FetchError, FlDataError, FLConfigError) as exc:
            return _failed(str(exc))
        fetch_ms = _ms_since(fetch_started)
        # The intro goes to the runner's own log, not the task's: a log request per participant
        # and round would compete with the round's updates for the server's write path.
        log.info("fl_training", task_id=task_id, detail=_intro(job, x.shape[0]))
        started = time.monotonic()
        trainer = self.trainer
        # Set when the outcome no longer needs the training (cancelled, shutting down, the
        # round went on without it): the worker thread then ends at its next batch instead
        # of running on for nobody and holding up the runner's exit until it is done.
        stop = threading.Event()
        training = asyncio.ensure_future(
            asyncio.to_thread(
                trainer, job.model, global_weights, x, y, job.train, job.seed, stop.is_set
            )
        )
        try:
            if secure is not None:  # SecAgg+: the key stages run while the model trains
                private = None if local is None else _privatizer(local, job)
                # Central DP's noise goes on a mean of equally weighted clipped deltas.
                equal = local is not None and local.mode == "central"
                round_ = SecureRound(
                    self.client, job, secure, token, privatize=private, equal_weights=equal
                )
                return await round_.run(training, started, global_weights, cancel)
            return await self._plain_round(
                task_id, token, job, training, started, global_weights, local, cancel, fetch_ms
            )
        finally:
            stop.set()
            if not training.done():  # unwanted now: nobody is left to read how it ended
                training.cancel()

    async def _plain_round(
        self,
        task_id: str,
        token: str,
        job: FlTask,
        training: asyncio.Future[TrainResult],
        started: float,
        global_weights: Weights,
        local: local_dp.LocalDP | None,
        cancel: CancelToken,
        fetch_ms: int,
    ) -> Outcome:
        """Wait for the training, check and privatize its result, and post the update."""
        finished = await _unless_cancelled(training, cancel)
        elapsed_ms = _ms_since(started)
        if not finished:
            return Outcome(False, None, "", cancel.reason or "cancelled", cancelled=True)
        try:
            result = training.result()
        except FLConfigError as exc:
            return _failed(f"training refused the data: {exc}")
        except Exception as exc:  # a numpy failure must fail the task, not the runner
            return _failed(f"training failed: {exc!r}"[:1000])
        try:
            if local is not None:  # the server never sees the clean update
                result = await asyncio.to_thread(_private, local, result, global_weights, job)
            norm = _check(job, result, global_weights)
        except FLConfigError as exc:
            return _failed(f"the trained update is unusable: {exc}")
        return await self._submit(task_id, token, job, result, elapsed_ms, norm, fetch_ms)

    async def _inputs(self, job: FlTask) -> tuple[Weights, NDArray[np.float32], NDArray[np.int64]]:
        """The decoded global model and this participant's rows, fetched side by side."""
        global_weights, (x, y) = await asyncio.gather(self._global_model(job), self._rows(job))
        return global_weights, x, y

    async def _global_model(self, job: FlTask) -> Weights:
        raw = job.global_model_inline
        if raw is None or hashlib.sha256(raw).hexdigest() != job.global_model.sha256:
            # Not in the claim, or not the bytes the task names: the store's copy is.
            raw = await fetch_verified(self.client.download, "global model", job.global_model)
        if len(raw) <= INLINE_MODEL_BYTES:
            return decode(raw)
        return await asyncio.to_thread(decode, raw)

    async def _rows(self, job: FlTask) -> Arrays:
        if isinstance(job.data, LocalData):
            return await asyncio.to_thread(self.datasets.partition, job.data)
        blob = job.data.blob
        rows = self._partitions.get(blob)
        if rows is None:
            # A participant trains on the same partition every round: fetched once.
            raw = await fetch_verified(self.client.download, "partition", blob)
            rows = await asyncio.to_thread(decode_partition, raw)
            if len(self._partitions) >= CACHED_PARTITIONS:
                self._partitions.pop(next(iter(self._partitions)))
            self._partitions[blob] = rows
        if job.data.rows is not None and job.data.rows != rows[0].shape[0]:
            raise FetchError(
                f"partition {blob.cid} has {rows[0].shape[0]} rows; the task says {job.data.rows}"
            )
        return rows

    async def _submit(
        self,
        task_id: str,
        token: str,
        job: FlTask,
        result: TrainResult,
        elapsed_ms: int,
        norm: float,
        fetch_ms: int,
    ) -> Outcome:
        started = time.monotonic()
        body: dict[str, Any] = {
            "session_id": job.session_id,
            "round_id": job.round_id,
            "task_id": task_id,
            "claim_token": token,
            "data_size": result.num_examples,
            "loss": result.loss,
            "accuracy": result.accuracy,
            "training_time_ms": elapsed_ms,
        }
        usage = {k: body[k] for k in ("data_size", "loss", "accuracy", "training_time_ms")}
        try:
            if sum(a.nbytes for a in result.weights.values()) <= INLINE_MODEL_BYTES:
                content = _json_body(body, result.weights)
            else:
                content = await asyncio.to_thread(_json_body, body, result.weights)
            if job.max_json_bytes is not None and len(content) > job.max_json_bytes:
                # Too large to post inline: the model file goes to the content store.
                model = encode(result.weights)
                body["update_cid"] = await self.client.upload(model)
                body["update_sha256"] = hashlib.sha256(model).hexdigest()
                content = json.dumps(body, allow_nan=False).encode()
            answer = await self._post(content)
        except ServerError as exc:
            if exc.code == "round_closed":
                log.warning(
                    "fl_update_round_closed", task_id=task_id, round=job.round, error=str(exc)
                )
                return _failed(f"round {job.round} closed before this update arrived", usage)
            return _failed(f"the server refused the update: {exc}", usage)
        except httpx.HTTPError as exc:
            return _failed(f"the update could not be delivered: {exc!r}"[:1000], usage)
        log.info(
            "fl_update_accepted",
            task_id=task_id,
            round=job.round,
            norm=round(norm, 6),
            fetch_ms=fetch_ms,
            submit_ms=_ms_since(started),
            **usage,
        )
        summary = json.dumps({**usage, "update": answer.get("update")}, allow_nan=False)
        return Outcome(True, 0, summary, usage=usage, reported=True)

    async def _post(self, content: bytes) -> dict[str, Any]:
        """Post the update; a broken connection or a server error (5xx) is tried again, with
        backoff, for up to ``SUBMIT_WINDOW_SECONDS``."""
        return await until_reachable(
            lambda: self.client.model_update(content), SUBMIT_WINDOW_SECONDS
        )


def _check(job: FlTask, result: TrainResult, global_weights: Weights) -> float:
    """The checks the server applies (finite values, loss and the norm bound), here first so a
    diverged run fails with a clear reason instead of an upload the server refuses."""
    if not math.isfinite(result.loss):
        raise FLConfigError(
            "loss", f"training diverged (loss {result.loss}); lower train_config.learning_rate"
        )
    return validate_update(result.weights, global_weights, max_norm=job.max_norm)


def _private(
    local: local_dp.LocalDP, result: TrainResult, global_weights: Weights, job: FlTask
) -> TrainResult:
    """Local DP: clip the trained delta and add the noise; central DP in a SecAgg+ round:
    clip it (see :mod:`.local_dp`)."""
    private, applied = local_dp.privatize(local, result, global_weights)
    log.info(
        "fl_local_dp_applied" if local.mode == "local" else "fl_central_dp_clip_applied",
        round=job.round,
        noise_multiplier=local.noise_multiplier,
        l2_norm_clip=local.l2_norm_clip,
        clipped=applied.clipped,
    )
    return private


def _privatizer(
    local: local_dp.LocalDP, job: FlTask
) -> Callable[[TrainResult, Weights], TrainResult]:
    """DP for a SecAgg+ round (local, or central mode's clip): applied to the trained model
    before it is quantized."""
    return lambda result, global_weights: _private(local, result, global_weights, job)


Trainer = Callable[..., TrainResult]
TRAINERS = ("numpy", "torch", "noop")


def trainer_named(name: str) -> Trainer:
    """The local trainer ``--fl-trainer`` names: ``numpy`` (the reference), ``torch`` (the
    same steps on PyTorch, which must be installed and importable: it is imported here, and a
    ValueError says what is wrong otherwise) or ``noop`` (benchmarks of coordination: the
    global model goes back untrained)."""
    if name == "numpy":
        return train_local
    if name == "noop":
        return _untrained
    if name == "torch":
        if not torch_trainer.available():
            raise ValueError("--fl-trainer torch needs PyTorch: pip install torch")
        problem = torch_trainer.import_problem()
        if problem is not None:
            raise ValueError(
                f"--fl-trainer torch: the installed PyTorch does not import: {problem}"
            )
        return torch_trainer.train_local_torch
    raise ValueError(f"--fl-trainer is one of {', '.join(TRAINERS)}, not {name!r}")


def _untrained(
    spec: ModelSpec,
    weights: Weights,
    x: Any,
    y: Any,
    config: TrainConfig,
    seed: int,
    stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """The no-op trainer (``--fl-trainer noop``): the global model back, unchanged."""
    return TrainResult(weights=dict(weights), num_examples=len(y), loss=0.0, accuracy=0.0, steps=0)


def _json_body(body: dict[str, Any], weights: Weights) -> bytes:
    """The README's JSON update: each tensor as nested lists of float32 values, written in
    their shortest round-tripping form straight from the arrays (no Python float per value).
    Values are finite here: :func:`_check` ran first (orjson would write NaN as null)."""
    tensors = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in weights.items()}
    return orjson.dumps({**body, "weights": tensors}, option=orjson.OPT_SERIALIZE_NUMPY)


def _intro(job: FlTask, rows: int) -> str:
    data = job.data.name if isinstance(job.data, LocalData) else job.data.blob.cid
    return (
        f"fl: round {job.round}, participant {job.participant_index + 1}/{job.num_participants}: "
        f"{job.model.model_type} {list(job.model.layer_sizes)} on {rows} rows of {data}, "
        f"{job.train.local_epochs} epochs, batch {job.train.batch_size}, "
        f"lr {job.train.learning_rate:g}"
    )


async def _unless_cancelled(job: asyncio.Future[Any], cancel: CancelToken) -> bool:
    """Wait for ``job`` unless ``cancel`` comes first; True when the job finished. A cancelled
    job's thread is told to stop by the caller; its result, if any, is dropped. (Asked right
    after ``job.cancel()``, ``job.cancelled()`` is still False: a task is cancelled only once
    it runs again, so the answer is whether the job was among the finished.)"""
    waiter = asyncio.ensure_future(cancel.wait())
    done: set[asyncio.Future[Any]] = set()
    try:
        done, _ = await asyncio.wait({job, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not job.done():
            job.cancel()
    return job in done


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _failed(error: str, usage: dict[str, Any] | None = None) -> Outcome:
    return Outcome(False, None, "", error, usage=usage or {})

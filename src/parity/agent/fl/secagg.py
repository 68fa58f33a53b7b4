"""One participant's side of a SecAgg+ round on the runner (the protocol:
:mod:`parity.core.fl.secagg`; the server's endpoints:
``/api/v1/federated-learning/sessions/{id}/rounds/{n}/secagg/{stage}``).

A task whose config carries ``"secure_aggregation": {...}`` (the session's SecAgg+ settings, the
round's participant indices and the communication graph's seed) is one round of the protocol
for the participant. The runner plans the round as the server does (core ``plan_round``),
keeps its key pairs and self-mask seed in memory only (core :class:`SecAggClient`), and while
its model trains it advertises its public keys and shares its secrets with its neighbours
(the bundles are sealed for them: the server relays what it cannot read). Once training is
done it clips and stochastically quantizes its weighted delta (``local - global``, local DP
applied first when the session asks for it), masks it, posts the masked vector with its
figures, and answers the server's unmask request with the shares it may reveal; the server
completes the task with that reply. The update itself never leaves the runner in clear.

With central DP (``equal_weights``) the delta is first clipped to the session's L2 clip and
weighed fully, whatever the example count: the server's noise is calibrated to a mean in which
one participant moves the sum by at most the clip, and a weight factor below 1 for some would
let the others count for more (the reported ``data_size`` is unchanged).

Each stage is one request: the runner posts its message with ``?wait=`` and the answer's
``reply`` carries what it needs next once the stage closed (the neighbours' keys, the bundles
sealed for it, the unmask request); when that wait runs out first it long-polls the stage. A
refusal (the round failed, the stage closed, a message the protocol refuses) ends the task
with the server's reason.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from parity.agent.client import ServerClient, ServerError
from parity.agent.executors import CancelToken, Outcome
from parity.agent.fl.config import FlTask, FlTaskError
from parity.agent.fl.retry import until_reachable
from parity.core.fl._params import read_int, read_mapping
from parity.core.fl.aggregation import Weights
from parity.core.fl.errors import FLConfigError
from parity.core.fl.partitioning import MAX_PARTICIPANTS
from parity.core.fl.privacy_errors import SecAggError
from parity.core.fl.quantize import encode_update, layout_of
from parity.core.fl.secagg import (
    KeyAdvert,
    RoundSetup,
    UnmaskRequest,
    plan_round,
    round_context,
)
from parity.core.fl.secagg_client import SecAggClient
from parity.core.fl.secagg_config import SecAggConfig, parse_secagg_fields
from parity.core.fl.tensors import validate_update
from parity.core.fl.train import TrainResult
from parity.logging import get_logger

__all__ = ["SecureRound", "SecureTask", "parse_secure_task"]

log = get_logger("parity.runner")

POLL_SECONDS = 25.0  # one long-poll (the server caps a wait at 30 s)
MIN_POLL_SECONDS = 0.2
RETRY_WINDOW_SECONDS = 60.0  # an unreachable server (restarting) or a 5xx is tried again
SLACK_SECONDS = 60.0  # beyond the four stages' deadlines before the runner gives up itself
_HEX_SEED = re.compile(r"^[0-9a-fA-F]{64}\Z")
# The stage whose messages a participant needs after posting its message for a stage.
NEXT = {"advertise_keys": "advertise_keys", "share_keys": "share_keys", "masked_input": "unmask"}

Privatize = Callable[[TrainResult, Weights], TrainResult]


@dataclass(frozen=True)
class SecureTask:
    """The ``secure_aggregation`` of an ``fl_train`` task."""

    config: SecAggConfig
    participants: tuple[int, ...]
    graph_seed: bytes


def parse_secure_task(config: Any) -> SecureTask | None:
    """The task's SecAgg+ settings (``None`` for a plain round); a :class:`FlTaskError` names a
    malformed field."""
    if not isinstance(config, Mapping) or config.get("secure_aggregation") is None:
        return None
    raw = read_mapping(config["secure_aggregation"], "secure_aggregation", FlTaskError)
    try:
        secagg = parse_secagg_fields(raw, "secure_aggregation")
    except FLConfigError as exc:
        raise FlTaskError(exc.field, exc.reason) from exc
    given = raw.get("participants")
    if not isinstance(given, list) or not given:
        raise FlTaskError("secure_aggregation.participants", "must be a list of indices")
    participants = tuple(
        read_int(
            i,
            "secure_aggregation.participants",
            FlTaskError,
            minimum=0,
            maximum=MAX_PARTICIPANTS - 1,
        )
        for i in given
    )
    if len(set(participants)) != len(participants):
        raise FlTaskError("secure_aggregation.participants", "participant indices repeat")
    seed = raw.get("graph_seed")
    if not isinstance(seed, str) or not _HEX_SEED.match(seed):
        raise FlTaskError("secure_aggregation.graph_seed", "must be 64 hexadecimal characters")
    return SecureTask(secagg, participants, bytes.fromhex(seed))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bytes(text: Any) -> bytes:
    if not isinstance(text, str):
        raise SecAggError("server", "the server relayed a malformed message")
    return base64.b64decode(text.encode(), validate=True)


class RoundEnded(Exception):
    """The round went on without this participant (the server said why), or took too long."""


class SecureRound:
    """Drive one participant through one SecAgg+ round (see the module docstring)."""

    def __init__(
        self,
        client: ServerClient,
        job: FlTask,
        secure: SecureTask,
        token: str,
        *,
        privatize: Privatize | None = None,
        equal_weights: bool = False,
        poll_seconds: float = POLL_SECONDS,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.client = client
        self.job = job
        self.secure = secure
        self.token = token
        self.privatize = privatize
        self.equal_weights = equal_weights
        self.poll_seconds = poll_seconds
        # Stochastic rounding draws from the OS's entropy unless a test pins it.
        self.rng = rng or np.random.default_rng(secrets.randbits(128))
        stages = 4 * secure.config.stage_timeout_seconds
        self.give_up = time.monotonic() + stages + SLACK_SECONDS

    def setup(self, global_weights: Weights) -> RoundSetup:
        """This participant's plan of the round, as the server computes it."""
        layout = sorted(layout_of(global_weights))
        size = sum(math.prod(shape) for _, shape in layout) + 1
        if self.job.participant_index not in self.secure.participants:
            raise SecAggError("participants", "this participant is not in the round's plan")
        setups = plan_round(
            [str(i) for i in self.secure.participants],
            self.secure.config,
            self.secure.graph_seed,
            round_context(self.job.session_id, self.job.round),
            size,
        )
        return setups[str(self.job.participant_index)]

    async def run(
        self,
        training: asyncio.Future[TrainResult],
        started: float,
        global_weights: Weights,
        cancel: CancelToken,
    ) -> Outcome:
        """The round, from the training under way (started at monotonic ``started``) to the
        server's acceptance of the unmask reply."""
        finished: list[float] = []
        training.add_done_callback(lambda _: finished.append(time.monotonic()))
        keys: asyncio.Future[dict[str, bytes]] | None = None
        try:
            sa = SecAggClient(self.setup(global_weights))
            keys = asyncio.ensure_future(self._exchange_keys(sa))
            if not await _both_unless_cancelled(training, keys, cancel):
                return Outcome(False, None, "", cancel.reason or "cancelled", cancelled=True)
            if keys.done() and keys.exception() is not None:
                keys.result()  # the key stages failed: raise why
            trained = _trained(training)
            received = keys.result()
            result = await asyncio.to_thread(self._checked, trained, global_weights)
            usage = {
                "data_size": result.num_examples,
                "loss": result.loss,
                "accuracy": result.accuracy,
                "training_time_ms": int(((finished or [time.monotonic()])[0] - started) * 1000),
            }
            vector = encode_update(
                _delta(result.weights, global_weights),
                self._weight(result.num_examples),
                self.secure.config,
                sorted(layout_of(global_weights)),
                self.rng,
            )
            masked = await asyncio.to_thread(sa.masked_input, received, vector)
            body = {"vector": _b64(masked.vector.astype("<u8").tobytes()), **usage}
            reply = sa.unmask(_request(await self._exchange("masked_input", body)))
            await self._post(
                "unmask",
                {
                    "self_mask_shares": {o: _b64(s) for o, s in reply.self_mask_shares.items()},
                    "key_shares": {o: _b64(s) for o, s in reply.key_shares.items()},
                },
            )
        except TrainingFailed as exc:
            return _failed(str(exc))
        except SecAggError as exc:
            return _failed(f"secure aggregation refused to go on: {exc.reason}")
        except FLConfigError as exc:
            return _failed(f"the trained update is unusable: {exc}")
        except RoundEnded as exc:
            return _failed(str(exc))
        except ServerError as exc:
            return _failed(f"the server refused a secure aggregation message: {exc}")
        except httpx.HTTPError as exc:
            return _failed(f"the server could not be reached: {exc!r}"[:1000])
        finally:
            if keys is not None and not keys.done():
                keys.cancel()
        log.info("fl_secagg_round_done", round=self.job.round, **usage)
        return Outcome(True, 0, _summary(self.job, usage), usage=usage, reported=True)

    def _weight(self, num_examples: int) -> int:
        """The example count the update is weighed by: its own, or (equal weights) one that
        reaches ``max_weight``, a weight factor of exactly 1."""
        if self.equal_weights:
            return max(math.ceil(self.secure.config.max_weight), 1)
        return num_examples

    def _checked(self, result: TrainResult, global_weights: Weights) -> TrainResult:
        """The server's checks (finite loss, norm bound), here first; local DP applied."""
        if not math.isfinite(result.loss):
            raise FLConfigError(
                "loss", f"training diverged (loss {result.loss}); lower the learning rate"
            )
        if self.privatize is not None:
            result = self.privatize(result, global_weights)
        validate_update(result.weights, global_weights, max_norm=self.job.max_norm)
        return result

    async def _exchange_keys(self, sa: SecAggClient) -> dict[str, bytes]:
        """Stages 1 and 2: advertise our keys, share our secrets with the neighbours that
        advertised theirs, and collect the bundles they sealed for us."""
        advert = sa.advertise()
        keys = {"c_public": _b64(advert.c_public), "s_public": _b64(advert.s_public)}
        adverts = {
            str(m["sender"]): KeyAdvert(
                str(m["sender"]), _bytes(m.get("c_public")), _bytes(m.get("s_public"))
            )
            for m in await self._exchange("advertise_keys", keys)
        }
        message = sa.share_keys(adverts)
        shares = {
            "commitment": _b64(message.commitment),
            "shares": {who: _b64(sealed) for who, sealed in message.sealed.items()},
        }
        return {
            str(m["sender"]): _bytes(m.get("sealed"))
            for m in await self._exchange("share_keys", shares)
        }

    async def _exchange(self, stage: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Post our message for ``stage`` and get what comes next (the stage's messages for
        us, or the unmask request after the masked input) in the same request once final;
        when the post's wait ran out first, long-poll for them."""
        answer = await self._post(stage, body, wait=self.poll_seconds)
        reply = answer.get("reply")
        if isinstance(reply, dict):
            error = reply.get("error")
            if isinstance(error, dict):  # the round went on without us while we waited
                _ended(_reply_error(error))
            if reply.get("ready"):
                return list(reply.get("messages") or [])
        return await self._messages(NEXT[stage])

    async def _messages(self, stage: str) -> list[dict[str, Any]]:
        """The stage's messages for us, once the server says they are final."""
        while True:
            if time.monotonic() >= self.give_up:
                raise RoundEnded(f"the {stage} stage did not close in time")
            asked = time.monotonic()
            answer = await self._retrying(
                lambda: self.client.secagg_get(
                    self.job.session_id, self.job.round, stage, self.token, self.poll_seconds
                )
            )
            if answer.get("ready"):
                return list(answer.get("messages") or [])
            if time.monotonic() - asked < MIN_POLL_SECONDS:
                # A server that answers at once (draining, a proxy's cap): poll, don't spin.
                await asyncio.sleep(MIN_POLL_SECONDS)

    async def _post(
        self, stage: str, body: dict[str, Any], wait: float | None = None
    ) -> dict[str, Any]:
        job, claimed = self.job, {"claim_token": self.token, **body}
        return await self._retrying(
            lambda: self.client.secagg_post(job.session_id, job.round, stage, claimed, wait)
        )

    async def _retrying(self, call: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """A broken connection or a server error (5xx) is tried again, with backoff, for up to
        ``RETRY_WINDOW_SECONDS`` (a repeated message answers the same)."""
        return await until_reachable(call, RETRY_WINDOW_SECONDS, check=_ended)


def _ended(exc: ServerError) -> None:
    """The server's refusal that the round went on without us ends the round here."""
    if exc.code in ("round_closed", "stage_closed"):
        raise RoundEnded(f"the round went on without this participant: {exc}") from exc


def _reply_error(error: Mapping[str, Any]) -> ServerError:
    """A ``reply``'s error (the post was in, the wait after it refused): the long-poll's."""
    details = error.get("details")
    info = dict(details) if isinstance(details, Mapping) else {}
    return ServerError(409, str(error.get("code")), str(error.get("message", "")), info)


def _request(messages: list[dict[str, Any]]) -> UnmaskRequest:
    if len(messages) != 1:
        raise SecAggError("unmask", "the server sent no single unmask request")
    found = messages[0]
    return UnmaskRequest(
        tuple(str(i) for i in found.get("survivors") or []),
        tuple(str(i) for i in found.get("dropped") or []),
    )


def _delta(local: Weights, global_weights: Weights) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(local[name], np.float64) - np.asarray(a, np.float64)
        for name, a in global_weights.items()
    }


async def _both_unless_cancelled(
    training: asyncio.Future[Any], keys: asyncio.Future[Any], cancel: CancelToken
) -> bool:
    """Wait for the training and the key stages, until one of them fails or ``cancel`` comes
    first; False when cancelled (the executor then tells the training thread to stop at its
    next batch; its result, if any, is dropped)."""
    waiter = asyncio.ensure_future(cancel.wait())
    pending: set[asyncio.Future[Any]] = {training, keys}
    try:
        while pending:
            done, _ = await asyncio.wait(pending | {waiter}, return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                return False
            pending -= done
            if any(f.exception() is not None for f in done):
                return True
        return True
    finally:
        waiter.cancel()


class TrainingFailed(Exception):
    pass


def _trained(training: asyncio.Future[TrainResult]) -> TrainResult:
    """The training's result, or why it has none (the executor's wording)."""
    error = training.exception()
    if isinstance(error, FLConfigError):
        raise TrainingFailed(f"training refused the data: {error}")
    if error is not None:  # a numpy failure must fail the task, not the runner
        raise TrainingFailed(f"training failed: {error!r}"[:1000])
    return training.result()


def _summary(job: FlTask, usage: Mapping[str, Any]) -> str:
    parts = ", ".join(f"{k} {v}" for k, v in usage.items())
    return f"round {job.round}: masked input and unmask reply accepted ({parts})"


def _failed(error: str) -> Outcome:
    return Outcome(False, None, "", error)

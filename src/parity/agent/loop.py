"""The runner's main loop: register, heartbeat, pull and push intake, execute, report."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import psutil

from parity.agent import RUNNER_VERSION
from parity.agent.capabilities import detect
from parity.agent.client import ServerClient, ServerError
from parity.agent.executors import CancelToken, Executor, Outcome
from parity.agent.executors.docker import DockerEngine
from parity.agent.fl import FlExecutor
from parity.agent.llm.executor import LlmExecutor
from parity.agent.push import PushReceiver
from parity.agent.token_stream import BROKEN, CANCELLED, TokenStream
from parity.logging import get_logger

if TYPE_CHECKING:
    from parity.agent.llm.discovery import ModelDiscovery

MAX_DEFERRED_OFFERS = 64  # a runner keeps at most this many offers it had no room for
# While stopping, each step that waits on the server waits at most this long: a server that is
# down or hung must not hold up the exit (what is left is handed back by the offline heartbeat
# or, failing that, by lease expiry).
STOP_STEP_SECONDS = 3.0
# A heartbeat waits at most this long for the LLM backends' model lists; a slower listing
# finishes in the background and goes out with a later beat.
MODEL_REPORT_WAIT_SECONDS = 2.0
# After a failed claim the next try waits 0.25 s, doubling to 1 s: a restarted server hears
# from its runners well within the one lease period it waits before expiring leases.
CLAIM_RETRY_FIRST_SECONDS = 0.25
# A finished run's report (and an output upload) that got no answer, a 5xx or a 429 is tried
# again, same claim token and same body, 1 s after the first try, doubling to 10 s (longer
# when the server's Retry-After says so, up to RETRY_AFTER_MAX_SECONDS), until the server
# settles it: accepted, or refused for good (a 4xx: the claim is gone). Log batches the server
# did not take are resent on the same schedule.
REPORT_RETRY_FIRST_SECONDS = 1.0
REPORT_RETRY_MAX_SECONDS = 10.0
RETRY_AFTER_MAX_SECONDS = 60.0
RETRY_JITTER = 0.2  # each wait is up to this fraction shorter: runners do not retry in step
# Refusals that say "not now" rather than "no": tried again like a missing answer.
RETRY_STATUSES = frozenset({408, 425, 429})
# Log batches a run keeps while the server does not take them; past either bound new ones are
# dropped (counted, with a warning and a marker line where they were).
LOG_BUFFER_BYTES = 1024 * 1024
LOG_BUFFER_BATCHES = 1000
# A pass over a run's unsent log batches takes at most this long: before each try of its
# report (the lines go first, but do not hold the outcome up), and once more after the outcome
# was accepted; what is still unsent then is dropped.
LOG_DRAIN_SECONDS = 10.0
# A completion that got through this much after the run ended says so (usage.report_delay_ms),
# so the time it waited (an outage, retries) is not billed; below it, delivery is the norm.
REPORT_DELAY_MIN_MS = 1000
# Tries of the start's sign-in and registration while the server does not answer.
STARTUP_RETRY_FIRST_SECONDS = 1.0
STARTUP_RETRY_MAX_SECONDS = 10.0
log = get_logger("parity.runner")
T = TypeVar("T")


@dataclass
class RunnerOptions:
    device_id: str
    max_concurrent_tasks: int = 1
    pull: bool = True
    push: bool = True
    push_host: str = "127.0.0.1"
    push_port: int = 0
    push_public_url: str | None = None
    heartbeat_interval: float = 10.0
    claim_wait: float = 25.0
    grace_seconds: float = 30.0
    labels: dict[str, str] = field(default_factory=dict)
    ollama_url: str | None = None
    # Waits between tries of a report or a log batch the server did not take (see above).
    report_retry_first: float = REPORT_RETRY_FIRST_SECONDS
    report_retry_max: float = REPORT_RETRY_MAX_SECONDS
    log_buffer_bytes: int = LOG_BUFFER_BYTES
    log_buffer_batches: int = LOG_BUFFER_BATCHES
    # At start: how long to keep trying a server that does not answer (restarting, or started
    # with the runner) before giving up; 0: give up at once.
    startup_wait: float = 0.0


def settled(exc: BaseException) -> bool:
    """Whether a failed call's answer is final: a refusal (4xx) other than "try later" (408,
    425, 429), or an error that is no answer from the server at all (a bug, a body it could not
    read). No answer (a broken connection, a timeout), a 5xx and a 429 are tried again."""
    if isinstance(exc, ServerError):
        return exc.status < 500 and exc.status not in RETRY_STATUSES
    return not isinstance(exc, httpx.HTTPError | OSError | TimeoutError)


class Backoff:
    """Waits between tries: ``first`` seconds, doubling up to ``cap``, a little jitter, and
    never shorter than the Retry-After of the answer that failed (up to
    RETRY_AFTER_MAX_SECONDS)."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self.tries = 0

    def next(self, exc: BaseException | None) -> float:
        wait = min(self.first * 2.0 ** min(self.tries, 30), self.cap)
        self.tries += 1
        wait *= 1.0 - RETRY_JITTER * random.random()
        after = exc.retry_after if isinstance(exc, ServerError) else None
        if after:
            wait = max(wait, min(after, RETRY_AFTER_MAX_SECONDS))
        return wait

    def reset(self) -> None:
        self.tries = 0


def _size(lines: list[str]) -> int:
    return sum(len(line.encode()) + 1 for line in lines)


def _gap_marker(lines: int) -> str:
    return f"[{lines} log lines dropped here by the runner: its unsent log buffer was full]"


class LogBuffer:
    """A run's log sink: batches are numbered (``seq``) in the order the executor hands them
    over and sent in that order by a sender of their own, so a slow or absent server never
    holds up the run. A batch the server did not take stays and is sent again when it answers
    (it stores each (task, attempt, seq) once, so a repeat is harmless). Bounded: past
    ``max_bytes`` or ``max_batches`` unsent, new batches are dropped and counted, and the next
    batch kept starts with a line that says how many (the log keeps its head, with no silent
    hole: the server's per-task limit keeps the first lines too). A
    claim the server refuses for good (409, 404, 403, 401) logs no more: the rest is dropped."""

    def __init__(
        self,
        client: ServerClient,
        task_id: str,
        token: str,
        *,
        max_bytes: int = LOG_BUFFER_BYTES,
        max_batches: int = LOG_BUFFER_BATCHES,
        retry_first: float = REPORT_RETRY_FIRST_SECONDS,
        retry_max: float = REPORT_RETRY_MAX_SECONDS,
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.token = token
        self.max_bytes = max_bytes
        self.max_batches = max_batches
        self.retry_first = retry_first
        self.retry_max = retry_max
        self.pending: deque[tuple[int, list[str], int]] = deque()  # (seq, lines, bytes)
        self.pending_bytes = 0
        self.next_seq = 0
        self.dropped_batches = 0
        self.dropped_lines = 0
        self.closed = False  # nothing more goes out: what comes is dropped
        self.last_error: BaseException | None = None
        self._held = False  # the last try failed: warned once until a send succeeds
        self._overflowed = False
        self._gap_lines = 0  # lines dropped since the last batch kept: marked in the next
        self._lock = asyncio.Lock()  # one sender at a time keeps the seq order
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    async def add(self, lines: list[str]) -> None:
        """The executors' LogSink: queues the batch and returns at once."""
        if not lines:
            return
        if self.closed:
            self._drop(1, len(lines))
            return
        size = _size(lines)
        if self._full(size):
            self._overflow(len(lines))
            return
        if self._gap_lines:
            # Where lines were dropped the log says so, in their place.
            lines = [_gap_marker(self._gap_lines), *lines]
            size, self._gap_lines = _size(lines), 0
        self.pending.append((self.next_seq, list(lines), size))
        self.next_seq += 1
        self.pending_bytes += size
        self._wake.set()
        if self._sender is None and not self.closed:
            self._sender = asyncio.create_task(self._send(), name=f"logs:{self.task_id}")

    def _full(self, size: int) -> bool:
        """A new batch of ``size`` bytes would pass a bound (one batch always fits)."""
        if not self.pending:
            return False
        over_bytes = self.pending_bytes + size > self.max_bytes
        return over_bytes or len(self.pending) >= self.max_batches

    def _overflow(self, lines: int) -> None:
        """Drop the new batch: the head of the log is what the server keeps (its per-task
        limit keeps the first lines), so the unsent batches before it stay, in order."""
        self._drop(1, lines)
        self._gap_lines += lines
        if not self._overflowed:
            self._overflowed = True
            log.warning(
                "task_logs_overflow",
                task_id=self.task_id,
                detail="unsent log batches over the buffer's bound: new lines are dropped "
                "(a marker line in the log says how many) until the server catches up",
                max_bytes=self.max_bytes,
                max_batches=self.max_batches,
            )

    async def _send(self) -> None:
        backoff = Backoff(self.retry_first, self.retry_max)
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            if await self.drain():
                backoff.reset()
                continue
            await asyncio.sleep(backoff.next(self.last_error))
            self._wake.set()

    async def drain(self) -> bool:
        """Send what is pending, oldest first, until all went (True) or a try got no answer
        (False: kept for the next try). Never raises."""
        async with self._lock:
            while self.pending and not self.closed:
                seq, lines, size = self.pending[0]
                try:
                    await self.client.logs(self.task_id, self.token, seq, lines)
                except Exception as exc:
                    self.last_error = exc
                    if not settled(exc):
                        if not self._held:
                            self._held = True
                            log.warning(
                                "task_logs_held",
                                task_id=self.task_id,
                                error=_why(exc),
                                detail="kept and sent again when the server answers",
                            )
                        return False
                    if isinstance(exc, ServerError) and exc.status in (401, 403, 404, 409):
                        log.warning("task_logs_refused", task_id=self.task_id, error=_why(exc))
                        self.close()
                        return True
                    log.warning(
                        "task_log_batch_refused", task_id=self.task_id, seq=seq, error=_why(exc)
                    )
                    self._drop(1, len(lines))  # this batch is refused; the next may go
                if self.pending and self.pending[0][0] == seq:  # (not dropped meanwhile)
                    self.pending.popleft()
                    self.pending_bytes -= size
                self._held = False
            return not self.pending

    async def finish(self, seconds: float, why: str) -> None:
        """The last try: what is unsent gets up to ``seconds``, then is dropped; a warning
        counts every batch this run dropped, with ``why``."""
        self.stop_sender()
        if self.pending and not self.closed and seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain(), seconds)
        self.close(why)

    def close(self, why: str | None = None) -> None:
        """Send nothing more; drop (and count) what is unsent. Safe to call again."""
        self.stop_sender()
        self.closed = True
        for _, lines, _ in self.pending:
            self._drop(1, len(lines))
        self.pending.clear()
        self.pending_bytes = 0
        if why is not None and self.dropped_batches:
            log.warning(
                "task_logs_dropped",
                task_id=self.task_id,
                batches=self.dropped_batches,
                lines=self.dropped_lines,
                sent_up_to_seq=self.next_seq - 1,
                why=why,
                last_error=None if self.last_error is None else _why(self.last_error),
            )
            self.dropped_batches = self.dropped_lines = 0  # said once

    def stop_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None and sender is not asyncio.current_task():
            # Between tries or mid-request: a batch cut off stays first in line, and a later
            # drain sends it again (harmless if it had arrived).
            sender.cancel()

    def _drop(self, batches: int, lines: int) -> None:
        self.dropped_batches += batches
        self.dropped_lines += lines


class ReportAbandoned(Exception):
    """A report given up without the server's answer (the runner is stopping)."""


@dataclass
class Active:
    task_id: str
    token: str
    cancel: CancelToken
    job: asyncio.Task[None] | None = None
    revoked: bool = False
    stream: TokenStream | None = None  # an llm task's token deltas, once the first came
    logs: LogBuffer | None = None  # the run's log batches, until the server has them
    # The run is over and its outcome not yet settled on the server: the claim is held (listed
    # in heartbeats and reconciles, its slot counted) and never released.
    reporting: bool = False


class Runner:
    def __init__(
        self,
        options: RunnerOptions,
        account: Any,
        client: ServerClient,
        executors: dict[str, Executor],
        docker: DockerEngine | None = None,
        llm_models: ModelDiscovery | None = None,
    ) -> None:
        self.o = options
        self.account = account
        self.client = client
        self.executors = executors
        self.docker = docker
        self.llm_models = llm_models
        self.active: dict[str, Active] = {}
        self.claiming = 0  # offer claims in flight: they hold a slot until answered
        # A claim request failed in a way that leaves its outcome unknown: reconcile before
        # the next claim (see _reconcile).
        self.claims_unsure = False
        self.reconciling = False
        # Offers that came while every slot was taken (concurrent placements on the server can
        # offer one runner more than it has room for): claimed, oldest first, as slots free.
        self.deferred_offers: dict[str, None] = {}
        self._offer_jobs: set[asyncio.Task[None]] = set()
        self._offer_claims: set[asyncio.Task[Any]] = set()  # offer claims awaiting an answer
        self.stopping = asyncio.Event()
        self.refused: ServerError | None = None  # set when the server refused our token (401)
        self._beat_now = asyncio.Event()
        self._beats_over = False
        self.slot_freed = asyncio.Event()
        self.push: PushReceiver | None = None
        self.completed = 0
        self.failed = 0
        self.runner_id: str | None = None
        llm = executors.get("llm")
        if isinstance(llm, LlmExecutor) and llm.token_sink is None:
            llm.token_sink = self._on_token  # tasks with ``stream: true`` stream their tokens
        fl = executors.get("fl_train")
        if isinstance(fl, FlExecutor) and fl.claim_token_of is None:
            fl.claim_token_of = self._claim_token  # an FL update is fenced by the task's claim

    def _token_refused(self, exc: BaseException) -> bool:
        """A 401 to this runner's own token: another process registered this device (which
        rotates the token), or an operator revoked or banned it. Nothing this process does
        can succeed any more: it stops (its work was handed to the new registration or given
        back), and ``run`` then raises why. True when that is the case."""
        if not (isinstance(exc, ServerError) and exc.status == 401):
            return False
        if self.refused is None:
            self.refused = ServerError(
                401,
                exc.code,
                f"the server no longer accepts this runner's token ({exc}): another process "
                f"registered device {self.o.device_id!r}, or an operator revoked or banned it",
                exc.details,
            )
            log.error("runner_token_refused", device_id=self.o.device_id, error=str(exc)[:200])
            self.stop()
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.slot_freed.set()
        self._beat_now.set()  # the server shows the runner draining at once

    @property
    def free_slots(self) -> int:
        return self.o.max_concurrent_tasks - len(self.active) - self.claiming

    async def run(self) -> None:
        await self._until_reachable("sign_in", lambda: self.client.sign_in(self.account))
        found = await detect(self.docker, self.o.ollama_url)
        body: dict[str, Any] = {
            "device_id": self.o.device_id,
            "capabilities": found["capabilities"],
            "models": found["models"],
            "max_concurrent_tasks": self.o.max_concurrent_tasks,
            "labels": self.o.labels,
            "runner_version": RUNNER_VERSION,
        }
        if "docker" not in self.executors:
            body["capabilities"]["docker"] = False
        fl = self.executors.get("fl_train")
        body["capabilities"]["fl"] = fl is not None
        if isinstance(fl, FlExecutor):
            body["capabilities"]["fl_datasets"] = fl.dataset_names
        if self.llm_models is not None:
            body["models"] = [*body["models"], *await self.llm_models.discover()]
        background: list[asyncio.Task[Any]] = []
        if self.o.push:
            self.push = PushReceiver(self.o.push_host, self.o.push_port, self._on_offer)
            background.append(asyncio.create_task(self.push.serve(), name="push-receiver"))
            body["webhook"] = self.push.url(self.o.push_public_url)
        reg = await self._until_reachable("register", lambda: self.client.register(body))
        self.runner_id = str(reg["runner"]["id"])
        if self.push is not None:
            self.push.secret = reg.get("webhook_secret")
        for claim in reg.get("claims", []):
            # A restarted runner does not know how far the old run got: give the work back.
            with contextlib.suppress(ServerError):
                await self.client.transition(
                    claim["task"]["id"], "release", {"claim_token": claim["claim_token"]}
                )
        log.info("runner_registered", runner_id=self.runner_id, device_id=self.o.device_id)
        background.append(asyncio.create_task(self._heartbeats(), name="heartbeat"))
        if self.o.pull:
            background.append(asyncio.create_task(self._pull(), name="pull"))
        await self.stopping.wait()
        await self._shutdown(background)
        if self.refused is not None:
            raise self.refused

    async def _until_reachable(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` at start, tried again while the server gives no answer (or a 5xx, a 429)
        for up to ``startup_wait`` seconds, with a warning per try: a runner started while its
        server restarts, or with it, comes up when it does. A refusal, the time running out or
        a stop ends it with the last error."""
        deadline = time.monotonic() + self.o.startup_wait
        backoff = Backoff(STARTUP_RETRY_FIRST_SECONDS, STARTUP_RETRY_MAX_SECONDS)
        while True:
            try:
                return await call()
            except Exception as exc:
                wait = backoff.next(exc)
                if settled(exc) or self.stopping.is_set() or time.monotonic() + wait > deadline:
                    raise
                log.warning(
                    "server_unreachable_retrying",
                    step=what,
                    error=_why(exc),
                    retry_in_s=round(wait, 1),
                    gives_up_in_s=round(deadline - time.monotonic(), 1),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), wait)
                if self.stopping.is_set():
                    raise

    async def _shutdown(self, background: list[asyncio.Task[Any]]) -> None:
        """Stop claiming, let running work finish for the grace period, release the rest, and
        say ``offline`` as the very last call to the server."""
        log.info("runner_stopping", active=len(self.active))
        named = {t.get_name(): t for t in background}
        # A long-poll claim cut off here may have been granted already: the offline heartbeat
        # hands such a claim back.
        await _settle([named["pull"]] if "pull" in named else [], 0)
        jobs = [a.job for a in self.active.values() if a.job is not None]
        await _settle([*jobs, *self._offer_claims], self.o.grace_seconds, cancel=False)
        await _settle(list(self._offer_claims), STOP_STEP_SECONDS)
        # A run that is over but whose outcome the server has not settled (it was unreachable)
        # is never released (that would run it again): its report, woken by the stop, makes one
        # last try and then gives up with a warning (the offline heartbeat, or lease expiry,
        # hands the claim back).
        reporting = [a.job for a in self.active.values() if a.reporting and a.job is not None]
        unfinished = [a for a in self.active.values() if not a.reporting]
        for a in unfinished:
            a.revoked = True
            a.cancel.cancel("runner shutting down")
        # The executors kill their processes at once; their last log lines still go out under
        # a valid claim, so nothing of theirs reaches the server after the release.
        await asyncio.gather(
            _settle([a.job for a in unfinished if a.job is not None], STOP_STEP_SECONDS),
            _settle(reporting, 2 * STOP_STEP_SECONDS),
        )
        # Heartbeats end between beats: one still in flight finishes first, so a late
        # "draining" cannot land after "offline" and leave the runner shown draining.
        self._beats_over = True
        self._beat_now.set()
        await _settle([named["heartbeat"]] if "heartbeat" in named else [], STOP_STEP_SECONDS)
        await asyncio.gather(*(self._release(a) for a in unfinished))
        await self._say_offline()
        if self.push is not None:
            self.push.stop()
        for t in background:
            t.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        log.info("runner_stopped", completed=self.completed, failed=self.failed)

    async def _release(self, a: Active) -> None:
        """Fenced by the claim token: one the server already took back is refused, harmlessly."""
        try:
            await asyncio.wait_for(
                self.client.transition(a.task_id, "release", {"claim_token": a.token}),
                STOP_STEP_SECONDS,
            )
        except Exception as exc:
            log.warning("task_release_failed", task_id=a.task_id, error=_why(exc))

    async def _say_offline(self) -> None:
        """The last call: the server shows the runner offline at once and releases whatever it
        still holds (a release that failed, a claim whose answer was lost)."""
        try:
            await asyncio.wait_for(
                self.client.heartbeat({"status": "offline", "claims": []}), STOP_STEP_SECONDS
            )
        except Exception as exc:
            log.warning("runner_offline_not_reported", runner_id=self.runner_id, error=_why(exc))
        else:
            log.info("runner_offline_reported", runner_id=self.runner_id)

    async def _heartbeats(self) -> None:
        """Beat every interval, and at once when stopping begins; beats go on (as draining)
        while work winds down, until _shutdown ends them."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), timeout=self.o.heartbeat_interval)
            self._beat_now.clear()
            if self._beats_over:
                return
            try:
                await self.heartbeat_once()
            except Exception as exc:  # keep beating; the lease covers short outages
                if not self._token_refused(exc):
                    log.warning("heartbeat_failed", error=str(exc)[:200])

    async def heartbeat_once(self) -> dict[str, Any]:
        beat: dict[str, Any] = {
            "status": "draining" if self.stopping.is_set() else "online",
            "cpu_usage": psutil.cpu_percent(interval=None) / 100.0,
            "memory_usage": psutil.virtual_memory().percent / 100.0,
            "claims": sorted({a.token for a in self.active.values()}),
        }
        if self.llm_models is not None:
            # Every beat: a backend that was down comes back, one that went down drops out.
            wait = min(MODEL_REPORT_WAIT_SECONDS, self.o.heartbeat_interval / 2)
            beat["models"] = await self.llm_models.current(wait)
        answer = await self.client.heartbeat(beat)
        revoked = set(answer.get("revoked", []))
        cancel = {str(x) for x in answer.get("cancel", [])}
        for a in list(self.active.values()):
            if a.token in revoked:
                a.revoked = True
                a.cancel.cancel("claim revoked by the server")
            elif a.task_id in cancel:
                a.cancel.cancel("cancelled by the client")
        return answer

    async def _pull(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            if failures:
                await asyncio.sleep(min(CLAIM_RETRY_FIRST_SECONDS * 2 ** (failures - 1), 1.0))
            if self.claims_unsure and not await self._reconcile():
                failures += 1
                continue
            if self.free_slots <= 0:
                self.slot_freed.clear()
                await self.slot_freed.wait()
                continue
            try:
                claims = await self.client.claim_next(self.o.claim_wait, self.free_slots)
            except ServerError as exc:
                if self._token_refused(exc):
                    return
                log.warning("claim_failed", error=str(exc))
                # A 5xx may come after the claim committed; a 4xx claimed nothing.
                self.claims_unsure = self.claims_unsure or exc.status >= 500
                failures += 1
                continue
            except Exception as exc:
                log.warning("claim_unreachable", error=str(exc)[:200])
                self.claims_unsure = True  # the claim may have committed, its answer lost
                failures += 1
                continue
            failures = 0
            for claim in claims:
                self._start(claim)

    async def _reconcile(self) -> bool:
        """After a claim whose answer never came, give back (untouched) whatever the server
        shows this runner holding that it does not know of; otherwise that work would wait for
        its lease to expire (an FL participant would miss its round). Not while an offer's
        claim is in flight: its answer may still come. True when done."""
        if self.claiming > 0:
            return False
        self.reconciling = True  # an offer that comes meanwhile waits (its claim is unlisted)
        try:
            released = await self.client.reconcile(sorted({a.token for a in self.active.values()}))
        except ServerError as exc:
            log.warning("claims_not_reconciled", error=str(exc)[:200])
            if exc.status >= 500:
                return False
            released = []  # refused (e.g. a server without the endpoint): leases cover it
        except Exception as exc:
            log.warning("claims_not_reconciled", error=str(exc)[:200])
            return False
        finally:
            self.reconciling = False
            self._claim_deferred()
        self.claims_unsure = False
        if released:
            log.info("unknown_claims_released", task_ids=released)
        return True

    async def _on_offer(self, task_id: str) -> None:
        if self.stopping.is_set() or task_id in self.active:
            return
        if self.free_slots <= 0 or self.reconciling:
            if len(self.deferred_offers) < MAX_DEFERRED_OFFERS:
                self.deferred_offers[task_id] = None
            return
        self.claiming += 1  # several offers may arrive at once: each holds its slot while claiming
        claim: dict[str, Any] | None = None
        me = asyncio.current_task()
        if me is not None:
            self._offer_claims.add(me)  # stopping waits for the answer, then releases a win
        try:
            claim = await self.client.claim(task_id)
        except ServerError:
            pass  # someone else won it, it expired, or it no longer fits: harmless
        except Exception as exc:
            log.warning("offer_claim_unreachable", task_id=task_id, error=str(exc)[:200])
            self.claims_unsure = True
        finally:
            self.claiming -= 1
            if me is not None:
                self._offer_claims.discard(me)
        if claim is None:
            self._claim_deferred()  # the slot is still free: the next deferred offer may fit
            return
        self._start(claim)

    def _start(self, claim: dict[str, Any]) -> None:
        task = claim["task"]
        a = Active(task_id=str(task["id"]), token=str(claim["claim_token"]), cancel=CancelToken())
        self.active[a.task_id] = a
        if self.stopping.is_set():
            return  # won while stopping: held unstarted, released by _shutdown
        a.job = asyncio.create_task(self._execute(a, task), name=f"task:{a.task_id}")

    async def _execute(self, a: Active, task: dict[str, Any]) -> None:
        a.logs = LogBuffer(
            self.client,
            a.task_id,
            a.token,
            max_bytes=self.o.log_buffer_bytes,
            max_batches=self.o.log_buffer_batches,
            retry_first=self.o.report_retry_first,
            retry_max=self.o.report_retry_max,
        )
        try:
            if task.get("status") == "assigned":
                await self.client.transition(a.task_id, "start", {"claim_token": a.token})
            executor = self.executors.get(task["type"])
            if executor is None:
                outcome = Outcome(False, None, "", f"this runner cannot run {task['type']} tasks")
            else:
                if self._streams_tokens(executor, task):
                    # Opened before the first token: a cancel ends it (and so the generation)
                    # at once even while the backend has produced nothing (a long prompt being
                    # read, a stalled backend), not at the next heartbeat.
                    self._stream_of(a).open()
                outcome = await executor.run(task, a.logs.add, a.cancel)
            if a.stream is not None:
                # The last deltas reach the server before the outcome does.
                await a.stream.close(STOP_STEP_SECONDS)
                if a.stream.ended == BROKEN:
                    outcome = _broken_stream_outcome(a.stream, outcome)
            if a.revoked:
                # A revoked claim is released (or gone), never reported; its last lines go out
                # (briefly) while the claim may still take them.
                await a.logs.finish(STOP_STEP_SECONDS, "claim revoked")
                return
            if outcome.reported:
                self.completed += 1  # the executor's own request ended the task on the server
                await a.logs.finish(LOG_DRAIN_SECONDS, "task ended")
            else:
                await self._report(a, outcome)
        except ServerError as exc:
            log.warning("task_start_refused", task_id=a.task_id, error=str(exc))
        except Exception as exc:
            log.warning("task_crashed", task_id=a.task_id, error=str(exc)[:300])
            if not a.revoked:  # a revoked claim is released (or gone), never failed
                with contextlib.suppress(Exception):
                    await self._report(a, Outcome(False, None, "", f"runner error: {exc}"[:1000]))
        finally:
            a.logs.close("task ended")  # no-op once finished; drops (counted) what is left
            if a.stream is not None and not a.stream.closed:
                await a.stream.close(0)
            self.active.pop(a.task_id, None)
            self.slot_freed.set()
            self._claim_deferred()

    def _claim_token(self, task_id: str) -> str | None:
        a = self.active.get(task_id)
        return None if a is None else a.token

    def _streams_tokens(self, executor: object, task: dict[str, Any]) -> bool:
        """An llm task with ``stream: true`` run by the executor whose tokens go to the server."""
        config = task.get("config")
        return (
            isinstance(executor, LlmExecutor)
            and executor.token_sink == self._on_token
            and isinstance(config, dict)
            and config.get("stream") is True
        )

    def _stream_of(self, a: Active) -> TokenStream:
        if a.stream is None:
            a.stream = TokenStream(
                self.client, a.task_id, a.token, on_end=lambda how: _stream_ended(a, how)
            )
        return a.stream

    async def _on_token(self, task: dict[str, Any], text: str) -> None:
        a = self.active.get(str(task.get("id")))
        if a is None or a.revoked:
            return
        self._stream_of(a).send(text)

    def _claim_deferred(self) -> None:
        """A slot freed: claim the oldest deferred offers that now fit (one that expired or
        went to another runner meanwhile is refused by the server, harmlessly)."""
        if self.deferred_offers and self.free_slots > 0 and not self.stopping.is_set():
            task_id = next(iter(self.deferred_offers))
            del self.deferred_offers[task_id]
            job = asyncio.get_running_loop().create_task(self._on_offer(task_id))
            self._offer_jobs.add(job)  # keep a reference until it is done
            job.add_done_callback(self._offer_jobs.discard)  # one claim per freed slot

    async def _report(self, a: Active, outcome: Outcome) -> bool:
        """Report a finished run's outcome. Tried again (same claim token, same body: the
        server takes a repeated transition as the one it already took) until the server settles
        it: accepted, or refused for good (a 4xx such as 409 ``stale_claim``: the claim is gone,
        so no timer is needed to know). Meanwhile the claim stays held: heartbeats renew it,
        reconciles list it, its slot stays taken. A runner that stops tries once more, then
        gives up. The run's unsent log lines go before each try, and get a last try once the
        outcome is accepted. True when the server accepted it; a warning says why otherwise."""
        a.reporting = True
        if a.logs is not None:
            a.logs.stop_sender()  # from here on the report's tries send the lines first
        action = "complete" if outcome.ok else "fail"
        try:
            body = await self._report_body(a, outcome)
            ended = time.monotonic()  # the run is over: what follows is delivery

            async def send() -> dict[str, Any]:
                if a.logs is not None and not self.stopping.is_set():
                    with contextlib.suppress(TimeoutError):  # lines first, when they go
                        await asyncio.wait_for(a.logs.drain(), LOG_DRAIN_SECONDS)
                waited = int((time.monotonic() - ended) * 1000)
                if outcome.ok and waited >= REPORT_DELAY_MIN_MS:
                    # A completion held up (the server unreachable, retried): the meter stops
                    # at the run's end, not when its report got through.
                    body["usage"] = {**(outcome.usage or {}), "report_delay_ms": waited}
                return await self.client.transition(a.task_id, action, body)

            await self._until_settled(a, action, send)
        except asyncio.CancelledError:
            log.warning("task_report_abandoned", task_id=a.task_id, action=action, why="cancelled")
            raise
        except ReportAbandoned as exc:
            log.warning("task_report_abandoned", task_id=a.task_id, action=action, why=str(exc))
            if a.logs is not None:
                a.logs.close("report abandoned")
            return False
        except Exception as exc:
            log.warning("task_report_refused", task_id=a.task_id, action=action, error=_why(exc))
            if a.logs is not None:
                a.logs.close("report refused")
            return False
        if outcome.ok:
            self.completed += 1
        else:
            self.failed += 1
        if a.logs is not None:
            last = STOP_STEP_SECONDS if self.stopping.is_set() else LOG_DRAIN_SECONDS
            await a.logs.finish(last, f"not sent by the time the {action} was accepted")
        return True

    async def _report_body(self, a: Active, outcome: Outcome) -> dict[str, Any]:
        if not outcome.ok:
            body: dict[str, Any] = {
                "claim_token": a.token,
                "error": outcome.error or "failed",
                "exit_code": outcome.exit_code,
            }
            if outcome.usage:
                # What a failed or cancelled run used (an llm task: the tokens delivered before
                # it broke off), so the server can bill partial work; it ignores what it does
                # not read.
                body["usage"] = outcome.usage
                body["output"] = outcome.output
            return body
        full = outcome.full_output
        whole = full or outcome.output.encode()
        body = {
            "claim_token": a.token,
            "output": outcome.output,
            "exit_code": 0,
            "result_hash": hashlib.sha256(whole).hexdigest(),
            "usage": outcome.usage,
        }
        if full is not None:
            # Too large to keep inline: the whole output goes to the content store (by CID, so
            # a repeated upload is harmless).
            try:
                body["output_cid"] = await self._until_settled(
                    a, "upload", lambda: self.client.upload_output(a.task_id, a.token, full)
                )
            except Exception as exc:
                log.warning("output_upload_failed", task_id=a.task_id, error=_why(exc))
                # The run succeeded; the result says its whole output was not kept.
                body["error"] = (
                    f"the whole output ({len(full)} bytes) could not be "
                    f"stored, only its start is inline: {str(exc)[:500]}"
                )
        return body

    async def _until_settled(self, a: Active, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until its answer settles it: the answer, or the refusal raised (see
        ``settled``). No answer, a 5xx or a 429 is tried again after a backoff (the stop cuts
        it short). Once the runner is stopping the try is the last one, at most
        STOP_STEP_SECONDS: ReportAbandoned when it too is unsettled."""
        backoff = Backoff(self.o.report_retry_first, self.o.report_retry_max)
        while True:
            last = self.stopping.is_set()
            try:
                if last:
                    return await asyncio.wait_for(call(), STOP_STEP_SECONDS)
                return await call()
            except Exception as exc:
                if settled(exc):
                    raise
                error: BaseException = exc
            if last:
                raise ReportAbandoned(f"runner stopping, the last {what} try failed: {_why(error)}")
            if backoff.tries == 0:
                log.warning(
                    "task_report_retrying",
                    task_id=a.task_id,
                    action=what,
                    error=_why(error),
                    detail="the outcome is kept and sent again until the server answers",
                )
            wait = backoff.next(error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)


def _stream_ended(a: Active, how: str) -> None:
    """An llm task's streaming leg ended before the runner closed it: stop the generation at
    once. The server answered it cancelled (the prompt was cancelled: its client went away),
    or it broke after text went out (that text reached the client: the run cannot be finished
    silently; it is reported failed with what was streamed)."""
    if a.cancel.cancelled:
        return
    if how == CANCELLED:
        a.cancel.cancel("cancelled by the client")
    else:
        a.cancel.cancel("the token stream to the server broke off")


def _broken_stream_outcome(stream: TokenStream, outcome: Outcome) -> Outcome:
    """The outcome of a run whose streaming leg broke after its first delta (the server
    unreachable, the request failed): a failure with the text streamed before it broke and the
    usage of that text (its input count as the backend reported it, its output estimated by
    the server from the text), never a completion nobody received whole."""
    usage = {**outcome.usage, "output_tokens": None, "streamed_chunks": len(stream.sent_parts)}
    usage.pop("finish_reason", None)
    why = f"the token stream to the server broke off: {stream.error or 'connection lost'}"
    return Outcome(False, None, stream.sent_text, why[:1000], usage=usage)


async def _settle(jobs: list[asyncio.Task[Any]], timeout: float, cancel: bool = True) -> None:
    """Wait up to ``timeout`` seconds for ``jobs``; with ``cancel``, cancel what is left and wait
    for it to unwind."""
    if not jobs:
        return
    left = set(jobs)
    if timeout > 0:
        _, left = await asyncio.wait(jobs, timeout=timeout)
    if cancel and left:
        for job in left:
            job.cancel()
        await asyncio.gather(*left, return_exceptions=True)


def _why(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]

"""The runner's main loop: register, heartbeat, pull and push intake, execute, report."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from parity.agent import RUNNER_VERSION
from parity.agent.capabilities import detect
from parity.agent.client import ServerClient, ServerError
from parity.agent.executors import CancelToken, Executor, Outcome
from parity.agent.executors.docker import DockerEngine
from parity.agent.fl import FlExecutor
from parity.agent.llm.executor import LlmExecutor
from parity.agent.push import PushReceiver
from parity.agent.token_stream import TokenStream
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
log = get_logger("parity.runner")


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


@dataclass
class Active:
    task_id: str
    token: str
    cancel: CancelToken
    job: asyncio.Task[None] | None = None
    revoked: bool = False
    stream: TokenStream | None = None  # an llm task's token deltas, once the first came


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

    def stop(self) -> None:
        self.stopping.set()
        self.slot_freed.set()
        self._beat_now.set()  # the server shows the runner draining at once

    @property
    def free_slots(self) -> int:
        return self.o.max_concurrent_tasks - len(self.active) - self.claiming

    async def run(self) -> None:
        await self.client.sign_in(self.account)
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
        reg = await self.client.register(body)
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
        unfinished = list(self.active.values())
        for a in unfinished:
            a.revoked = True
            a.cancel.cancel("runner shutting down")
        # The executors kill their processes at once; their last log lines still go out under
        # a valid claim, so nothing of theirs reaches the server after the release.
        await _settle([a.job for a in unfinished if a.job is not None], STOP_STEP_SECONDS)
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
        seq = 0

        async def sink(lines: list[str]) -> None:
            nonlocal seq
            try:
                await self.client.logs(a.task_id, a.token, seq, lines)
            except Exception as exc:
                log.warning("log_append_failed", task_id=a.task_id, error=str(exc)[:200])
            seq += 1

        try:
            if task.get("status") == "assigned":
                await self.client.transition(a.task_id, "start", {"claim_token": a.token})
            executor = self.executors.get(task["type"])
            if executor is None:
                outcome = Outcome(False, None, "", f"this runner cannot run {task['type']} tasks")
            else:
                outcome = await executor.run(task, sink, a.cancel)
            if a.stream is not None:
                # The last deltas reach the server before the outcome does.
                await a.stream.close(STOP_STEP_SECONDS)
            if a.revoked:
                return  # a revoked claim is released (or gone), never reported
            if outcome.reported:
                self.completed += 1  # the executor's own request ended the task on the server
            else:
                await self._report(a, outcome)
        except ServerError as exc:
            log.warning("task_report_refused", task_id=a.task_id, error=str(exc))
        except Exception as exc:
            log.warning("task_crashed", task_id=a.task_id, error=str(exc)[:300])
            if not a.revoked:  # a revoked claim is released (or gone), never failed
                with contextlib.suppress(Exception):
                    await self._report(a, Outcome(False, None, "", f"runner error: {exc}"[:1000]))
        finally:
            if a.stream is not None and not a.stream.closed:
                await a.stream.close(0)
            self.active.pop(a.task_id, None)
            self.slot_freed.set()
            self._claim_deferred()

    def _claim_token(self, task_id: str) -> str | None:
        a = self.active.get(task_id)
        return None if a is None else a.token

    async def _on_token(self, task: dict[str, Any], text: str) -> None:
        a = self.active.get(str(task.get("id")))
        if a is None or a.revoked:
            return
        if a.stream is None:
            a.stream = TokenStream(self.client, a.task_id, a.token)
        a.stream.send(text)

    def _claim_deferred(self) -> None:
        """A slot freed: claim the oldest deferred offers that now fit (one that expired or
        went to another runner meanwhile is refused by the server, harmlessly)."""
        if self.deferred_offers and self.free_slots > 0 and not self.stopping.is_set():
            task_id = next(iter(self.deferred_offers))
            del self.deferred_offers[task_id]
            job = asyncio.get_running_loop().create_task(self._on_offer(task_id))
            self._offer_jobs.add(job)  # keep a reference until it is done
            job.add_done_callback(self._offer_jobs.discard)  # one claim per freed slot

    async def _report(self, a: Active, outcome: Outcome) -> None:
        if outcome.ok:
            whole = outcome.full_output or outcome.output.encode()
            body = {
                "claim_token": a.token,
                "output": outcome.output,
                "exit_code": 0,
                "result_hash": hashlib.sha256(whole).hexdigest(),
                "usage": outcome.usage,
            }
            if outcome.full_output is not None:
                # Too large to keep inline: the whole output goes to the content store.
                try:
                    body["output_cid"] = await self.client.upload(outcome.full_output)
                except Exception as exc:
                    log.warning("output_upload_failed", task_id=a.task_id, error=str(exc)[:200])
                    # The run succeeded; the result says its whole output was not kept.
                    body["error"] = (
                        f"the whole output ({len(outcome.full_output)} bytes) could not be "
                        f"stored, only its start is inline: {str(exc)[:500]}"
                    )
            action = "complete"
        else:
            body = {
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
            action = "fail"
        # Same token, same transition: safe to retry after a timeout.
        for attempt in range(5):
            try:
                await self.client.transition(a.task_id, action, body)
                break
            except ServerError:
                raise
            except Exception:
                await asyncio.sleep(min(2**attempt, 10))
        if outcome.ok:
            self.completed += 1
        else:
            self.failed += 1


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

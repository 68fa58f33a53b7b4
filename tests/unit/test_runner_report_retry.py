"""A finished run's report is kept and tried again, same claim token and same body, until the
server settles it: accepted, or refused for good (a 4xx); a completion that got through late
says how long it waited (``usage.report_delay_ms``, not billed). No answer, a 5xx (503 with
Retry-After) and a 429 are tried again with a capped backoff that honours Retry-After. Log
batches the server did not take are kept (bounded: past the bound new ones are dropped, counted
and marked where they were) and resent in seq order."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from eth_account import Account

from parity.agent import loop
from parity.agent.client import ServerClient, ServerError, _error
from parity.agent.executors import CancelToken, Outcome
from parity.agent.loop import Active, Backoff, LogBuffer, Runner, RunnerOptions

ACCOUNT = Account.from_key("0x" + "47" * 32)


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def record(event: str, **fields: Any) -> None:
            self.seen.append((level, event, fields))

        return record

    def warned(self, event: str) -> list[dict[str, Any]]:
        return [f for level, e, f in self.seen if level == "warning" and e == event]


@pytest.fixture
def said(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(loop, "log", recorder)
    return recorder


class Client(ServerClient):
    """Answers each call with the next scripted failure, then accepts."""

    def __init__(self, failures: list[Exception]) -> None:
        super().__init__("http://unused.test")
        self.failures = failures
        self.calls: list[tuple[str, str, dict[str, Any], float]] = []
        self.accepted: list[tuple[str, dict[str, Any]]] = []

    async def transition(self, task_id: str, action: str, body: dict[str, Any]) -> Any:
        self.calls.append((task_id, action, dict(body), time.monotonic()))
        if self.failures:
            raise self.failures.pop(0)
        self.accepted.append((action, body))
        return {}


def _runner(client: ServerClient) -> Runner:
    options = RunnerOptions(
        device_id="d",
        pull=False,
        push=False,
        report_retry_first=0.01,
        report_retry_max=0.02,
    )
    return Runner(options, ACCOUNT, client, {})


def _unavailable(status: int, code: str, after: float | None = None) -> ServerError:
    return ServerError(status, code, "try again", {}, retry_after=after)


async def test_a_report_that_gets_no_answer_is_tried_until_the_server_takes_it() -> None:
    request = httpx.Request("POST", "http://unused.test/complete")
    down: list[Exception] = [httpx.ConnectError("refused", request=request) for _ in range(7)]
    down += [httpx.ReadTimeout("no answer", request=request)]
    client = Client(down)  # more failures than the five tries the runner used to make
    runner = _runner(client)
    a = Active("t-1", "claim-token-0123456789", CancelToken())

    assert await runner._report(a, Outcome(True, 0, "done\n")) is True

    assert len(client.calls) == 9 and len(client.accepted) == 1
    # Same task, transition, token and body every time: the server takes a repeat as one.
    assert {(t, act, repr(sorted(b.items()))) for t, act, b, _ in client.calls} == {
        ("t-1", "complete", repr(sorted(client.calls[0][2].items())))
    }
    assert client.calls[0][2]["claim_token"] == "claim-token-0123456789"
    assert runner.completed == 1
    await client.close()


async def test_a_completion_held_up_says_how_long_so_that_time_is_not_billed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loop, "REPORT_DELAY_MIN_MS", 50)
    outage = [_unavailable(503, "database_unavailable", after=0.1) for _ in range(2)]
    client = Client(outage)
    runner = _runner(client)
    a = Active("t-d", "claim-token-0123456789", CancelToken())
    usage = {"wall_seconds": 0.5}

    assert await runner._report(a, Outcome(True, 0, "done\n", usage=usage)) is True

    bodies = [b for _, _, b, _ in client.calls]
    assert "report_delay_ms" not in bodies[0]["usage"]  # the first try went out at once
    [(_, accepted)] = client.accepted
    assert accepted["usage"]["report_delay_ms"] >= 200  # two Retry-After waits of 0.1 s
    assert accepted["usage"]["wall_seconds"] == 0.5  # the run's own figures are kept
    assert usage == {"wall_seconds": 0.5}  # the outcome itself is not changed
    # A failure is not billed by time: it never carries a delay.
    client = Client([_unavailable(503, "database_unavailable", after=0.1)] * 2)
    runner = _runner(client)
    b = Active("t-e", "claim-token-0123456789", CancelToken())
    assert await runner._report(b, Outcome(False, 1, "", "exit 1", usage=usage)) is True
    assert all("report_delay_ms" not in body.get("usage", {}) for _, _, body, _ in client.calls)
    await client.close()


async def test_retryable_answers_are_tried_again_honouring_retry_after() -> None:
    client = Client(
        [
            _unavailable(503, "database_unavailable", after=0.3),
            _unavailable(503, "database_conflict", after=0.2),
            _unavailable(429, "rate_limited"),
            _unavailable(502, "bad_gateway"),
        ]
    )
    runner = _runner(client)
    a = Active("t-2", "claim-token-0123456789", CancelToken())

    assert await runner._report(a, Outcome(False, 3, "", "exit 3")) is True

    times = [at for *_, at in client.calls]
    assert len(times) == 5 and [act for _, act, _, _ in client.calls] == ["fail"] * 5
    assert times[1] - times[0] >= 0.3 and times[2] - times[1] >= 0.2  # Retry-After waited
    assert runner.failed == 1 and runner.completed == 0
    await client.close()


@pytest.mark.parametrize(
    ("status", "code"),
    [(409, "stale_claim"), (409, "claim_invalid"), (404, "task_not_found")],
)
async def test_a_refusal_for_good_ends_the_report_with_a_warning(
    status: int, code: str, said: Recorder
) -> None:
    client = Client([ServerError(status, code, "the claim is gone", {})])
    runner = _runner(client)
    a = Active("t-3", "claim-token-0123456789", CancelToken())

    assert await runner._report(a, Outcome(True, 0, "done\n")) is False

    assert len(client.calls) == 1  # the server's answer settles it: not tried again
    [warning] = said.warned("task_report_refused")
    assert warning["task_id"] == "t-3" and code in warning["error"]
    assert runner.completed == 0 and runner.failed == 0
    await client.close()


def test_a_server_error_carries_its_retry_after() -> None:
    envelope = {"error": {"code": "database_unavailable", "message": "m", "details": {}}}
    err = _error(httpx.Response(503, json=envelope, headers={"Retry-After": "2"}))
    assert (err.status, err.code, err.retry_after) == (503, "database_unavailable", 2.0)
    assert _error(httpx.Response(409, json=envelope)).retry_after is None
    assert _error(httpx.Response(503, headers={"Retry-After": "soon"})).retry_after is None


def test_the_backoff_doubles_to_its_cap_and_never_undercuts_retry_after() -> None:
    backoff = Backoff(1.0, 10.0)
    waits = [backoff.next(None) for _ in range(8)]
    assert all(
        0.8 * w <= got <= w for got, w in zip(waits, [1, 2, 4, 8, 10, 10, 10, 10], strict=True)
    )
    assert backoff.next(_unavailable(503, "database_unavailable", after=30)) == 30
    assert backoff.next(_unavailable(503, "database_unavailable", after=3600)) == 60  # bounded
    backoff.reset()
    assert backoff.next(None) <= 1.0


class LogClient(ServerClient):
    def __init__(self) -> None:
        super().__init__("http://unused.test")
        self.down = False
        self.stored: dict[int, list[str]] = {}  # seq -> lines, as the server keeps them
        self.order: list[int] = []

    async def logs(self, task_id: str, token: str, seq: int, lines: list[str]) -> None:
        if self.down:
            raise httpx.ConnectError("refused")
        self.order.append(seq)
        self.stored.setdefault(seq, lines)


def _buffer(client: LogClient, **bounds: int) -> LogBuffer:
    return LogBuffer(client, "t-4", "claim-token", retry_first=0.01, retry_max=0.02, **bounds)


async def test_log_batches_the_server_did_not_take_are_resent_in_seq_order() -> None:
    client = LogClient()
    logs = _buffer(client)
    await logs.add(["l0"])
    await asyncio.wait_for(_until(lambda: 0 in client.stored), 5)
    client.down = True
    for i in (1, 2, 3):
        await logs.add([f"l{i}"])
    await asyncio.sleep(0.1)  # several tries while down: all kept
    assert [seq for seq, *_ in logs.pending] == [1, 2, 3]
    client.down = False
    await asyncio.wait_for(_until(lambda: not logs.pending), 5)
    assert client.stored == {0: ["l0"], 1: ["l1"], 2: ["l2"], 3: ["l3"]}
    assert client.order == sorted(client.order)  # never out of order
    await logs.finish(1, "done")
    await client.close()


async def test_unsent_log_batches_are_bounded_dropping_the_newest_with_a_count(
    said: Recorder,
) -> None:
    client = LogClient()
    client.down = True
    logs = _buffer(client, max_batches=3)
    for i in range(5):
        await logs.add([f"l{i}", "x"])
    assert [seq for seq, *_ in logs.pending] == [0, 1, 2]  # the head of the log is kept
    assert len(said.warned("task_logs_overflow")) == 1  # said once, not per batch
    # The last try after the outcome: still down, so the rest goes too, counted.
    await logs.finish(0.2, "not sent by the time the complete was accepted")
    [dropped] = said.warned("task_logs_dropped")
    assert (dropped["task_id"], dropped["batches"], dropped["lines"]) == ("t-4", 5, 10)
    assert logs.closed and not logs.pending and client.stored == {}
    await logs.add(["late"])  # after the end: dropped, nothing sent
    assert client.stored == {}
    await client.close()


async def test_a_burst_over_the_bound_leaves_no_silent_hole_in_the_stored_log() -> None:
    """Output faster than the server takes it (a healthy server, 1.5 MiB printed at once):
    the lines kept are the head of the log, contiguous, and where the runner dropped some a
    marker line says how many; no batch in the middle goes missing unmarked."""
    client = LogClient()
    client.down = True
    logs = _buffer(client, max_batches=3)
    for i in range(5):
        await logs.add([f"l{i}"])
    client.down = False
    await asyncio.wait_for(_until(lambda: not logs.pending), 5)
    await logs.add(["l5"])
    await asyncio.wait_for(_until(lambda: not logs.pending), 5)
    assert client.stored == {
        0: ["l0"],
        1: ["l1"],
        2: ["l2"],
        3: ["[2 log lines dropped here by the runner: its unsent log buffer was full]", "l5"],
    }
    await logs.finish(1, "done")
    await client.close()


async def test_a_claim_refused_for_good_logs_no_more(said: Recorder) -> None:
    class Gone(LogClient):
        async def logs(self, task_id: str, token: str, seq: int, lines: list[str]) -> None:
            raise ServerError(409, "stale_claim", "stale", {})

    client = Gone()
    logs = _buffer(client)
    await logs.add(["a"])
    await logs.add(["b"])
    assert await logs.drain() is True
    assert logs.closed and said.warned("task_logs_refused")
    await logs.finish(1, "task ended")
    assert said.warned("task_logs_dropped")[0]["batches"] == 2
    await client.close()


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)

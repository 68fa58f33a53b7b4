"""The queue across two real server processes on one PostgreSQL database.

500 tasks are created through both servers; 20 runner clients (each its own runner, half on
each server) claim, start and complete them concurrently. Every task must end ``completed``
exactly once, with the output its runner sent, one attempt each, and no claim may hand out a
task that was already completed. Timings are printed, never asserted (ARCHITECTURE §7)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ALICE, bearer, sign_in
from tests.e2e.procs import ServerProcess

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

N_TASKS = 500
N_RUNNERS = 20
CREATE_CONCURRENCY = 16
VERIFY_CONCURRENCY = 16
DEADLINE_S = 240.0
CLAIM_WAIT_S = 1
SERVER_ENV = {"LOG_LEVEL": "warning", "SCHEDULER_INTERVAL_SECONDS": "1"}
ACTIVE = ("pending", "assigned", "running")


@dataclass
class QueueStats:
    """What the runner clients saw; written only from the event loop, so no locks."""

    claims_200: int = 0
    claims_204: int = 0
    completions_accepted: int = 0
    completed: set[str] = field(default_factory=set)
    claimed: Counter[str] = field(default_factory=Counter)
    claimed_after_completion: list[str] = field(default_factory=list)
    claimed_not_assigned: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    per_runner: Counter[int] = field(default_factory=Counter)


def _client(base_url: str, token: str | None = None, pool: int = 8) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers=bearer(token) if token else {},
        timeout=httpx.Timeout(30.0),
        limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        trust_env=False,
    )


async def _gather_bounded(n: int, limit: int, fn: Any) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with sem:
            return await fn(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def _create_tasks(clients: list[httpx.AsyncClient], run: str) -> dict[str, str]:
    """N_TASKS tasks, alternately through each server; returns id -> title."""

    async def create(i: int) -> tuple[str, str]:
        title = f"qp-{run}-{i:04d}"
        r = await clients[i % len(clients)].post(
            "/api/v1/tasks",
            json={
                "title": title,
                "description": "queue across processes",
                "type": "command",
                "config": {"command": ["echo", title]},
            },
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["status"] == "pending" and body["title"] == title
        return body["id"], title

    pairs = await _gather_bounded(N_TASKS, CREATE_CONCURRENCY, create)
    return dict(pairs)


async def _register_runner(client: httpx.AsyncClient, device_id: str) -> str:
    r = await client.post(
        "/api/v1/runners",
        json={
            "device_id": device_id,
            "capabilities": {"cpu_cores": 4, "memory_mb": 4096},
            "max_concurrent_tasks": 1,
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["runner_token"])


async def _runner_loop(
    idx: int,
    base_url: str,
    token: str,
    stats: QueueStats,
    stop: asyncio.Event,
    deadline: float,
) -> None:
    """claim (wait=1) → start → complete(output=title) until told to stop."""
    async with _client(base_url, token, pool=2) as rc:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                r = await rc.post(
                    "/api/v1/runners/tasks/claim", params={"wait": CLAIM_WAIT_S, "start": "false"}
                )
            except httpx.HTTPError as exc:
                stats.errors.append(f"runner {idx} claim: {exc!r}")
                await asyncio.sleep(0.2)
                continue
            if r.status_code == 204:
                stats.claims_204 += 1
                continue
            if r.status_code != 200:
                stats.errors.append(f"runner {idx} claim: {r.status_code} {r.text[:200]}")
                await asyncio.sleep(0.2)
                continue
            claim = r.json()
            task = claim["task"]
            tid = task["id"]
            stats.claims_200 += 1
            stats.claimed[tid] += 1
            stats.per_runner[idx] += 1
            if tid in stats.completed:
                stats.claimed_after_completion.append(tid)
            if task["status"] != "assigned":
                stats.claimed_not_assigned.append((tid, task["status"]))
            body = {"claim_token": claim["claim_token"]}
            r = await rc.post(f"/api/v1/runners/tasks/{tid}/start", json=body)
            if r.status_code != 200 or r.json()["status"] != "running":
                stats.errors.append(f"runner {idx} start {tid}: {r.status_code} {r.text[:200]}")
                continue
            r = await rc.post(
                f"/api/v1/runners/tasks/{tid}/complete",
                json={**body, "output": task["title"], "exit_code": 0},
            )
            if r.status_code != 200 or r.json()["status"] != "completed":
                stats.errors.append(f"runner {idx} complete {tid}: {r.status_code} {r.text[:200]}")
                continue
            stats.completions_accepted += 1
            stats.completed.add(tid)


async def _active_count(client: httpx.AsyncClient) -> int:
    r = await client.get("/api/v1/tasks", params={"status": list(ACTIVE), "limit": 1})
    assert r.status_code == 200, r.text
    return int(r.headers["X-Total-Count"])


async def _watch(client: httpx.AsyncClient, stop: asyncio.Event, deadline: float) -> None:
    """Set ``stop`` once no task is pending, assigned or running (or at the deadline)."""
    while time.monotonic() < deadline:
        if await _active_count(client) == 0:
            break
        await asyncio.sleep(0.25)
    stop.set()


async def _verify(
    clients: list[httpx.AsyncClient], titles: dict[str, str]
) -> tuple[list[str], Counter[str]]:
    """Per task: result output and attempts (statuses come from one list request).
    Returns problems and the attempt outcomes seen."""
    ids = list(titles)
    outcomes: Counter[str] = Counter()

    async def check(i: int) -> list[str]:
        tid = ids[i]
        c = clients[i % len(clients)]
        problems = []
        r = await c.get(f"/api/v1/tasks/{tid}/result")
        if r.status_code != 200:
            problems.append(f"{tid}: result {r.status_code}")
        elif r.json()["output"] != titles[tid]:
            problems.append(f"{tid}: output {r.json()['output']!r} != title {titles[tid]!r}")
        r = await c.get(f"/api/v1/tasks/{tid}/attempts")
        assert r.status_code == 200, r.text
        attempts = r.json()
        outcomes.update(str(a["outcome"]) for a in attempts)
        if [a["outcome"] for a in attempts] != ["completed"]:
            problems.append(f"{tid}: attempts {[(a['attempt'], a['outcome']) for a in attempts]}")
        return problems

    found = await _gather_bounded(len(ids), VERIFY_CONCURRENCY, check)
    return [p for ps in found for p in ps], outcomes


async def _scenario(urls: list[str]) -> None:
    run = uuid.uuid4().hex[:6]
    t0 = time.perf_counter()
    async with _client(urls[0]) as anon:
        token = await sign_in(anon, ALICE)
    wallets = [_client(u, token, pool=CREATE_CONCURRENCY) for u in urls]
    try:
        titles = await _create_tasks(wallets, run)
        t_created = time.perf_counter()
        assert len(titles) == N_TASKS
        assert len(set(titles.values())) == N_TASKS

        # Runner i talks to server i % 2 and is registered there.
        homes = [urls[i % len(urls)] for i in range(N_RUNNERS)]
        tokens = await asyncio.gather(
            *(
                _register_runner(wallets[i % len(urls)], f"qp-{run}-runner-{i:02d}")
                for i in range(N_RUNNERS)
            )
        )
        stats = QueueStats()
        stop = asyncio.Event()
        t_run = time.perf_counter()
        deadline = time.monotonic() + DEADLINE_S
        await asyncio.gather(
            _watch(wallets[0], stop, deadline),
            *(
                _runner_loop(i, homes[i], tokens[i], stats, stop, deadline)
                for i in range(N_RUNNERS)
            ),
        )
        t_drained = time.perf_counter()

        left = await _active_count(wallets[1])
        r = await wallets[1].get("/api/v1/tasks", params={"status": "completed", "limit": 500})
        assert r.status_code == 200, r.text
        listed_completed = int(r.headers["X-Total-Count"])
        completed_ids = {t["id"] for t in r.json() if t["status"] == "completed"}
        problems, outcomes = await _verify(wallets, titles)
        t_verified = time.perf_counter()
    finally:
        for w in wallets:
            await w.aclose()

    executions = stats.claims_200
    twice = {tid: n for tid, n in stats.claimed.items() if n > 1}
    drain_s = t_drained - t_run
    print()
    print(
        f"queue e2e: {N_TASKS} tasks, {N_RUNNERS} runners over {len(urls)} servers;"
        f" executions (claims answered 200) = {executions},"
        f" completions accepted = {stats.completions_accepted},"
        f" empty claims (204) = {stats.claims_204}"
    )
    print(
        f"  create {t_created - t0:.1f} s ({N_TASKS / (t_created - t0):.0f} tasks/s),"
        f" drain {drain_s:.1f} s ({stats.completions_accepted / drain_s:.0f} cycles/s),"
        f" verify {t_verified - t_drained:.1f} s, total {t_verified - t0:.1f} s"
    )
    per_server = Counter(homes[i] for i, n in stats.per_runner.items() for _ in range(n))
    print(
        f"  claims per server: {dict(per_server)};"
        f" per runner min/max {min(stats.per_runner.values(), default=0)}"
        f"/{max(stats.per_runner.values(), default=0)}; attempt outcomes {dict(outcomes)}"
    )

    assert not stats.errors, stats.errors[:10]
    assert left == 0, f"{left} tasks still pending/assigned/running after {DEADLINE_S:.0f} s"
    assert listed_completed == N_TASKS
    assert completed_ids == set(titles), "every created task is listed as completed"
    assert not problems, problems[:10]
    assert stats.completions_accepted == N_TASKS
    assert stats.completed == set(titles)
    assert not stats.claimed_after_completion, stats.claimed_after_completion[:10]
    assert not stats.claimed_not_assigned, stats.claimed_not_assigned[:10]
    assert not twice, dict(list(twice.items())[:10])
    assert executions == N_TASKS
    assert outcomes == Counter({"completed": N_TASKS})


def test_two_servers_drain_one_queue_exactly_once(fresh_database_url: str, tmp_path: Path):
    servers = [
        ServerProcess(tmp_path / name, fresh_database_url, **SERVER_ENV) for name in ("a", "b")
    ]
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_healthy(60)
        asyncio.run(_scenario([s.url for s in servers]))
        for s in servers:
            assert "Traceback" not in s.log(), s.log()[-4000:]
    finally:
        try:
            servers[0].stop()
        finally:
            servers[1].stop()

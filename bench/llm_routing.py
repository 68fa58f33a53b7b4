"""LLM routing: server-added latency of prompts, open loop, through real runners.

One server on a throwaway PostgreSQL database, N real ``parity-runner`` processes (pull only),
each with ``--llm-backend openai=URL`` of its own instant fake backend process (the fake of
tests/contract/llm_fakes.py: the real SSE wire format, 7 tokens, no delay). For each rate an
open-loop generator schedules sends at fixed intervals and measures every latency from the
*scheduled* send time, so a slow answer never delays the next send (no coordinated omission).
The generator (and the floor's client) runs on uvloop and never sends early: the standard loop
wakes a sleeper up to 1 ms late (its epoll timeout is rounded up to whole milliseconds; sends
p50 0.66 ms late measured alone, 0.24 ms on uvloop), which every latency would carry; how late
the sends were is printed with each cell.

- ``async``: ``POST /api/llm/prompts?wait=30``; latency until the 200 with the result.
- ``stream``: ``POST /v1/chat/completions`` with ``stream=true``; latency until the first
  content token (TTFT), the stream is then read to its end.

Server-added latency = end to end minus the backend's own time; the backend answers at once, so
its time is taken as 0 (the runner → backend request itself is in the added figure; its
direct latency is measured in the same run and printed beside it). The floor: the p50 of one
sequential minimal authenticated request (``GET /api/v1/auth/me`` with a bearer token, cached
authentication, no database; bench/http_floor.py's closed loop at concurrency 1) times the hops
a prompt needs: submit, claim, complete (async) or submit, claim, first stream chunk (stream).

    .venv/bin/python bench/llm_routing.py [--rates 10,50,100,200] [--seconds 5] [--runners 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO_ROOT,
    CpuProbe,
    add_server_options,
    asyncpg_dsn,
    free_port,
    install_sigterm_handler,
    make_client,
    percentile,
    run_closed_loop,
    server_env_of,
    server_environment,
    sign_in,
    temporary_postgres_database,
)
from _common import ServerProcess as _Server
from dispatch import PASSWORD, make_keystore, wait_runners

from parity.agent.eventloop import run_loop

MODEL = "tiny-chat:latest"  # the fake's model (tests/contract/llm_fakes.py)
WAIT_S = 30
HOPS = {"async": 3, "stream": 3}  # submit, claim, complete | submit, claim, first stream chunk
SERVER_ENV = {"WEBHOOK_ALLOW_PRIVATE": "true"}
FAKE_SNIPPET = (
    "import sys, uvicorn; from tests.contract.llm_fakes import FakeLlm; "
    "uvicorn.run(FakeLlm('openai').app(), host='127.0.0.1', port=int(sys.argv[1]), "
    "log_level='warning', lifespan='off', access_log=False)"
)


def start_fake(port: int, home: Path) -> subprocess.Popen[bytes]:
    env = server_environment({"PYTHONPATH": f"{REPO_ROOT / 'src'}{os.pathsep}{REPO_ROOT}"})
    log = open(home / f"fake-{port}.log", "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [sys.executable, "-c", FAKE_SNIPPET, str(port)], env=env, stdout=log,
        stderr=subprocess.STDOUT, cwd=REPO_ROOT,
    )  # fmt: skip


def wait_fake(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v1/models", timeout=2, trust_env=False).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"fake backend {url} did not start")


def start_runner(
    base_url: str, keystore: Path, device: str, home: Path, backend: str, slots: int
) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-c", "from parity.agent.cli import main; main()",
        "--server", base_url, "--keystore", str(keystore), "--device-id", device,
        "--max-concurrent-tasks", str(slots), "--heartbeat-interval", "5", "--claim-wait", "10",
        "--no-push", "--llm-backend", f"openai={backend}/v1",
    ]  # fmt: skip
    env = server_environment(
        {
            "PARITY_HOME": str(home / device),
            "PARITY_KEYSTORE_PASSWORD": PASSWORD,
            "LOG_LEVEL": "warning",
        }
    )
    log = open(home / f"{device}.log", "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def api_key(base_url: str, token: str) -> str:
    r = httpx.post(
        f"{base_url}/api/v1/auth/keys", json={"name": "bench"}, trust_env=False, timeout=10,
        headers={"Authorization": f"Bearer {token}"},
    )  # fmt: skip
    r.raise_for_status()
    return str(r.json()["key"])


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of each PostgreSQL process on the machine (other databases' work too)."""
    out: dict[int, float] = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if (proc.info.get("name") or "").startswith("postgres") and proc.info["cpu_times"]:
            t = proc.info["cpu_times"]
            out[proc.pid] = t.user + t.system
    return out


def postgres_delta_s(before: dict[int, float], after: dict[int, float]) -> float:
    """Seconds used between the snapshots by processes alive at the second one (a backend
    born in between counts whole; one that exited in between is lost)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


async def drain(db_url: str, limit_s: float) -> tuple[int, float]:
    """Wait (up to ``limit_s``) until no ``llm`` task is open, so one cell's backlog does not
    run into the next; returns (open tasks left, seconds waited)."""
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    t0 = time.monotonic()
    try:
        while True:
            left = await conn.fetchval(
                "SELECT count(*) FROM tasks WHERE type = 'llm' AND status IN "
                "('pending', 'assigned', 'running', 'cancel_requested')"
            )
            if left == 0 or time.monotonic() - t0 > limit_s:
                return int(left), time.monotonic() - t0
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def phases(db_url: str, since: Any) -> dict[str, float | None]:
    """p50 ms of each server-timestamped leg of the ``llm`` tasks created since ``since``:
    submit → claim, claim → start (first token or the runner's start), start → end."""
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    try:
        rows = await conn.fetch(
            "SELECT t.created_at, a.claimed_at, a.started_at, a.ended_at FROM tasks t "
            "JOIN task_attempts a ON a.task_id = t.id WHERE t.type = 'llm' AND t.created_at >= $1",
            since,
        )
    finally:
        await conn.close()
    legs = {"submit_claim": (0, 1), "claim_start": (1, 2), "start_end": (2, 3)}
    out: dict[str, float | None] = {}
    for name, (i, j) in legs.items():
        v = [(r[j] - r[i]).total_seconds() for r in rows if r[i] and r[j]]
        out[name] = percentile(v, 50, 1000)
    return out


# -- load


async def one_async(c: httpx.AsyncClient, i: int, key: str) -> tuple[str | None, float | None]:
    body = {"model": MODEL, "prompt": f"bench prompt {i}", "max_tokens": 16}
    r = await c.post("/api/llm/prompts", params={"wait": WAIT_S}, json=body, headers=_auth(key))
    if r.status_code != 200 or r.json().get("status") != "completed":
        return f"HTTP {r.status_code} {r.json().get('status', '') if r.content else ''}", None
    return None, None


async def one_stream(c: httpx.AsyncClient, i: int, key: str) -> tuple[str | None, float | None]:
    body = {
        "model": MODEL, "max_tokens": 16, "stream": True,
        "messages": [{"role": "user", "content": f"bench prompt {i}"}],
    }  # fmt: skip
    first: float | None = None
    async with c.stream("POST", "/v1/chat/completions", json=body, headers=_auth(key)) as r:
        if r.status_code != 200:
            return f"HTTP {r.status_code}", None
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    first = time.perf_counter()
    return (None, first) if first is not None else ("no token", None)


async def open_loop(
    base_url: str, keys: list[str], kind: str, rate: float, seconds: float
) -> dict[str, Any]:
    """Sends at t0 + i/rate, prompt i as client i mod len(keys); returns latencies (s) from
    the scheduled times and errors."""
    n = max(1, round(rate * seconds))
    fn = one_async if kind == "async" else one_stream
    lat: list[float] = []
    errors: dict[str, int] = {}
    late: list[float] = []
    async with make_client(base_url, 2048, timeout_s=WAIT_S + 15) as c:
        t0 = time.perf_counter() + 0.2

        async def send(i: int) -> None:
            due = t0 + i / rate
            # uvloop's timers may fire up to 1 ms early (whole milliseconds): never send early.
            while (ahead := due - time.perf_counter()) > 0:
                await asyncio.sleep(ahead)
            late.append(time.perf_counter() - due)
            try:
                err, mark = await fn(c, i, keys[i % len(keys)])
            except httpx.HTTPError as exc:
                err, mark = type(exc).__name__, None
            if err is None:
                lat.append((mark or time.perf_counter()) - due)
            else:
                errors[err] = errors.get(err, 0) + 1

        await asyncio.gather(*(send(i) for i in range(n)))
    return {
        "sent": n, "latencies": lat, "errors": errors,
        "send_late_p50_ms": percentile(late, 50, 1000),
        "send_late_p99_ms": percentile(late, 99, 1000),
    }  # fmt: skip


async def hop_floor(base_url: str, token: str) -> tuple[float, float]:
    async with make_client(base_url, 1, token) as c:

        async def me(_w: int, _s: int) -> bool | str:
            r = await c.get("/api/v1/auth/me")
            return True if r.status_code == 200 else f"HTTP {r.status_code}"

        res = await run_closed_loop(me, concurrency=1, seconds=2.0, warmup_s=0.5)
    return res.percentile_ms(50) or 0.0, res.percentile_ms(99) or 0.0


async def backend_direct(url: str) -> float:
    """p50 ms of a sequential streamed chat request straight to the fake (to its end)."""
    body = {"model": MODEL, "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
    async with make_client(url, 1) as c:

        async def call(_w: int, _s: int) -> bool | str:
            async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                async for _ in r.aiter_bytes():
                    pass
            return True if r.status_code == 200 else f"HTTP {r.status_code}"

        res = await run_closed_loop(call, concurrency=1, seconds=1.5, warmup_s=0.3)
    return res.percentile_ms(50) or 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"cells": []}
    with (
        tempfile.TemporaryDirectory(prefix="parity-llm-bench-") as tmp,
        temporary_postgres_database(args.pg_admin_url) as db_url,
        _Server(database_url=db_url, env={**SERVER_ENV, **args.server_env}) as server,
    ):
        home = Path(tmp)
        procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        try:
            runner_key = "0x" + os.urandom(32).hex()
            make_keystore(home / "keystore.json", runner_key)
            owner = sign_in(server.base_url, runner_key)
            fakes = []
            for i in range(args.runners):
                port = free_port()
                procs.append((f"backend{i}", start_fake(port, home)))
                fakes.append(f"http://127.0.0.1:{port}")
            for url in fakes:
                wait_fake(url)
            for i, url in enumerate(fakes):
                p = start_runner(server.base_url, home / "keystore.json", f"llm-{i}", home, url,
                                 args.slots)  # fmt: skip
                procs.append((f"runner{i}", p))
            wait_runners(server.base_url, owner.token, args.runners)
            keys = [api_key(server.base_url, sign_in(server.base_url).token)
                    for _ in range(args.clients)]  # fmt: skip
            key = keys[0]
            # Warm-up: the first prompts pay for imports and connection set-up everywhere.
            run_loop(open_loop(server.base_url, keys, "async", 10, 1))
            run_loop(open_loop(server.base_url, keys, "stream", 10, 1))
            pids = {"server": server.pid, "loadgen": os.getpid(), **{n: p.pid for n, p in procs}}
            probe = CpuProbe(pids)
            for kind in args.kinds:
                for rate in args.rates:
                    f50, f99 = run_loop(hop_floor(server.base_url, key))
                    direct = run_loop(backend_direct(fakes[0]))
                    since = datetime.now(UTC)
                    before, pg0, t0 = probe.snapshot(), postgres_cpu(), time.monotonic()
                    res = run_loop(open_loop(server.base_url, keys, kind, rate, args.seconds))
                    wall = time.monotonic() - t0
                    cpu = CpuProbe.percent(before, probe.snapshot(), wall)
                    cpu["postgres"] = 100 * postgres_delta_s(pg0, postgres_cpu()) / wall
                    server.check_alive()
                    left, drained = asyncio.run(drain(db_url, 120))
                    res["open_after_s"], res["open_left"] = round(drained, 1), left
                    res["phases_p50_ms"] = asyncio.run(phases(db_url, since))
                    lat = res.pop("latencies")
                    cell = {
                        "kind": kind, "rate": rate, **res, "ok": len(lat),
                        "p50_ms": percentile(lat, 50, 1000), "p99_ms": percentile(lat, 99, 1000),
                        "max_ms": percentile(lat, 100, 1000),
                        "hop_p50_ms": f50, "hop_p99_ms": f99, "floor_ms": HOPS[kind] * f50,
                        "backend_direct_p50_ms": direct, "wall_s": wall,
                        "cpu_percent": {k: None if v is None else round(v, 1)
                                        for k, v in cpu.items()},
                    }  # fmt: skip
                    out["cells"].append(cell)
                    print_cell(cell)
        finally:
            for _, p in procs:
                p.terminate()
            for _, p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=20)
                if p.poll() is None:
                    p.kill()
    return out


def _f(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_cell(c: dict[str, Any]) -> None:
    errs = sum(c["errors"].values())
    ratio = c["p50_ms"] / c["floor_ms"] if c["p50_ms"] and c["floor_ms"] else None
    print(
        f"{c['kind']:6} {c['rate']:>5g}/s sent {c['sent']:>5} ok {c['ok']:>5} err {errs:>4}  "
        f"added p50 {_f(c['p50_ms']):>7} p99 {_f(c['p99_ms']):>7} max {_f(c['max_ms']):>7} ms  "
        f"floor {c['floor_ms']:.2f} ms (hop p50 {c['hop_p50_ms']:.2f}) p50/floor {_f(ratio, '.2f')}"
        f"  backend direct {c['backend_direct_p50_ms']:.2f} ms",
        flush=True,
    )
    print(
        f"       cpu % of one core: {c['cpu_percent']}" + (f" errors {c['errors']}" if errs else "")
    )
    print(
        f"       backlog drained {c['open_after_s']} s after the cell (left: {c['open_left']});"
        f" sends late p50 {_f(c['send_late_p50_ms'], '.2f')}"
        f" p99 {_f(c['send_late_p99_ms'], '.2f')} ms"
    )
    legs = "  ".join(f"{k.replace('_', ' -> ')} {_f(v)}" for k, v in c["phases_p50_ms"].items())
    print(f"       server-timestamped legs, p50 ms: {legs}")


def goals(cells: list[dict[str, Any]]) -> list[str]:
    def cell(kind: str, rate: float) -> dict[str, Any] | None:
        return next((c for c in cells if c["kind"] == kind and c["rate"] == rate), None)

    lines = []
    a50, s50 = cell("async", 50), cell("stream", 50)
    if a50 and a50["p50_ms"] is not None:
        ok = a50["p50_ms"] <= 2 * a50["floor_ms"] and not a50["errors"]
        lines.append(f"async 50/s added p50 {a50['p50_ms']:.1f} ms <= 2 x floor "
                     f"{2 * a50['floor_ms']:.1f} ms: {'met' if ok else 'NOT met'}")  # fmt: skip
        ok = a50["p99_ms"] <= 50 and not a50["errors"]
        lines.append(f"async 50/s added p99 {a50['p99_ms']:.1f} ms <= 50 ms: "
                     f"{'met' if ok else 'NOT met'}")  # fmt: skip
    if s50 and s50["p50_ms"] is not None:
        ok = s50["p50_ms"] <= 10 and not s50["errors"]
        lines.append(f"stream 50/s TTFT added p50 {s50['p50_ms']:.1f} ms <= 10 ms: "
                     f"{'met' if ok else 'NOT met'}")  # fmt: skip
    for kind in ("async", "stream"):
        good = [c["rate"] for c in cells if c["kind"] == kind and c["p99_ms"] is not None
                and c["p99_ms"] <= 100 and not c["errors"]]  # fmt: skip
        best = max(good) if good else None
        ok = best is not None and best >= 100
        lines.append(f"{kind}: highest rate with p99 <= 100 ms (no errors): "
                     f"{_f(best, 'g')}/s >= 100/s: {'met' if ok else 'NOT met'}")  # fmt: skip
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rates", default="10,50,100,200",
                   type=lambda s: [float(x) for x in s.split(",") if x])  # fmt: skip
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--runners", type=int, default=2)
    p.add_argument("--slots", type=int, default=64, help="max_concurrent_tasks per runner")
    p.add_argument(
        "--clients", type=int, default=1, help="client identities (distinct wallets' API keys)"
    )
    p.add_argument("--kinds", default="async,stream", type=lambda s: s.split(","))
    p.add_argument("--json", type=Path)
    add_server_options(p)
    args = server_env_of(p.parse_args(argv))
    if any(r <= 0 or r > 1000 for r in args.rates) or not 1 <= args.runners <= 16:
        p.error("rates in (0, 1000], runners in 1..16")
    if not 1 <= args.clients <= 256:
        p.error("clients in 1..256")
    if not set(args.kinds) <= {"async", "stream"}:
        p.error("--kinds from async,stream")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_sigterm_handler()
    print(
        f"llm_routing: {args.runners} runners x {args.slots} slots, {args.clients} client(s), "
        f"instant fake backend, {args.seconds:g} s per rate, PostgreSQL; latencies from the "
        "scheduled send time"
    )
    out = run(args)
    print()
    for line in goals(out["cells"]):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

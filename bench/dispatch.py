"""Dispatch latency: task creation → runner start and → completion, pull vs push.

One server (PostgreSQL by default, or the embedded SQLite), three real `parity-runner`
processes, N trivial `true` tasks created as fast as one client can. Figures come from the
server's own timestamps (created_at, started_at, completed_at), so client and server clocks
never mix. Printed: p50/p99 of both latencies, tasks completed per second, and CPU per process
(load generator, server, runners share the machine's cores). The floor printed beside it is the
HTTP floor (GET / requests/s at concurrency 1) of the same server in the same run.

    .venv/bin/python bench/dispatch.py [--tasks 200] [--db postgres|sqlite] [--modes pull,push]
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
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CpuProbe,
    ServerProcess,
    install_sigterm_handler,
    make_client,
    percentile,
    run_closed_loop,
    server_environment,
    sign_in,
    temporary_postgres_database,
)

PASSWORD = "bench-password"
RUNNERS = 3


def make_keystore(path: Path, key: str) -> None:
    import parity.chain.keystore as ks

    ks.SCRYPT_N = 2**10  # fast to open; this keystore guards nothing
    ks.create_keystore(path, PASSWORD, key, overwrite=True)


def start_runner(
    base_url: str, keystore: Path, device: str, home: Path, mode: str
) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-c", "from parity.agent.cli import main; main()",
        "--server", base_url, "--keystore", str(keystore), "--device-id", device,
        "--max-concurrent-tasks", "4", "--heartbeat-interval", "5", "--claim-wait", "10",
        "--no-push" if mode == "pull" else "--no-pull",
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


def wait_runners(base_url: str, token: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, timeout=10, trust_env=False) as c:
        while time.monotonic() < deadline:
            items = c.get("/api/v1/runners", headers={"Authorization": f"Bearer {token}"}).json()
            if len([r for r in items.get("items", []) if r["status"] in ("online", "busy")]) >= n:
                return
            time.sleep(0.2)
    raise RuntimeError("runners did not register in time")


async def create_tasks(base_url: str, token: str, n: int) -> list[str]:
    async with make_client(base_url, 8, token) as c:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> str:
            async with sem:
                r = await c.post(
                    "/api/v1/tasks",
                    json={"title": f"t{i}", "type": "command", "config": {"command": ["true"]}},
                )
                r.raise_for_status()
                return str(r.json()["id"])

        return await asyncio.gather(*(one(i) for i in range(n)))


def fetch_tasks(base_url: str, token: str, n: int) -> list[dict[str, Any]]:
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as c:
        r = c.get(
            "/api/v1/tasks",
            params={"limit": max(n, 1)},
            headers={"Authorization": f"Bearer {token}"},
        )
        return list(r.json())


async def measure_floor(base_url: str) -> Any:
    async with make_client(base_url, 1) as c:

        async def get_root(_worker: int, _seq: int) -> bool:
            return (await c.get("/")).status_code == 200

        return await run_closed_loop(get_root, concurrency=1, seconds=2.0, warmup_s=0.5)


def ts(v: str | None) -> float | None:
    return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() if v else None


def run_mode(mode: str, db_url: str, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parity-dispatch-") as tmp:
        home = Path(tmp)
        env = {"SCHEDULER_INTERVAL_SECONDS": "1", "WEBHOOK_ALLOW_PRIVATE": "true"}
        with ServerProcess(database_url=db_url, env=env) as server:
            floor = asyncio.run(measure_floor(server.base_url))
            runner_key = "0x" + os.urandom(32).hex()
            make_keystore(home / "keystore.json", runner_key)
            owner = sign_in(server.base_url, runner_key)
            procs = [
                start_runner(server.base_url, home / "keystore.json", f"{mode}-{i}", home, mode)
                for i in range(RUNNERS)
            ]
            try:
                wait_runners(server.base_url, owner.token, RUNNERS)
                client = sign_in(server.base_url)
                probe = CpuProbe(
                    {
                        "server": server.pid,
                        "loadgen": os.getpid(),
                        **{f"runner{i}": p.pid for i, p in enumerate(procs)},
                    }
                )
                before = probe.snapshot()
                t0 = time.monotonic()
                asyncio.run(create_tasks(server.base_url, client.token, n))
                deadline = time.monotonic() + 300
                tasks: list[dict[str, Any]] = []
                while time.monotonic() < deadline:
                    tasks = fetch_tasks(server.base_url, client.token, n)
                    if sum(t["status"] in ("completed", "failed") for t in tasks) >= n:
                        break
                    time.sleep(0.25)
                wall = time.monotonic() - t0
                cpu = CpuProbe.percent(before, probe.snapshot(), wall)
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(timeout=20)
                    if p.poll() is None:
                        p.kill()
    done = [t for t in tasks if t["status"] == "completed"]
    start_lat = [ts(t["started_at"]) - ts(t["created_at"]) for t in done if t["started_at"]]  # type: ignore[operator]
    done_lat = [ts(t["completed_at"]) - ts(t["created_at"]) for t in done if t["completed_at"]]  # type: ignore[operator]
    first = min(ts(t["created_at"]) for t in tasks) if tasks else 0.0  # type: ignore[type-var]
    last = max((ts(t["completed_at"]) or 0.0) for t in done) if done else 0.0
    return {
        "mode": mode,
        "tasks": n,
        "completed": len(done),
        "failed": sum(t["status"] == "failed" for t in tasks),
        "start_p50_ms": percentile(start_lat, 50, 1000),
        "start_p99_ms": percentile(start_lat, 99, 1000),
        "complete_p50_ms": percentile(done_lat, 50, 1000),
        "complete_p99_ms": percentile(done_lat, 99, 1000),
        "tasks_per_s": round(len(done) / (last - first), 2) if done and last > first else None,
        "cpu_percent": {k: round(v, 1) if v is not None else None for k, v in cpu.items()},
        "floor_rps": round(floor.rps, 1),
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    ap.add_argument("--modes", default="pull,push")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    install_sigterm_handler()
    results = []
    for mode in args.modes.split(","):
        if args.db == "postgres":
            with temporary_postgres_database() as url:
                results.append(run_mode(mode, url, args.tasks))
        else:
            results.append(run_mode(mode, "", args.tasks))
    print(f"\ndispatch: {args.tasks} trivial tasks over {RUNNERS} runner processes, db={args.db}")
    cols = ["start p50", "start p99", "done p50", "done p99"]
    hdr = f"{'mode':6} {'done':>5} " + " ".join(f"{c:>10}" for c in cols)
    hdr += f" {'tasks/s':>8} {'floor rps':>10}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        keys = ["start_p50_ms", "start_p99_ms", "complete_p50_ms", "complete_p99_ms"]
        vals = " ".join(f"{_fmt(r[k]):>10}" for k in keys)
        print(
            f"{r['mode']:6} {r['completed']:>5} {vals} {r['tasks_per_s']!s:>8} {r['floor_rps']:>10}"
        )
        print(f"       cpu % of one core: {r['cpu_percent']}")
    for r in results:
        if r["tasks_per_s"] and r["floor_rps"]:
            ratio = r["tasks_per_s"] / r["floor_rps"]
            print(f"ratio {r['mode']}: tasks/s / HTTP floor rps = {ratio:.3f}")
    print("latencies in ms from server timestamps; all processes share the machine's cores")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

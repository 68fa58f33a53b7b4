"""Queue throughput: claim → start → complete cycles through the HTTP API, beside the same
statements in raw SQL and the HTTP floor, all measured in one run on one PostgreSQL database.

One server process on a throwaway PostgreSQL database. Before each cell the queue is topped up
to ``--tasks`` pending tasks by cloning one task that was created through the API (one
``INSERT … SELECT … generate_series`` statement, so every row is a valid Task row and pre-fill
takes well under a second; creation is not what is measured). Cells, each a closed loop:

- ``GET /`` (the HTTP floor) at each concurrency;
- raw SQL: the server's own claim, start and complete statements (``parity.tasks.queue``)
  over asyncpg, one connection per worker (``--raw-concurrency``, default 8), each worker
  claiming as one of the registered runners: a claim transaction, then one statement each for
  start and complete;
- HTTP, each worker its own registered runner, at each concurrency:
  ``claim+start+complete`` (3 requests), ``claim?start=true+complete`` (2 requests),
  ``claim?max_tasks=10`` then ``complete`` each (1.1 requests per task), and
  ``claim?max_tasks=10`` alone (claims/s; a reaper puts claimed tasks back in SQL).

It prints per cell cycles/s (tasks claimed and completed per second), p50/p99 latency of one
loop iteration (one cycle, or one batch of 10 in batch mode), HTTP requests per cycle (counted),
errors and CPU use; then the ratios: cycle rate ÷ (floor rps ÷ requests per cycle), and the
batched rate ÷ the raw-SQL single-task rate.

    .venv/bin/python bench/claims.py [--tasks 10000] [--seconds 5] [--warmup 1]
                                     [--concurrency 8,32] [--raw-concurrency 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import secrets
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

# Run as a script: Python puts bench/ first on sys.path, so the shared helpers import directly.
from _common import (
    MAX_REQUESTS_PER_CELL,
    REQUEST_TIMEOUT_S,
    BenchError,
    CpuProbe,
    LoadResult,
    RequestCounter,
    ServerProcess,
    add_server_options,
    asyncpg_dsn,
    bounded,
    concurrency_list,
    fmt,
    install_sigterm_handler,
    make_client,
    register_runner,
    run_closed_loop,
    server_env_of,
    sign_in,
    temporary_postgres_database,
)

MAX_CONCURRENCY = 128
MAX_SECONDS = 300.0
MAX_TASKS = 500_000
BATCH = 10
PREFILL_TIMEOUT_S = 60.0
SQL_TIMEOUT_S = 30.0
RUNNER_SLOTS = 32  # max_concurrent_tasks of each bench runner: a batch of 10 always fits
# Runners of the claim-only cells: the most a runner may hold; the reaper frees slots meanwhile.
CLAIM_ONLY_SLOTS = 256
REAP_EVERY_S = 0.02
# Runners do not heartbeat during the run; keep them online for any run length.
SERVER_ENV = {"RUNNER_OFFLINE_TIMEOUT_SECONDS": "86400"}

FLOOR = "HTTP floor GET /"
RAW = "raw SQL claim/start/complete"


@dataclass(frozen=True)
class Mode:
    name: str
    start: bool  # claim?start=true
    batch: int  # claim?max_tasks=
    complete: bool = True  # False: claims only (the cell's rate is claims/s)


SINGLE = Mode("HTTP claim+start+complete", start=False, batch=1)
STARTED = Mode("HTTP claim(start=true)+complete", start=True, batch=1)
BATCHED = Mode(f"HTTP claim(max_tasks={BATCH})+complete", start=False, batch=BATCH)
CLAIM_ONLY = Mode(f"HTTP claim(max_tasks={BATCH}) only", start=False, batch=BATCH, complete=False)
MODES = (SINGLE, STARTED, BATCHED, CLAIM_ONLY)
MODE_KEYS = {"single": SINGLE, "started": STARTED, "batched": BATCHED, "claim-only": CLAIM_ONLY}


def _mode_list(text: str) -> list[Mode]:
    """``--modes single,batched``: the named HTTP cells, in the order of MODES."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODE_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown mode(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(MODE_KEYS)}"
        )
    return [m for m in MODES if m in {MODE_KEYS[k] for k in keys}]


@dataclass
class Cell:
    name: str
    result: LoadResult
    rate: float  # cycles completed per second in the measured window (floor: requests/s)
    per_iteration: int  # tasks per loop iteration (requests, for the floor)
    cycles: int  # tasks claimed and completed, warm-up included (0 for the floor)
    requests: int  # HTTP requests sent, warm-up included (0 for raw SQL)
    queue_depth: int  # pending tasks when the cell started

    @property
    def requests_per_cycle(self) -> float | None:
        if self.name == FLOOR:
            return 1.0
        return self.requests / self.cycles if self.cycles and self.requests else None

    def row(self) -> dict[str, Any]:
        return {
            "cell": self.name,
            "rate_per_s": round(self.rate, 1),
            "per_iteration": self.per_iteration,
            "cycles": self.cycles,
            "requests": self.requests,
            "requests_per_cycle": self.requests_per_cycle,
            "queue_depth": self.queue_depth,
            **self.result.summary(),
        }


class Completions:
    """When each cycle completed, to count throughput by completion inside the measured window
    (a batch iteration can outlast a short window, so started-and-finished counts undercount)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.began = time.perf_counter()

    def done(self, at: float) -> None:
        self.times.append(at)

    @property
    def count(self) -> int:
        return len(self.times)

    def rate(self, warmup_s: float, result: LoadResult) -> float:
        """Completions per second between the end of the warm-up and the end of the cell."""
        start = self.began + warmup_s
        end = start + result.wall_s
        n = sum(1 for t in self.times if start <= t <= end)
        return n / result.wall_s if result.wall_s > 0 else 0.0


# -- pre-fill


# Columns a cloned task gets fresh values for; every other column is copied from the template.
_CLONE_OVERRIDES = {
    "id": "gen_random_uuid()",
    "title": "'bench-' || $2::text || '-' || g",
    "status": "'pending'",
    "nonce": "md5(random()::text) || md5(random()::text)",
    "attempts": "0",
    "available_at": "$3::timestamptz + g * interval '1 microsecond'",
    "created_at": "$3::timestamptz + g * interval '1 microsecond'",
    "updated_at": "$3::timestamptz + g * interval '1 microsecond'",
    "target_runner_id": "NULL",
    "offer_expires_at": "NULL",
    "runner_id": "NULL",
    "claim_token_hash": "NULL",
    "lease_expires_at": "NULL",
    "started_at": "NULL",
    "completed_at": "NULL",
    "cancel_requested_at": "NULL",
    "last_error": "NULL",
    "log_bytes": "0",
}


class Queue:
    """Tops the pending queue up by cloning a template task made through the API."""

    def __init__(self, conn: Any, template_id: uuid.UUID) -> None:
        self.conn = conn
        self.template_id = template_id
        self.sql = ""
        self.filled = 0
        self.fill_seconds = 0.0

    async def prepare(self) -> None:
        cols = [
            r["column_name"]
            for r in await self.conn.fetch(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = 'tasks'"
                " ORDER BY ordinal_position",
                timeout=SQL_TIMEOUT_S,
            )
        ]
        if "id" not in cols or "status" not in cols:
            raise BenchError(f"unexpected tasks table: {cols}")
        exprs = [_CLONE_OVERRIDES.get(c, f't."{c}"') for c in cols]
        self.sql = (
            f"INSERT INTO tasks ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in cols)})"
            f" SELECT {', '.join(exprs)}"
            " FROM tasks t CROSS JOIN generate_series(1, $1::int) AS g WHERE t.id = $4"
        )

    async def pending(self) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM tasks WHERE status = 'pending'", timeout=SQL_TIMEOUT_S
            )
        )

    async def top_up(self, target: int, tag: str) -> int:
        """Insert tasks until ``target`` are pending; returns the pending count."""
        have = await self.pending()
        need = target - have
        if need > 0:
            began = time.perf_counter()
            # Slightly in the past, distinct and increasing, as tasks made one by one would be.
            base = datetime.now(UTC) - timedelta(minutes=10)
            await self.conn.execute(
                self.sql, need, tag, base, self.template_id, timeout=PREFILL_TIMEOUT_S
            )
            await self.conn.execute("ANALYZE tasks", timeout=PREFILL_TIMEOUT_S)
            self.fill_seconds += time.perf_counter() - began
            self.filled += need
        return max(have, target)


# -- raw SQL: the statements the server runs for claim, start and complete

_LEASE = timedelta(seconds=90)


def _raw_cycle_fn(conns: list[Any], runner_ids: list[uuid.UUID], counts: Completions) -> Any:
    """One cycle with the server's own PostgreSQL statements (``parity.tasks.queue``, run on
    the driver as the server runs them): lock the runner, candidates, claim in one
    transaction; then start; then complete (each one statement). What the HTTP cells add on
    top is the API: HTTP, auth, validation, JSON."""
    from parity.tasks.queue import ops
    from parity.tasks.queue.executors import DriverExecutor

    async def cycle(worker: int, seq: int) -> bool | str:
        conn, runner_id = conns[worker], runner_ids[worker % len(runner_ids)]
        x = DriverExecutor(conn)
        now = datetime.now(UTC)
        token_hash = hashlib.sha256(
            ("ps_claim_" + secrets.token_bytes(32).hex()).encode()
        ).hexdigest()
        async with conn.transaction():
            runner = await ops.lock_runner(x, runner_id)
            if runner is None:
                return "runner missing"
            cands = await x.rows(x.statements.candidates, runner.candidate_params(now, 1))
            if not cands:
                return "queue empty"
            rows = await x.rows(
                x.statements.claim,
                {
                    "b_ids": [cands[0].id],
                    "b_runner_id": runner_id,
                    "b_token_hash": token_hash,
                    "b_lease_until": now + _LEASE,
                    "b_now": now,
                },
            )
            if not rows:
                return "claim lost"
        tid = rows[0].id
        if await ops.start_held(x, tid, runner_id, token_hash, datetime.now(UTC)) is None:
            return "start lost"
        output = "ok"
        result = ops.ResultFields(
            output=output,
            output_cid=None,
            exit_code=0,
            error=None,
            result_hash=hashlib.sha256(output.encode()).hexdigest(),
            usage={},
        )
        done = await ops.complete_held(x, tid, runner_id, token_hash, datetime.now(UTC), result, [])
        if done is None:
            return "complete lost"
        counts.done(time.perf_counter())
        return True

    return cycle


class Reaper:
    """Claim-only cells: puts claimed tasks back in the queue out of band (one UPDATE every
    ``REAP_EVERY_S`` on its own connection, ``available_at`` kept), so the runners' slots
    never fill up and the queue depth stays at ``--tasks``. Not measured; its cost is a few ms
    of PostgreSQL per second."""

    SQL = (
        "UPDATE tasks SET status = 'pending', runner_id = NULL, lease_expires_at = NULL,"
        " claim_token_hash = NULL WHERE status = 'assigned'"
    )

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, dsn: str) -> Reaper:
        import asyncpg

        reaper = cls(await asyncpg.connect(dsn, timeout=10))
        reaper.task = asyncio.create_task(reaper._run())
        return reaper

    async def _run(self) -> None:
        while True:
            await self.conn.execute(self.SQL, timeout=SQL_TIMEOUT_S)
            await asyncio.sleep(REAP_EVERY_S)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await asyncio.wait_for(self.conn.close(), timeout=10)


# -- HTTP cycles


def _http_cycle_fn(
    client: httpx.AsyncClient, tokens: list[str], mode: Mode, counts: Completions
) -> Any:
    params: dict[str, Any] = {"wait": 0, "start": "true" if mode.start else "false"}
    if mode.batch > 1:
        params["max_tasks"] = mode.batch

    async def cycle(worker: int, seq: int) -> bool | str:
        headers = {"Authorization": f"Bearer {tokens[worker]}"}
        r = await client.post("/api/v1/runners/tasks/claim", params=params, headers=headers)
        if r.status_code == 204:
            return "claim 204 (queue empty)"
        if r.status_code != 200:
            return f"claim HTTP {r.status_code}"
        body = r.json()
        claims = body["claims"] if mode.batch > 1 else [body]
        if not mode.complete:
            at = time.perf_counter()
            for _ in claims:
                counts.done(at)
            return True if len(claims) == mode.batch else f"short batch ({len(claims)})"
        for c in claims:
            tid = c["task"]["id"]
            fence = {"claim_token": c["claim_token"]}
            if not mode.start and mode.batch == 1:
                r = await client.post(
                    f"/api/v1/runners/tasks/{tid}/start", json=fence, headers=headers
                )
                if r.status_code != 200:
                    return f"start HTTP {r.status_code}"
            r = await client.post(
                f"/api/v1/runners/tasks/{tid}/complete",
                json={**fence, "output": "ok", "exit_code": 0},
                headers=headers,
            )
            if r.status_code != 200:
                return f"complete HTTP {r.status_code}"
            counts.done(time.perf_counter())
        if len(claims) != mode.batch:
            return f"short batch ({len(claims)})"
        return True

    return cycle


# -- the run


async def _create_template(base_url: str, token: str) -> uuid.UUID:
    async with make_client(base_url, 1, token=token) as client:
        r = await client.post(
            "/api/v1/tasks",
            json={
                "title": "bench-template",
                "description": "cloned to fill the queue",
                "type": "command",
                "config": {"command": ["true"]},
            },
        )
    if r.status_code != 201:
        raise BenchError(f"task creation refused: {r.status_code} {r.text[:300]}")
    return uuid.UUID(r.json()["id"])


def _progress(cell: Cell) -> None:
    r = cell.result
    print(
        f"  {cell.name:<36} c={r.concurrency:<3} {cell.rate:9.1f}/s  errors={r.errors}"
        + (f" {dict(r.error_kinds)}" if r.error_kinds else "")
        + ("  (capped by --tasks)" if r.capped else ""),
        file=sys.stderr,
        flush=True,
    )


async def _run_cells(
    server: ServerProcess,
    db_url: str,
    wallet_token: str,
    runner_tokens: list[str],
    claim_only_tokens: list[str],
    args: Any,
) -> tuple[list[Cell], dict[str, float]]:
    import asyncpg

    from parity.db.session import Database

    dsn = asyncpg_dsn(db_url)
    cpu = CpuProbe({"server": server.pid, "loadgen": os.getpid()})
    cells: list[Cell] = []
    template = await _create_template(server.base_url, wallet_token)
    admin = await asyncpg.connect(dsn, timeout=10)
    try:
        queue = Queue(admin, template)
        await queue.prepare()

        # (b) the HTTP floor, same concurrency levels
        for conc in args.concurrency:
            server.check_alive()
            async with make_client(server.base_url, conc) as client:

                async def get_root(worker: int, seq: int, client: Any = client) -> bool | str:
                    r = await client.get("/")
                    return True if r.status_code == 200 else f"HTTP {r.status_code}"

                result = await run_closed_loop(
                    get_root, concurrency=conc, seconds=args.seconds, warmup_s=args.warmup, cpu=cpu
                )
            cells.append(Cell(FLOOR, result, result.rps, 1, 0, result.ok, 0))
            _progress(cells[-1])

        # (a) raw SQL, one connection per worker
        depth = await queue.top_up(args.tasks, "raw")
        # The server's own driver connections (parity.db.session.Database.driver_connection):
        # asyncpg with the codecs SQLAlchemy installs, which the statements' bind and result
        # processors expect (a bare asyncpg connection hands JSON columns back as text).
        database = Database(db_url, pool_size=args.raw_concurrency)
        held = contextlib.AsyncExitStack()
        conns = [
            await held.enter_async_context(database.driver_connection())
            for _ in range(args.raw_concurrency)
        ]
        try:
            # The bench runners registered through the API (their rows are locked per claim).
            runner_ids = [
                r["id"]
                for r in await admin.fetch(
                    "SELECT id FROM runners WHERE device_id NOT LIKE '%-only-%' ORDER BY device_id",
                    timeout=SQL_TIMEOUT_S,
                )
            ]
            if not runner_ids:
                raise BenchError("no registered bench runner for the raw-SQL cell")
            fn = _raw_cycle_fn(conns, runner_ids, counts := Completions())
            result = await run_closed_loop(
                fn,
                concurrency=len(conns),
                seconds=args.seconds,
                warmup_s=args.warmup,
                cpu=cpu,
                max_requests=args.tasks,
            )
        finally:
            await held.aclose()
            await database.dispose()
        rate = counts.rate(args.warmup, result)
        cells.append(Cell(RAW, result, rate, 1, counts.count, 0, depth))
        _progress(cells[-1])

        # the HTTP API, each worker its own runner
        for mode in args.modes:
            tokens = runner_tokens if mode.complete else claim_only_tokens
            for conc in args.concurrency:
                server.check_alive()
                depth = await queue.top_up(args.tasks, f"{mode.name[5:10]}-c{conc}")
                counter = RequestCounter()
                reaper = None if mode.complete else await Reaper.start(dsn)
                try:
                    async with make_client(server.base_url, conc) as client:
                        client.event_hooks = {"response": [counter.hook]}
                        counts = Completions()
                        fn = _http_cycle_fn(client, tokens, mode, counts)
                        result = await run_closed_loop(
                            fn,
                            concurrency=conc,
                            seconds=args.seconds,
                            warmup_s=args.warmup,
                            cpu=cpu,
                            # Claim-only cells get their tasks back from the reaper.
                            max_requests=max(1, args.tasks // mode.batch)
                            if mode.complete
                            else MAX_REQUESTS_PER_CELL,
                        )
                finally:
                    if reaper is not None:
                        await reaper.stop()
                rate = counts.rate(args.warmup, result)
                cells.append(
                    Cell(mode.name, result, rate, mode.batch, counts.count, counter.total, depth)
                )
                _progress(cells[-1])
        server.check_alive()
        fill = {"tasks_inserted": queue.filled, "seconds": queue.fill_seconds}
    finally:
        await asyncio.wait_for(admin.close(), timeout=10)
    return cells, fill


def run(args: argparse.Namespace) -> tuple[list[Cell], dict[str, float], list[str]]:
    with (
        temporary_postgres_database(args.pg_admin_url) as url,
        ServerProcess(database_url=url, env={**SERVER_ENV, **args.server_env}) as server,
    ):
        ident = sign_in(server.base_url)
        tag = secrets.token_hex(3)
        tokens = [
            register_runner(
                server.base_url,
                ident.token,
                f"bench-claims-{tag}-{i}",
                max_concurrent_tasks=RUNNER_SLOTS,
            )
            for i in range(max(args.concurrency))
        ]
        claim_only = [
            register_runner(
                server.base_url,
                ident.token,
                f"bench-claims-{tag}-only-{i}",
                max_concurrent_tasks=CLAIM_ONLY_SLOTS,
            )
            for i in range(max(args.concurrency))
        ]
        print(
            f"server pid {server.pid} on {server.base_url};"
            f" {len(tokens) + len(claim_only)} runners registered",
            file=sys.stderr,
            flush=True,
        )
        cells, fill = asyncio.run(_run_cells(server, url, ident.token, tokens, claim_only, args))
        errors = server.log_error_lines()
    return cells, fill, errors


# -- report


def format_table(cells: list[Cell]) -> str:
    head = (
        f"{'cell':<36} {'conc':>4} {'cycles/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/cycle':>9}"
        f" {'errors':>6} {'server cpu%':>11} {'loadgen cpu%':>12} {'machine%':>8} {'queue':>6}"
    )
    lines = [head, "-" * len(head)]
    for c in cells:
        r = c.result
        lines.append(
            f"{c.name:<36} {r.concurrency:>4} {c.rate:>9.1f}"
            f" {fmt(r.percentile_ms(50), '.2f'):>8} {fmt(r.percentile_ms(99), '.2f'):>8}"
            f" {fmt(c.requests_per_cycle, '.2f'):>9} {r.errors:>6}"
            f" {fmt(r.cpu_percent.get('server'), '.0f'):>11}"
            f" {fmt(r.cpu_percent.get('loadgen'), '.0f'):>12} {r.machine_cpu_percent:>8.0f}"
            f" {c.queue_depth if c.name != FLOOR else '-':>6}" + (" capped" if r.capped else "")
        )
    return "\n".join(lines)


def ratios(cells: list[Cell]) -> dict[str, Any]:
    floor = {c.result.concurrency: c.result.rps for c in cells if c.name == FLOOR}
    raw = next((c.rate for c in cells if c.name == RAW), None)
    out: dict[str, Any] = {"of_floor": {}, "batched_over_raw": {}, "claims_over_raw": {}}
    for c in cells:
        if c.name in (FLOOR, RAW):
            continue
        conc = c.result.concurrency
        rpc = c.requests_per_cycle
        f = floor.get(conc)
        if f and rpc:
            out["of_floor"].setdefault(c.name, {})[conc] = c.rate / (f / rpc)
        if c.name == BATCHED.name and raw:
            out["batched_over_raw"][conc] = c.rate / raw
        if c.name == CLAIM_ONLY.name and raw:
            out["claims_over_raw"][conc] = c.rate / raw
    return out


def format_ratios(rs: dict[str, Any], cells: list[Cell]) -> str:
    lines = [
        "cycle rate ÷ (HTTP floor rps ÷ requests per cycle), same concurrency"
        " (claim-only cell: claims/s ÷ (floor rps ÷ requests per claim)):"
    ]
    for name, by_conc in rs["of_floor"].items():
        parts = "  ".join(f"c={c}: {v:.3f}" for c, v in by_conc.items())
        lines.append(f"  {name:<36} {parts}")
    raw = next((c for c in cells if c.name == RAW), None)
    if raw is not None:
        parts = "  ".join(f"c={c}: {v:.3f}" for c, v in rs["batched_over_raw"].items())
        lines.append(
            f"batched HTTP cycle rate ÷ raw-SQL single-task cycle rate (raw: {raw.rate:.1f}/s at"
            f" {raw.result.concurrency} connections):  {parts}"
        )
        parts = "  ".join(f"c={c}: {v:.3f}" for c, v in rs["claims_over_raw"].items())
        lines.append(f"batched HTTP claims/s (claim only) ÷ raw-SQL single-task rate:  {parts}")
    return "\n".join(lines)


# -- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tasks",
        type=bounded(int, 100, MAX_TASKS),
        default=10_000,
        help="pending tasks at the start of each cell; also caps the tasks a cell may use",
    )
    p.add_argument("--seconds", type=bounded(float, 0.5, MAX_SECONDS), default=5.0, help="per cell")
    p.add_argument("--warmup", type=bounded(float, 0, 60), default=1.0, help="per cell")
    p.add_argument(
        "--concurrency", type=concurrency_list(MAX_CONCURRENCY), default=[8, 32], help="e.g. 8,32"
    )
    p.add_argument("--raw-concurrency", type=bounded(int, 1, 64), default=8)
    p.add_argument(
        "--modes",
        type=_mode_list,
        default=list(MODES),
        help=f"HTTP cells to run, comma-separated from {','.join(MODE_KEYS)} (default: all)",
    )
    p.add_argument("--json", type=Path, help="also write the results to this file")
    add_server_options(p)
    return server_env_of(p.parse_args(argv))


def _jsonable(value: Any) -> Any:
    """Command-line values as JSON: paths as text, modes by name."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list) and value and isinstance(value[0], Mode):
        return [m.name for m in value]
    return value


def main(argv: list[str] | None = None) -> int:
    install_sigterm_handler()
    args = parse_args(argv)
    started = time.monotonic()
    try:
        cells, fill, log_errors = run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; server stopped and temporary database dropped", file=sys.stderr)
        return 130
    rs = ratios(cells)
    ncpu = psutil.cpu_count()
    print()
    print(format_table(cells))
    print()
    print(format_ratios(rs, cells))
    print(
        f"\ncycles/s = tasks claimed and completed per second (the claim-only cell: tasks"
        " claimed per second, claimed tasks put back in the queue out of band); p50/p99 are per"
        " loop iteration"
        f" (one cycle, or one batch of {BATCH} in batch mode; for the floor one request);"
        " req/cycle is counted, warm-up included. server/loadgen cpu% is of one core,"
        f" machine% of all {ncpu} cores (it includes PostgreSQL). queue = pending tasks at the"
        f" start of the cell; {fill['tasks_inserted']} tasks pre-filled in"
        f" {fill['seconds']:.1f} s. {args.seconds:g} s measured + {args.warmup:g} s warm-up per"
        f" cell; total {time.monotonic() - started:.0f} s."
    )
    if any(c.result.capped for c in cells):
        print("note: a 'capped' cell used its --tasks budget early; raise --tasks for it.")
    if log_errors:
        print(f"warning: server logged {len(log_errors)} error line(s), first: {log_errors[0]}")
    if args.json:
        doc = {
            "benchmark": "claims",
            "environment": {
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpu_count": ncpu,
                "args": {k: _jsonable(v) for k, v in vars(args).items()},
                "request_timeout_s": REQUEST_TIMEOUT_S,
            },
            "results": [c.row() for c in cells],
            "ratios": {
                "of_floor": {
                    k: {str(c): v for c, v in by.items()} for k, by in rs["of_floor"].items()
                },
                "batched_over_raw": {str(c): v for c, v in rs["batched_over_raw"].items()},
                "claims_over_raw": {str(c): v for c, v in rs["claims_over_raw"].items()},
            },
            "prefill": fill,
            "server_log_errors": log_errors[:20],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

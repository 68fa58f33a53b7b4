"""HTTP floor: a no-database endpoint against an authenticated one-row write, per database.

For each database (embedded SQLite, PostgreSQL) one server process is started on a free loopback
port; after sign-in, a closed-loop load generator (httpx, pool = concurrency) runs each
concurrency level against

- ``GET /``                     service info, touches no database: the HTTP floor;
- ``POST /api/v1/auth/keys``    bearer-token lookup plus one inserted row.

It prints requests/s, p50/p99 latency, errors and the CPU use of the server process and of this
load generator (both share the machine's cores), and per database the ratio of write rps to
floor rps at each concurrency: the figure to compare between runs and machines.

    .venv/bin/python bench/http_floor.py [--seconds 5] [--db sqlite|postgres|both]
                                         [--concurrency 1,8,32] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

# Run as a script: Python puts bench/ first on sys.path, so the shared helpers import directly.
from _common import (
    BenchError,
    CpuProbe,
    Identity,
    LoadResult,
    ServerProcess,
    add_server_options,
    bounded,
    concurrency_list,
    fmt,
    install_sigterm_handler,
    make_client,
    run_closed_loop,
    server_env_of,
    sign_in,
    temporary_postgres_database,
)

FLOOR = "GET /"
WRITE = "POST /api/v1/auth/keys"
ENDPOINTS = (FLOOR, WRITE)
MAX_CONCURRENCY = 256
MAX_SECONDS = 600.0


@dataclass
class Cell:
    db: str
    endpoint: str
    result: LoadResult

    def row(self) -> dict[str, Any]:
        return {"db": self.db, "endpoint": self.endpoint, **self.result.summary()}


def _request_fn(client: httpx.AsyncClient, endpoint: str, run_tag: str) -> Any:
    if endpoint == FLOOR:

        async def get_root(worker: int, seq: int) -> bool | str:
            r = await client.get("/")
            return True if r.status_code == 200 else f"HTTP {r.status_code}"

        return get_root

    async def create_key(worker: int, seq: int) -> bool | str:
        r = await client.post("/api/v1/auth/keys", json={"name": f"{run_tag}-w{worker}-{seq}"})
        return True if r.status_code == 201 else f"HTTP {r.status_code}"

    return create_key


async def _run_cells(
    db: str, server: ServerProcess, ident: Identity, args: argparse.Namespace
) -> list[Cell]:
    cpu = CpuProbe({"server": server.pid, "loadgen": os.getpid()})
    cells: list[Cell] = []
    for conc in args.concurrency:
        for endpoint in ENDPOINTS:
            server.check_alive()
            async with make_client(server.base_url, conc, token=ident.token) as client:
                fn = _request_fn(client, endpoint, f"bench-c{conc}")
                result = await run_closed_loop(
                    fn, concurrency=conc, seconds=args.seconds, warmup_s=args.warmup, cpu=cpu
                )
            cell = Cell(db, endpoint, result)
            cells.append(cell)
            _progress(cell)
    server.check_alive()
    return cells


def _progress(cell: Cell) -> None:
    r = cell.result
    print(
        f"  {cell.db:<8} {cell.endpoint:<24} c={r.concurrency:<3} {r.rps:9.1f} rps"
        f"  errors={r.errors}" + (f" {dict(r.error_kinds)}" if r.error_kinds else ""),
        file=sys.stderr,
        flush=True,
    )


@contextmanager
def _database(db: str, pg_admin_url: str) -> Iterator[str]:
    if db == "sqlite":
        yield ""  # embedded: $PARITY_HOME/parity.db
    else:
        with temporary_postgres_database(pg_admin_url) as url:
            yield url


def run_db(db: str, args: argparse.Namespace) -> tuple[list[Cell], list[str]]:
    print(f"[{db}] starting server", file=sys.stderr, flush=True)
    with (
        _database(db, args.pg_admin_url) as url,
        ServerProcess(database_url=url, env=args.server_env) as server,
    ):
        ident = sign_in(server.base_url)
        print(f"[{db}] pid {server.pid} on {server.base_url}, signed in", file=sys.stderr)
        cells = asyncio.run(_run_cells(db, server, ident, args))
        errors = server.log_error_lines()
    return cells, errors


# -- report


def format_table(cells: list[Cell]) -> str:
    head = (
        f"{'db':<8} {'endpoint':<24} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'errors':>6} {'server cpu%':>11} {'loadgen cpu%':>12} {'machine%':>8}"
    )
    lines = [head, "-" * len(head)]
    for c in cells:
        r = c.result
        lines.append(
            f"{c.db:<8} {c.endpoint:<24} {r.concurrency:>4} {r.rps:>9.1f}"
            f" {fmt(r.percentile_ms(50), '.2f'):>8} {fmt(r.percentile_ms(99), '.2f'):>8}"
            f" {r.errors:>6} {fmt(r.cpu_percent.get('server'), '.0f'):>11}"
            f" {fmt(r.cpu_percent.get('loadgen'), '.0f'):>12} {r.machine_cpu_percent:>8.0f}"
        )
    return "\n".join(lines)


def ratios(cells: list[Cell]) -> dict[str, dict[int, float | None]]:
    """Per db and concurrency: write rps / floor rps."""
    rps = {(c.db, c.endpoint, c.result.concurrency): c.result.rps for c in cells}
    out: dict[str, dict[int, float | None]] = {}
    for db, endpoint, conc in rps:
        if endpoint != FLOOR:
            continue
        floor = rps[(db, FLOOR, conc)]
        write = rps.get((db, WRITE, conc))
        out.setdefault(db, {})[conc] = None if write is None or floor <= 0 else write / floor
    return out


def format_ratios(rs: dict[str, dict[int, float | None]]) -> str:
    lines = []
    for db, by_conc in rs.items():
        parts = "  ".join(f"c={c}: {fmt(v, '.3f')}" for c, v in by_conc.items())
        lines.append(f"ratio {db:<8} write/floor rps  {parts}")
    return "\n".join(lines)


def _environment(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": psutil.cpu_count(),
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "server_env": args.server_env,
    }


# -- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--seconds",
        type=bounded(float, 0, MAX_SECONDS, low_open=True),
        default=5.0,
        help="measured seconds per cell",
    )
    p.add_argument(
        "--warmup", type=bounded(float, 0, 60), default=1.0, help="warm-up seconds per cell"
    )
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument(
        "--concurrency",
        type=concurrency_list(MAX_CONCURRENCY),
        default=[1, 8, 32],
        help="e.g. 1,8,32",
    )
    p.add_argument("--json", type=Path, help="also write the results to this file")
    add_server_options(p)
    return server_env_of(p.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    install_sigterm_handler()
    args = parse_args(argv)
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    cells: list[Cell] = []
    log_errors: dict[str, list[str]] = {}
    started = time.monotonic()
    try:
        for db in dbs:
            db_cells, log_errors[db] = run_db(db, args)
            cells.extend(db_cells)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; server stopped and temporary database dropped", file=sys.stderr)
        return 130
    ncpu = psutil.cpu_count()
    print()
    print(format_table(cells))
    print()
    print(format_ratios(ratios(cells)))
    print(
        f"\nserver/loadgen cpu% is of one core, machine% of all {ncpu} cores (it includes"
        " PostgreSQL's backends); server and load generator share the same cores."
        f" {args.seconds:g} s measured + {args.warmup:g} s warm-up per cell;"
        f" total {time.monotonic() - started:.0f} s."
    )
    for db, lines in log_errors.items():
        if lines:
            print(f"warning: {db} server logged {len(lines)} error line(s), first: {lines[0]}")
    if args.json:
        doc = {
            "benchmark": "http_floor",
            "environment": _environment(args),
            "results": [c.row() for c in cells],
            "ratios": {db: {str(k): v for k, v in r.items()} for db, r in ratios(cells).items()},
            "server_log_errors": {db: lines[:20] for db, lines in log_errors.items()},
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reusable pieces for the benchmarks in bench/ (not a test module).

Everything here is bounded in time and in count, and stays on loopback:

- ``free_port``: a free TCP port on 127.0.0.1.
- ``ServerProcess``: starts ``python -m parity server`` with a clean environment, captures its
  log to a file, waits for ``/api/health`` and always stops it (SIGTERM, then SIGKILL).
- ``temporary_postgres_database``: a throwaway ``parity_bench_<hex>`` database, dropped after.
- ``sign_in``: wallet sign-in (nonce, EIP-191 signature, token).
- ``run_closed_loop``: N workers that each send the next request as soon as the previous one
  answered, for a fixed duration after a warm-up; returns latencies, errors and CPU use.
- ``CpuProbe``: per-process CPU seconds (psutil ``cpu_times``), turned into percent of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
SRC_DIR = REPO_ROOT / "src"
LOOPBACK = "127.0.0.1"

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REQUEST_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
MAX_REQUESTS_PER_CELL = 2_000_000

# Inherited variables with these prefixes could change the server's configuration (they are
# Settings keys or their aliases); the benchmark sets what it needs explicitly instead.
_CONFIG_PREFIXES = (
    "SERVER_",
    "DATABASE_",
    "PARITY_",
    "LOG_",
    "FILECOIN_",
    "BLOCKCHAIN_",
    "RUNNER_",
    "SCHEDULER_",
    "TASK_",
    "RETENTION_",
    "ADMIN_",
    "AUTH_",
    "IDEMPOTENCY_",
    "WEBHOOK_",
    "SHUTDOWN_",
    "MAX_REQUEST_",
)


class BenchError(RuntimeError):
    """A benchmark could not run (server did not start, sign-in refused, ...)."""


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def install_sigterm_handler() -> None:
    """Treat SIGTERM like Ctrl-C, so ``finally`` blocks (server stop, database drop) run.

    Re-raising as SIGINT lets ``asyncio.run`` cancel its main task cleanly and then raise
    KeyboardInterrupt, instead of an exception surfacing in the middle of a transport callback.
    """

    def _as_sigint(signum: int, frame: Any) -> None:
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, _as_sigint)


# -- server process


def server_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """The inherited environment without configuration keys, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_CONFIG_PREFIXES)}
    # Proxy variables must not redirect loopback traffic.
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(k, None)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(SRC_DIR) + (os.pathsep + path if path else "")
    env.update(overrides)
    return env


class ServerProcess:
    """One ``parity server`` process on a free loopback port; a context manager.

    The process gets its own PARITY_HOME (a temporary directory unless ``home`` is given), runs
    there (so no ./.env is read) and writes stdout and stderr to ``<home>/server.log``.
    ``__exit__`` always stops it: SIGTERM, then SIGKILL after ``STOP_GRACE_S``.
    """

    def __init__(
        self,
        *,
        database_url: str = "",
        env: Mapping[str, str] | None = None,
        home: Path | None = None,
        port: int | None = None,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://{LOOPBACK}:{self.port}"
        self.database_url = database_url
        self._extra_env = dict(env or {})
        self._home_arg = home
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.home: Path | None = None
        self.log_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_timeout_s = startup_timeout_s

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("server not started")
        return self.proc.pid

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            self._cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
            if exc is not None and not isinstance(exc, KeyboardInterrupt | SystemExit):
                print(f"--- server log tail ({self.log_path}) ---", file=sys.stderr)
                print(self.log_tail(), file=sys.stderr)
        finally:
            self._cleanup()

    def start(self) -> None:
        if self._home_arg is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="parity-bench-")
            self.home = Path(self._tmp.name)
        else:
            self.home = self._home_arg
            self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home / "server.log"
        env = server_environment(
            {
                "PARITY_HOME": str(self.home),
                # No settings file is read (the environment and the defaults only).
                "PARITY_CONFIG_PATH": os.devnull,
                "DATABASE_URL": self.database_url,
                "SERVER_HOST": LOOPBACK,
                "SERVER_PORT": str(self.port),
                "LOG_LEVEL": os.environ.get("BENCH_SERVER_LOG_LEVEL", "warning"),
                "SHUTDOWN_GRACE_SECONDS": "5",
                **self._extra_env,
            }
        )
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "parity", "server"],
                cwd=self.home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_healthy(self) -> None:
        """Poll ``/api/health`` until it answers 200; fail if the process exits or time runs out."""
        deadline = time.monotonic() + self.startup_timeout_s
        with httpx.Client(base_url=self.base_url, timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/api/health").status_code == 200:
                        return
                time.sleep(0.1)
        raise BenchError(
            f"server not healthy after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def check_alive(self) -> None:
        if self.proc is None:
            raise BenchError("server not started")
        rc = self.proc.poll()
        if rc is not None:
            raise BenchError(f"server exited with code {rc}:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM, wait up to ``STOP_GRACE_S``, then SIGKILL. Returns the exit code."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            print(f"server pid {proc.pid} ignored SIGTERM; sending SIGKILL", file=sys.stderr)
            proc.kill()
            return proc.wait(timeout=STOP_GRACE_S)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def log_error_lines(self) -> list[str]:
        """Log lines at error level (JSON lines with ``"level": "error"``) or tracebacks."""
        if self.log_path is None or not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            low = line.replace(" ", "").lower()
            if '"level":"error"' in low or '"level":"critical"' in low or "traceback" in low:
                out.append(line)
        return out

    def _cleanup(self) -> None:
        keep = os.environ.get("BENCH_SERVER_LOG_COPY")  # a path: the server log is kept there
        if keep and self.log_path is not None and self.log_path.exists():
            shutil.copyfile(self.log_path, keep)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# -- PostgreSQL


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy ``postgresql+asyncpg://`` URL as a plain DSN that asyncpg accepts."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(asyncpg_dsn(url))
    return urlunsplit(("postgresql+asyncpg", parts.netloc, "/" + name, parts.query, ""))


async def _pg_execute(admin_url: str, sql: str) -> None:
    import asyncpg  # a server dependency; imported here so sqlite-only runs need nothing more

    conn = await asyncpg.connect(asyncpg_dsn(admin_url), timeout=10)
    try:
        await conn.execute(sql, timeout=60)
    finally:
        await asyncio.wait_for(conn.close(), timeout=10)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))


@contextlib.contextmanager
def temporary_postgres_database(
    admin_url: str = DEFAULT_PG_ADMIN_URL, prefix: str = "parity_bench_"
) -> Iterator[str]:
    """Create ``<prefix><random hex>``, yield its SQLAlchemy URL, drop it afterwards."""
    name = prefix + secrets.token_hex(4)
    try:
        asyncio.run(_pg_execute(admin_url, f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError, ImportError) as exc:
        raise BenchError(f"PostgreSQL at {_redacted(admin_url)} unusable: {exc!r}") from exc
    except Exception as exc:  # asyncpg's own errors (auth, permissions)
        raise BenchError(f"cannot create database {name}: {exc!r}") from exc
    try:
        yield _with_database(admin_url, name)
    finally:
        try:
            asyncio.run(_pg_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception as exc:
            print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)


# -- identity


@dataclass(frozen=True)
class Identity:
    address: str
    private_key: str
    token: str


def sign_in(base_url: str, private_key: str | None = None) -> Identity:
    """Sign in with a wallet (a fresh random one unless ``private_key``); returns the token."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    key = private_key or "0x" + secrets.token_hex(32)
    account = Account.from_key(key)
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
        r = client.post("/api/v1/auth/nonce", json={"address": account.address})
        if r.status_code != 200:
            raise BenchError(f"nonce refused: {r.status_code} {r.text[:300]}")
        challenge = r.json()
        signed = account.sign_message(encode_defunct(text=challenge["message"]))
        r = client.post(
            "/api/v1/auth/token",
            json={
                "address": account.address,
                "signature": "0x" + bytes(signed.signature).hex(),
                "nonce": challenge["nonce"],
            },
        )
        if r.status_code != 200:
            raise BenchError(f"token refused: {r.status_code} {r.text[:300]}")
        return Identity(address=account.address, private_key=key, token=r.json()["token"])


def make_client(
    base_url: str, concurrency: int, token: str | None = None, timeout_s: float = REQUEST_TIMEOUT_S
) -> httpx.AsyncClient:
    """An AsyncClient whose pool holds exactly ``concurrency`` connections (loopback, no proxy)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(timeout_s, pool=timeout_s),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        trust_env=False,
    )


# -- CPU


class CpuProbe:
    """CPU seconds (user + system) of named processes; ``percent`` is of one core."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def snapshot(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, proc in self._procs.items():
            try:
                t = proc.cpu_times()
                out[name] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                out[name] = None
        return out

    @staticmethod
    def percent(
        before: Mapping[str, float | None], after: Mapping[str, float | None], wall_s: float
    ) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, b in before.items():
            a = after.get(name)
            out[name] = None if a is None or b is None or wall_s <= 0 else 100 * (a - b) / wall_s
        return out


def machine_busy_seconds() -> float:
    """Non-idle CPU seconds of the whole machine, all cores."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


# -- closed-loop load


@dataclass
class LoadResult:
    concurrency: int
    wall_s: float
    latencies_s: list[float]
    errors: int
    warmup_errors: int
    capped: bool
    cpu_percent: dict[str, float | None]
    machine_cpu_percent: float
    error_kinds: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        return percentile(self.latencies_s, q, scale=1000.0)

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "wall_s": round(self.wall_s, 3),
            "requests_ok": self.ok,
            "rps": round(self.rps, 1),
            "p50_ms": _round(self.percentile_ms(50)),
            "p90_ms": _round(self.percentile_ms(90)),
            "p99_ms": _round(self.percentile_ms(99)),
            "max_ms": _round(self.percentile_ms(100)),
            "errors": self.errors,
            "warmup_errors": self.warmup_errors,
            "error_kinds": dict(self.error_kinds),
            "capped": self.capped,
            "cpu_percent": {k: _round(v) for k, v in self.cpu_percent.items()},
            "machine_cpu_percent": _round(self.machine_cpu_percent),
        }


def _round(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)


def percentile(values: list[float], q: float, scale: float = 1.0) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``, times ``scale``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1] * scale


# request(worker, seq) -> True on success, else False or a short reason such as "HTTP 503".
RequestFn = Callable[[int, int], Awaitable[bool | str]]


async def run_closed_loop(
    request: RequestFn,
    *,
    concurrency: int,
    seconds: float,
    warmup_s: float = 1.0,
    cpu: CpuProbe | None = None,
    max_requests: int = MAX_REQUESTS_PER_CELL,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> LoadResult:
    """``concurrency`` workers each await ``request(worker, seq)`` in a loop (closed loop).

    ``request`` returns True on success, else False or a reason (counted in ``error_kinds``, as
    are exception class names; ``error_kinds`` covers the warm-up too).

    Requests started during the warm-up are not counted. The measured window runs from the end of
    the warm-up until the last worker has finished its last request (workers start no request
    after ``warmup_s + seconds``), and CPU use is sampled over exactly that window. The whole
    call is bounded by ``warmup_s + seconds + request_timeout_s + 10`` s and by ``max_requests``.
    """
    if concurrency < 1 or seconds <= 0 or warmup_s < 0:
        raise ValueError("concurrency >= 1, seconds > 0, warmup_s >= 0")
    t0 = time.perf_counter()
    measure_start = t0 + warmup_s
    end = measure_start + seconds
    latencies: list[float] = []
    kinds: Counter[str] = Counter()
    state = {"issued": 0, "errors": 0, "warmup_errors": 0}
    start_mark: dict[str, Any] = {}

    async def mark_start() -> None:
        await asyncio.sleep(max(0.0, measure_start - time.perf_counter()))
        start_mark["t"] = time.perf_counter()
        start_mark["cpu"] = cpu.snapshot() if cpu else {}
        start_mark["machine"] = machine_busy_seconds()

    async def worker(wid: int) -> None:
        seq = 0
        while True:
            began = time.perf_counter()
            if began >= end or state["issued"] >= max_requests:
                return
            state["issued"] += 1
            seq += 1
            try:
                outcome = await request(wid, seq)
            except Exception as exc:
                outcome = type(exc).__name__
            ok = outcome is True
            if not ok:
                kinds[outcome if isinstance(outcome, str) else "failed"] += 1
            took = time.perf_counter() - began
            if began < measure_start:
                if not ok:
                    state["warmup_errors"] += 1
            elif ok:
                latencies.append(took)
            else:
                state["errors"] += 1
            if not ok:
                # An instantly failing request (connection refused) must not spin the loop.
                await asyncio.sleep(0.001)

    marker = asyncio.create_task(mark_start())
    workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    bound = warmup_s + seconds + request_timeout_s + 10.0
    try:
        _, pending = await asyncio.wait(workers, timeout=bound)
        if pending:
            raise BenchError(f"{len(pending)} workers still busy after {bound:.0f} s")
        for w in workers:
            w.result()  # re-raise anything unexpected (BaseException escaping a worker)
        await marker
    finally:
        # Also on cancellation (Ctrl-C, SIGTERM): no task outlives the call.
        for t in (marker, *workers):
            t.cancel()
        await asyncio.gather(marker, *workers, return_exceptions=True)
    done = time.perf_counter()
    after_cpu = cpu.snapshot() if cpu else {}
    machine = machine_busy_seconds()
    wall = done - start_mark["t"]
    ncpu = psutil.cpu_count() or 1
    return LoadResult(
        concurrency=concurrency,
        wall_s=wall,
        latencies_s=latencies,
        errors=state["errors"],
        warmup_errors=state["warmup_errors"],
        capped=state["issued"] >= max_requests,
        cpu_percent=CpuProbe.percent(start_mark["cpu"], after_cpu, wall) if cpu else {},
        machine_cpu_percent=100 * (machine - start_mark["machine"]) / wall / ncpu,
        error_kinds=kinds,
    )


# -- queue benchmarks: runners, request counting, direct database access


def register_runner(
    base_url: str,
    wallet_token: str,
    device_id: str,
    *,
    max_concurrent_tasks: int = 1,
    capabilities: Mapping[str, Any] | None = None,
) -> str:
    """Register (or re-register) a runner with a wallet token; returns its runner token."""
    body = {
        "device_id": device_id,
        "capabilities": dict(capabilities or {"cpu_cores": 4, "memory_mb": 4096}),
        "max_concurrent_tasks": max_concurrent_tasks,
    }
    with httpx.Client(
        base_url=base_url,
        timeout=REQUEST_TIMEOUT_S,
        trust_env=False,
        headers={"Authorization": f"Bearer {wallet_token}"},
    ) as client:
        r = client.post("/api/v1/runners", json=body)
    if r.status_code != 201:
        raise BenchError(f"runner registration refused: {r.status_code} {r.text[:300]}")
    return str(r.json()["runner_token"])


class RequestCounter:
    """Counts HTTP responses by status code; pass ``hook`` as an httpx response event hook."""

    def __init__(self) -> None:
        self.by_status: Counter[int] = Counter()

    async def hook(self, response: httpx.Response) -> None:
        self.by_status[response.status_code] += 1

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    def reset(self) -> None:
        self.by_status.clear()


# -- command lines


def fmt(v: float | None, spec: str) -> str:
    """A figure for a table, ``-`` when there is none."""
    return "-" if v is None else format(v, spec)


def bounded(kind: type, low: float, high: float, *, low_open: bool = False) -> Any:
    """An argparse type: ``kind(text)`` within [low, high] (or (low, high] with ``low_open``)."""

    def parse(text: str) -> Any:
        v = kind(text)
        if (v <= low if low_open else v < low) or v > high:
            raise argparse.ArgumentTypeError(f"in {'(' if low_open else '['}{low:g}, {high:g}]")
        return v

    return parse


def concurrency_list(maximum: int) -> Callable[[str], list[int]]:
    """An argparse type: a comma-separated list of concurrencies in 1..maximum."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError("a comma-separated list of integers") from None
        if not values or any(not 1 <= v <= maximum for v in values):
            raise argparse.ArgumentTypeError(f"each value in 1..{maximum}")
        return values

    return parse


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("KEY=VALUE")
    return key, value


def add_server_options(p: argparse.ArgumentParser) -> None:
    """--pg-admin-url and --server-env (read back as a dict by :func:`server_env_of`)."""
    p.add_argument(
        "--pg-admin-url",
        default=os.environ.get("PARITY_BENCH_PG_URL", DEFAULT_PG_ADMIN_URL),
        help="PostgreSQL URL used to create and drop a throwaway database "
        "(default $PARITY_BENCH_PG_URL or %(default)s)",
    )
    p.add_argument(
        "--server-env",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra server setting, repeatable (e.g. DATABASE_POOL_SIZE=20)",
    )


def server_env_of(args: argparse.Namespace) -> argparse.Namespace:
    args.server_env = dict(args.server_env)
    return args

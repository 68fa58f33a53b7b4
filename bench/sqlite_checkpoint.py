"""How long the event loop stands still while an embedded SQLite database takes writes.

The write connection runs on the loop's thread (parity.db.sqlite_driver). SQLite's automatic
WAL checkpoint runs inside the commit that crosses its threshold, copying the log into the
database file and syncing both; the server now checkpoints on a worker thread instead
(parity.db.checkpoint). This drives ``--transactions`` write transactions of ``--size`` bytes
each through ``Database.transaction`` (one every ``--gap-ms``) while a ticker on the same loop
measures how late it wakes (a stall of every request), for each mode in turn on a fresh
database:

- ``loop``: the baseline, SQLite's own checkpoint in the commit (``wal_autocheckpoint=1000``
  on the write connection, the worker never runs);
- ``worker``: the server's setting.

``--disk-load`` adds a thread that keeps writing and syncing a file on the same disk meanwhile,
as other work on the machine would (a sync then waits for it).

    .venv/bin/python bench/sqlite_checkpoint.py
    .venv/bin/python bench/sqlite_checkpoint.py --disk-load --transactions 600
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from sqlalchemy import text

from parity.db.session import Database

TICK_S = 0.001


def _disk_load(directory: Path, stop: threading.Event) -> None:
    block = os.urandom(1 << 20)
    path = directory / "disk-load.bin"
    while not stop.is_set():
        with path.open("wb") as f:
            for _ in range(32):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
    path.unlink(missing_ok=True)


async def _ticker(lates: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(TICK_S)
        lates.append(time.perf_counter() - before - TICK_S)


async def run_mode(mode: str, directory: Path, args: argparse.Namespace) -> dict[str, float]:
    db = Database(f"sqlite+aiosqlite:///{directory / f'{mode}.db'}")
    assert db.checkpointer is not None
    if mode == "loop":
        db.checkpointer.every = 10**12
    async with db.transaction() as s:
        await s.execute(text("CREATE TABLE rows (b BLOB)"))
        if mode == "loop":
            await s.execute(text("PRAGMA wal_autocheckpoint=1000"))
    lates: list[float] = []
    commits: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticker(lates, stop))
    blob = os.urandom(args.size)
    started = time.perf_counter()
    for _ in range(args.transactions):
        t0 = time.perf_counter()
        async with db.transaction() as s:
            await s.execute(text("INSERT INTO rows (b) VALUES (:b)"), {"b": blob})
        commits.append(time.perf_counter() - t0)
        await asyncio.sleep(args.gap_ms / 1000)
    elapsed = time.perf_counter() - started
    stop.set()
    await ticker
    checkpoints = db.checkpointer.checkpoints
    await db.dispose()
    lates.sort()
    commits.sort()

    def q(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000

    return {
        "tx/s": args.transactions / elapsed,
        "commit p50": q(commits, 0.5),
        "commit p99": q(commits, 0.99),
        "commit max": commits[-1] * 1000,
        "stall p99": q(lates, 0.99),
        "stall max": lates[-1] * 1000,
        "stalls > 10 ms": float(sum(1 for x in lates if x > 0.010)),
        "mean stall": statistics.fmean(lates) * 1000,
        "worker checkpoints": float(checkpoints),
    }


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="parity-ckpt-", dir=args.dir) as tmp:
        directory = Path(tmp)
        stop = threading.Event()
        loader = None
        if args.disk_load:
            loader = threading.Thread(target=_disk_load, args=(directory, stop), daemon=True)
            loader.start()
        try:
            results = {}
            for mode in args.modes.split(","):
                results[mode] = await run_mode(mode, directory, args)
        finally:
            stop.set()
            if loader is not None:
                loader.join()
    modes = list(results)
    print(
        f"{args.transactions} write transactions of {args.size} bytes, one every {args.gap_ms} ms"
        f"{', disk under load' if args.disk_load else ''}; ms unless named"
    )
    print(f"| figure | {' | '.join(modes)} | {modes[-1]} ÷ {modes[0]} |")
    print(f"| --- | {' | '.join('---:' for _ in modes)} | ---: |")
    for key in results[modes[0]]:
        values = [results[m][key] for m in modes]
        ratio = values[-1] / values[0] if values[0] else float("nan")
        digits = 0 if key == "worker checkpoints" else 2
        cells = " | ".join(f"{v:.{digits}f}" for v in values)
        print(f"| {key} | {cells} | {ratio:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--transactions", type=int, default=400)
    p.add_argument("--size", type=int, default=65536, help="bytes written per transaction")
    p.add_argument("--gap-ms", type=float, default=2.0, help="pause between transactions")
    p.add_argument("--modes", default="loop,worker", help="loop (baseline), worker")
    p.add_argument("--disk-load", action="store_true", help="a thread writing and syncing")
    p.add_argument("--dir", default=None, help="where the databases go (default: the temp dir)")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()

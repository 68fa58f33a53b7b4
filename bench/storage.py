"""Storage throughput and memory on the embedded content store, through the HTTP API.

One server process (embedded SQLite, local blockstore) on a free loopback port. This process
writes a file of random bytes, then:

- ``sha256``: hashes the same bytes in memory with hashlib (one core, 1 MiB pieces): the floor
  the goal is stated against;
- ``disk write``: writes the same bytes as 256 KiB files (temporary file, then rename) on the
  filesystem the server's blockstore uses: what storing cost in the one-file-per-block layout
  (the packed layout appends to one file and fsyncs it once), a second floor;
- ``HTTP upload``: the same PUT to a bare Starlette app on uvicorn that only counts the body:
  what receiving an upload costs here, a third floor (server cpu% is not sampled for it);
- ``upload PUT``: streams the file as the raw body of ``PUT /api/v1/storage/upload``;
- ``upload multipart``: the same file again as ``POST`` multipart form (the README's form; the
  blocks are already stored, so this measures receiving, parsing and hashing);
- ``download``: ``GET /api/v1/storage/download/{cid}``, streamed and counted;
- ``rss upload``: a second, larger file (default 1 GiB) uploaded with PUT, for the server's peak
  resident memory (``VmHWM``; the goal is under 200 MB).

It prints MB/s (10^6 bytes per second of wall time) for each, the ratio to the sha256 floor (goal
for uploads: >= 0.70), the CPU use of the server and of this process (percent of one core; both
share the machine's cores), the server's RSS before and its peak after, and checks that the
server's CID equals the one this project's importer computes for the bytes.

    .venv/bin/python bench/storage.py [--size-mib 256] [--rss-mib 1024] [--json out.json]
                                      [--server-env STORAGE_CIDV0_ALIASES=false]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

# Run as a script: Python puts bench/ first on sys.path, so the shared helpers import directly.
from _common import (
    LOOPBACK,
    BenchError,
    CpuProbe,
    ServerProcess,
    free_port,
    install_sigterm_handler,
    sign_in,
)

from parity.core.storage.importer import FileImporter

MIB = 1 << 20
PIECE = MIB
CHUNK = 256 * 1024
TIMEOUT_S = 600.0


def _write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n


def _pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            yield piece


def _multipart(path: Path, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield from _pieces(path)
    yield f"\r\n--{boundary}--\r\n".encode()


def _sha256(data: bytes) -> str:
    h = hashlib.sha256()
    view = memoryview(data)
    for i in range(0, len(view), PIECE):
        h.update(view[i : i + PIECE])
    return h.hexdigest()


def _disk_floor(data: bytes, where: Path) -> None:
    """Write the bytes as 256 KiB files as the one-file-per-block layout did (temp, rename)."""
    where.mkdir(parents=True)
    view = memoryview(data)
    for n, i in enumerate(range(0, len(view), CHUNK)):
        tmp = where / f"{n}.tmp"
        with open(tmp, "wb") as f:
            f.write(view[i : i + CHUNK])
        os.replace(tmp, where / str(n))


SINK_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def sink(request):
    n = 0
    async for piece in request.stream():
        n += len(piece)
    return JSONResponse({"n": n})


app = Starlette(routes=[Route("/sink", sink, methods=["PUT"])])
"""


@contextlib.contextmanager
def _sink_server(where: Path) -> Iterator[str]:
    """A bare Starlette app on uvicorn (same loop and HTTP parser as the server) that only
    counts the body: the HTTP floor of an upload on this machine."""
    (where / "bench_sink.py").write_text(SINK_APP)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(where),
            "bench_sink:app",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdin=subprocess.DEVNULL,
    )
    url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.put(f"{url}/sink", content=b"", timeout=1, trust_env=False)
                break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _peak_rss(pid: int) -> int:
    """VmHWM: the process's peak resident set, in bytes (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return psutil.Process(pid).memory_info().rss


def _timed(probe: CpuProbe, fn: Any) -> tuple[Any, float, dict[str, float | None]]:
    before = probe.snapshot()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    return out, wall, CpuProbe.percent(before, probe.snapshot(), wall)


def _mbps(size: int, wall: float) -> float:
    return size / wall / 1e6 if wall > 0 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=256, help="throughput file size (MiB)")
    ap.add_argument("--rss-mib", type=int, default=1024, help="peak-RSS upload size (MiB); 0 skips")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    if not 1 <= args.size_mib <= 8192 or not 0 <= args.rss_mib <= 8192:
        ap.error("sizes must be 1..8192 MiB")
    install_sigterm_handler()
    size = args.size_mib * MIB
    extra = dict(kv.split("=", 1) for kv in args.server_env)
    env = {"STORAGE_MAX_UPLOAD_BYTES": str(max(size, args.rss_mib * MIB) + MIB), **extra}
    results: dict[str, Any] = {"size_bytes": size, "rss_upload_bytes": args.rss_mib * MIB}

    with tempfile.TemporaryDirectory(prefix="parity-bench-storage-") as tmp:
        data_path = Path(tmp) / "data.bin"
        _write_random(data_path, size)
        data = data_path.read_bytes()

        importer = FileImporter(keep_blocks=False)
        importer.write(data)
        expected = importer.finish()[1].cid.encode()
        del data

        with ServerProcess(env=env, home=Path(tmp) / "home") as server:
            me = sign_in(server.base_url)
            probe = CpuProbe({"server": server.pid, "bench": os.getpid()})
            rss_before = psutil.Process(server.pid).memory_info().rss
            headers = {"Authorization": f"Bearer {me.token}"}
            timeout = httpx.Timeout(TIMEOUT_S, connect=10)
            with httpx.Client(
                base_url=server.base_url, headers=headers, timeout=timeout, trust_env=False
            ) as client:
                rows: list[tuple[str, int, float, dict[str, float | None]]] = []
                floor_bytes = data_path.read_bytes()
                _, wall, cpu = _timed(probe, functools.partial(_sha256, floor_bytes))
                rows.append(("sha256 (floor)", size, wall, cpu))
                blocks = Path(extra.get("STORAGE_PATH") or server.home / "blocks")
                disk = blocks.parent / f"disk-floor-{os.getpid()}"
                _, wall, cpu = _timed(probe, functools.partial(_disk_floor, floor_bytes, disk))
                rows.append(("disk write, 256 KiB files (floor)", size, wall, cpu))
                # Kept until the end: deleting a thousand files just before the upload makes
                # ext4 without a journal scan those "recently deleted" inodes on every create
                # for about 10 s, which slowed the upload measured next by up to 2x.
                del floor_bytes
                with _sink_server(Path(tmp)) as sink:

                    def bare() -> None:
                        n = str(data_path.stat().st_size)
                        r = client.put(
                            f"{sink}/sink",
                            content=_pieces(data_path),
                            headers={"Content-Length": n},
                        )
                        if r.json().get("n") != size:
                            raise BenchError(f"sink answered {r.status_code}: {r.text[:200]}")

                    _, wall, cpu = _timed(probe, bare)
                    rows.append(("HTTP upload, bare Starlette (floor)", size, wall, cpu))

                def put(path: Path) -> dict[str, Any]:
                    r = client.put(
                        "/api/v1/storage/upload",
                        content=_pieces(path),
                        headers={"Content-Length": str(path.stat().st_size)},
                    )
                    if r.status_code != 201:
                        raise BenchError(f"upload answered {r.status_code}: {r.text[:300]}")
                    return dict(r.json())

                doc, wall, cpu = _timed(probe, lambda: put(data_path))
                rows.append(("upload PUT", size, wall, cpu))
                if doc["cid"] != expected:
                    raise BenchError(f"server CID {doc['cid']} != importer CID {expected}")

                def post() -> None:
                    boundary = "benchboundary7d1f"
                    r = client.post(
                        "/api/v1/storage/upload",
                        content=_multipart(data_path, boundary),
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                    )
                    if r.status_code != 201 or r.json()["cid"] != expected:
                        raise BenchError(
                            f"multipart upload answered {r.status_code}: {r.text[:300]}"
                        )

                _, wall, cpu = _timed(probe, post)
                rows.append(("upload multipart", size, wall, cpu))

                def get() -> int:
                    got = 0
                    with client.stream("GET", f"/api/v1/storage/download/{expected}") as r:
                        if r.status_code != 200:
                            raise BenchError(f"download answered {r.status_code}")
                        for piece in r.iter_raw(PIECE):
                            got += len(piece)
                    return got

                got, wall, cpu = _timed(probe, get)
                if got != size:
                    raise BenchError(f"downloaded {got} bytes, expected {size}")
                rows.append(("download", size, wall, cpu))
                peak_after_throughput = _peak_rss(server.pid)

                if args.rss_mib:
                    big = Path(tmp) / "big.bin"
                    _write_random(big, args.rss_mib * MIB)
                    _, wall, cpu = _timed(probe, lambda: put(big))
                    big.unlink()
                    rows.append(
                        (f"rss upload PUT ({args.rss_mib} MiB)", args.rss_mib * MIB, wall, cpu)
                    )
                peak = _peak_rss(server.pid)

    floor = _mbps(rows[0][1], rows[0][2])
    cores = psutil.cpu_count()
    print(f"storage bench: {args.size_mib} MiB, embedded store, {platform.node()} ({cores} cores)")
    head = ("phase", "MB/s", "ratio", "wall s", "server cpu%", "bench cpu%")
    print(f"{head[0]:34} {head[1]:>9} {head[2]:>7} {head[3]:>8} {head[4]:>12} {head[5]:>11}")
    table = []
    for name, n, wall, cpu in rows:
        rate = _mbps(n, wall)
        ratio = rate / floor if floor else 0.0
        srv, me_cpu = cpu.get("server"), cpu.get("bench")
        print(
            f"{name:34} {rate:9.1f} {ratio:7.2f} {wall:8.2f} "
            f"{(srv or 0):12.0f} {(me_cpu or 0):11.0f}"
        )
        table.append(
            {
                "phase": name,
                "bytes": n,
                "wall_s": round(wall, 3),
                "mb_per_s": round(rate, 1),
                "ratio_to_sha256": round(ratio, 3),
                "cpu_percent": cpu,
            }
        )
    print(f"server RSS before uploads: {rss_before / 1e6:.0f} MB")
    mb = 1e6
    print(
        f"server peak RSS after the {args.size_mib} MiB phases: {peak_after_throughput / mb:.0f} MB"
    )
    if args.rss_mib:
        print(f"server peak RSS after a {args.rss_mib} MiB upload: {peak / mb:.0f} MB (goal < 200)")
    up = _mbps(rows[3][1], rows[3][2])
    disk_rate = _mbps(rows[1][1], rows[1][2])
    http_rate = _mbps(rows[2][1], rows[2][2])
    multipart = _mbps(rows[4][1], rows[4][2])
    down = _mbps(rows[5][1], rows[5][2])
    print(f"ratio upload PUT / sha256: {up / floor:.2f} (goal >= 0.70)")
    print(f"ratio upload multipart / sha256: {multipart / floor:.2f} (blocks already stored)")
    print(f"ratio download / sha256: {down / floor:.2f}")
    print(f"ratio upload PUT / disk write floor: {up / disk_rate:.2f}")
    print(f"ratio upload PUT / bare HTTP upload floor: {up / http_rate:.2f}")
    print(f"ratio bare HTTP upload floor / sha256: {http_rate / floor:.2f} (no store can beat it)")
    print(f"CID {expected} (server and importer agree)")
    results.update(
        phases=table,
        server_rss_before=rss_before,
        server_peak_rss_after_throughput=peak_after_throughput,
        server_peak_rss=peak,
        cid=expected,
        server_env=extra,
        python=sys.version.split()[0],
        cores=psutil.cpu_count(),
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

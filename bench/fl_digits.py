"""Federated learning on scikit-learn's digits over real runner processes.

One server, N `parity-runner` processes (FL advertised by default), the digits data set
(1,797 rows, 64 features scaled to 0..1) uploaded once as CSV; a 20 % stratified, seeded test
split held out by the server, which evaluates the global model after every round. MLP 64-32-10,
5 local epochs, batch 16, lr 0.1, FedAvg. Printed per (partitioning, seed): final and best test
accuracy, the round that first reached 95 %, and the coordination overhead per round (server
round open → round close minus the slowest participant's reported training time), beside the
HTTP floor (sequential authenticated GETs) of the same server and a centralized baseline (the
same MLP and SGD trained on the whole training split in this process).

    .venv/bin/python bench/fl_digits.py                                  # the full grid
    .venv/bin/python bench/fl_digits.py --partitions dirichlet:0.5 --seeds 0 --rounds 20
    .venv/bin/python bench/fl_digits.py --noop --rounds 30 --seeds 0      # pure coordination
    .venv/bin/python bench/fl_digits.py --kill 2 --min-share 0.8 --seeds 0  # 2 die in rounds 5-10
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CpuProbe,
    ServerProcess,
    install_sigterm_handler,
    percentile,
    server_environment,
    sign_in,
    temporary_postgres_database,
)

PASSWORD = "bench-password"
TERMINAL = ("completed", "failed", "cancelled")


def digits_csv() -> tuple[bytes, np.ndarray, np.ndarray]:
    """The digits data set as CSV (header, 64 features scaled /16, label last)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    out = io.StringIO()
    out.write(",".join([*(f"p{i}" for i in range(64)), "label"]) + "\n")
    for row, label in zip(x, y, strict=True):
        out.write(",".join(f"{v:.6g}" for v in row) + f",{label}\n")
    return out.getvalue().encode(), x, y


def centralized_baseline(x: np.ndarray, y: np.ndarray, seed: int, epochs: int) -> float:
    """The same MLP and SGD on the whole training split: the accuracy FL is compared with."""
    from sklearn.model_selection import train_test_split

    from parity.core.fl.model import evaluate, init_weights, parse_model_spec
    from parity.core.fl.train import TrainConfig, train_local

    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    spec = parse_model_spec(
        "neural_network", {"input_size": 64, "hidden_size": 32, "output_size": 10}
    )
    weights = init_weights(spec, seed)
    result = train_local(spec, weights, xtr, ytr, TrainConfig(0.1, 16, epochs), seed)
    return evaluate(spec, result.weights, xte, yte).accuracy


def session_body(
    cid: str, strategy: str, seed: int, args: argparse.Namespace, runners: int
) -> dict[str, Any]:
    name, _, value = strategy.partition(":")
    metadata: dict[str, Any] = {"min_samples": 10}
    if name == "dirichlet":
        metadata["alpha"] = float(value or 0.5)
    elif name == "label_skew":
        metadata["classes_per_participant"] = int(value or 2)
    config: dict[str, Any] = {
        "aggregation_method": "fedavg",
        "learning_rate": 0.1,
        "batch_size": 16,
        "local_epochs": args.epochs,
        "model_config": {"input_size": 64, "hidden_size": 32, "output_size": 10},
        "round_timeout_seconds": args.round_timeout,
    }
    if args.min_share is not None:
        config["min_share"] = args.min_share
    return {
        "name": f"digits {strategy} seed {seed}",
        "model_type": "neural_network",
        "total_rounds": args.rounds,
        "min_participants": runners,
        "training_data": {
            "dataset_cid": cid,
            "data_format": "csv",
            "split_strategy": name,
            "seed": seed,
            "test_split": 0.2,
            "metadata": metadata,
        },
        "config": config,
    }


@dataclass
class Fleet:
    """N runner processes of one wallet (a keystore each would only slow start-up)."""

    base_url: str
    home: Path
    trainer: str  # the runners' --fl-trainer
    key: str  # the fleet's wallet: one for the whole run (a device stays with its first wallet)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, n: int) -> str:
        """Start ``n`` runners; returns their wallet's sign-in token (to list them)."""
        import parity.chain.keystore as ks

        ks.SCRYPT_N = 2**10  # fast to open; this keystore guards nothing
        keystore = self.home / "keystore.json"
        key = self.key
        ks.create_keystore(keystore, PASSWORD, key, overwrite=True)
        for i in range(n):
            device = f"fl-{i}"
            args = [
                sys.executable, "-c", "from parity.agent.cli import main; main()",
                "--server", self.base_url, "--keystore", str(keystore), "--device-id", device,
                "--heartbeat-interval", "2", "--claim-wait", "25",
            ]  # fmt: skip
            args += ["--fl-trainer", self.trainer]
            env = server_environment(
                {
                    "PARITY_HOME": str(self.home / device),
                    "PARITY_KEYSTORE_PASSWORD": PASSWORD,
                    "LOG_LEVEL": "warning",
                }
            )
            log = open(self.home / f"{device}.log", "wb")  # noqa: SIM115 - lives with the process
            self.procs[device] = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.home
            )
        return sign_in(self.base_url, key).token

    def kill(self, device: str) -> None:
        proc = self.procs.get(device)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=15)
            if p.poll() is None:
                p.kill()


def wait_online(c: httpx.Client, owner_token: str, n: int, timeout: float = 90) -> None:
    """Wait for ``n`` FL runners online, listed as their owner (the fleet's wallet) sees them."""
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {owner_token}"}
    while time.monotonic() < deadline:
        r = c.get("/api/v1/runners", params={"limit": 200}, headers=headers)
        items = r.json().get("items", [])
        fl = [r for r in items if r["status"] in ("online", "busy") and r["capabilities"]["fl"]]
        if len(fl) >= n:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{n} FL runners did not come online in {timeout:.0f} s")


def http_floor(c: httpx.Client, n: int = 200) -> float:
    """Median ms of a minimal authenticated request (the per-request floor of this server)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.get("/api/v1/federated-learning/sessions", params={"limit": 1}).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def run_session(
    c: httpx.Client, body: dict[str, Any], fleet: Fleet, kill: int, timeout: float
) -> dict[str, Any]:
    r = c.post("/api/v1/federated-learning/sessions", json=body)
    r.raise_for_status()
    sid = r.json()["id"]
    t0 = time.monotonic()
    r = c.post(f"/api/v1/federated-learning/sessions/{sid}/start")
    r.raise_for_status()
    victims = random.Random(0).sample(sorted(fleet.procs), kill) if kill else []
    kill_at = {v: 5 + i * max(1, 5 // max(kill, 1)) for i, v in enumerate(victims)}
    session: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session = c.get(f"/api/v1/federated-learning/sessions/{sid}").json()
        for device, at in list(kill_at.items()):
            if session["current_round"] >= at:
                fleet.kill(device)
                del kill_at[device]
        if session["status"] in TERMINAL:
            break
        time.sleep(0.2)
    wall = time.monotonic() - t0
    metrics = c.get(f"/api/v1/federated-learning/sessions/{sid}/metrics").json()["rounds"]
    return {"session": session, "rounds": metrics, "wall_s": wall, "killed": victims}


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    rounds = run["rounds"]
    acc = [r.get("test_accuracy") for r in rounds]
    overhead = [r["coordination_overhead_ms"] for r in rounds if r.get("coordination_overhead_ms")]
    to95 = next((r["round"] for r in rounds if (r.get("test_accuracy") or 0) >= 0.95), None)
    return {
        "status": run["session"]["status"],
        "failure_reason": run["session"].get("failure_reason"),
        "rounds": len(rounds),
        "final_acc": acc[-1] if acc else None,
        "best_acc": max((a for a in acc if a is not None), default=None),
        "round_to_95": to95,
        "overhead_p50_ms": percentile(overhead, 50),
        "overhead_p95_ms": percentile(overhead, 95),
        "participants_last": rounds[-1]["participants"] if rounds else None,
        "wall_s": round(run["wall_s"], 1),
        "killed": run["killed"],
    }


def full_fleet(c: httpx.Client, fleet: Fleet, n: int, gap: float) -> None:
    """(Re)start the fleet when a runner is missing (the first session, or after a kill)."""
    if len(fleet.procs) == n and all(p.poll() is None for p in fleet.procs.values()):
        return
    fleet.stop()
    fleet.procs.clear()
    time.sleep(gap)
    owner = fleet.start(n)
    wait_online(c, owner, n)


@contextlib.contextmanager
def bench_server(
    data: bytes, db_url: str, prefix: str, *, trainer: str = "numpy"
) -> Iterator[tuple[httpx.Client, ServerProcess, Fleet, str]]:
    """A server with ``data`` (the digits CSV) uploaded and an unstarted fleet of one wallet,
    stopped on the way out. Yields the signed-in client, the server, the fleet and the CID."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        env = {"TASK_LEASE_SECONDS": "6", "RUNNER_OFFLINE_TIMEOUT_SECONDS": "8"}
        with ServerProcess(database_url=db_url, env=env) as server:
            client = sign_in(server.base_url)
            headers = {"Authorization": f"Bearer {client.token}"}
            with httpx.Client(
                base_url=server.base_url, headers=headers, timeout=60, trust_env=False
            ) as c:
                cid = c.put("/api/v1/storage/upload", content=data).json()["cid"]
                fleet = Fleet(server.base_url, Path(tmp), trainer, "0x" + os.urandom(32).hex())
                try:
                    yield c, server, fleet, cid
                finally:
                    fleet.stop()


def one_session(
    c: httpx.Client,
    server: ServerProcess,
    fleet: Fleet,
    cid: str,
    strategy: str,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One session on the fleet; the fleet is (re)started when a runner is missing (the first
    session, or after runners were killed)."""
    full_fleet(c, fleet, args.runners, args.runner_gap)
    probe = CpuProbe({"server": server.pid, **{k: p.pid for k, p in fleet.procs.items()}})
    before = probe.snapshot()
    body = session_body(cid, strategy, seed, args, args.runners)
    run = run_session(c, body, fleet, args.kill, args.timeout)
    cpu = CpuProbe.percent(before, probe.snapshot(), run["wall_s"])
    runners_cpu = sum(v or 0.0 for k, v in cpu.items() if k != "server")
    row = {"partition": strategy, "seed": seed, **summarize(run)}
    row["cpu_server_pct"] = cpu.get("server")
    row["cpu_runners_pct"] = round(runners_cpu, 1)
    return row


def run_grid(args: argparse.Namespace, db_url: str) -> dict[str, Any]:
    data, x, y = digits_csv()
    results: list[dict[str, Any]] = []
    trainer = "noop" if args.noop else args.trainer
    with bench_server(data, db_url, "parity-fl-", trainer=trainer) as (c, server, fleet, cid):
        floor = http_floor(c)
        for strategy in args.partitions:
            for seed in args.seeds:
                row = one_session(c, server, fleet, cid, strategy, seed, args)
                results.append(row)
                print(json.dumps(row), flush=True)
    baseline = (
        [centralized_baseline(x, y, s, args.baseline_epochs) for s in args.seeds]
        if args.baseline_epochs
        else []
    )
    return {"floor_ms": floor, "results": results, "baseline": baseline}


def report(out: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nFL digits: {args.runners} runner processes, {args.rounds} rounds, MLP 64-32-10, "
        f"E={args.epochs} B=16 lr=0.1, FedAvg, db={args.db}"
        + (", no-op trainer" if args.noop else f", {args.trainer} trainer")
        + (
            f", {args.kill} runners killed in rounds 5-10, min_share {args.min_share}"
            if args.kill
            else ""
        )
    )
    hdr = (
        f"{'partition':16} {'seed':>4} {'status':>9} {'final %':>8} {'best %':>7} "
        f"{'to 95%':>6} {'ovh p50':>8} {'ovh p95':>8} {'wall s':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in out["results"]:
        fin = "-" if r["final_acc"] is None else f"{100 * r['final_acc']:.2f}"
        best = "-" if r["best_acc"] is None else f"{100 * r['best_acc']:.2f}"
        p50 = "-" if r["overhead_p50_ms"] is None else f"{r['overhead_p50_ms']:.0f}"
        p95 = "-" if r["overhead_p95_ms"] is None else f"{r['overhead_p95_ms']:.0f}"
        print(
            f"{r['partition']:16} {r['seed']:>4} {r['status']:>9} {fin:>8} {best:>7} "
            f"{r['round_to_95'] or '-'!s:>6} {p50:>8} {p95:>8} {r['wall_s']:>7}"
        )
        if r["failure_reason"]:
            print(f"    failure_reason: {r['failure_reason']}")
    print(f"HTTP floor (median of sequential authenticated GETs): {out['floor_ms']:.1f} ms")
    overheads = [r["overhead_p50_ms"] for r in out["results"] if r["overhead_p50_ms"]]
    if overheads:
        med = statistics.median(overheads)
        print(f"ratio: median round overhead / HTTP floor = {med / out['floor_ms']:.1f}")
    if out["baseline"]:
        base = statistics.mean(out["baseline"])
        print(f"centralized baseline (same MLP, {args.baseline_epochs} epochs): {100 * base:.2f} %")
        for r in out["results"]:
            if r["final_acc"] is not None:
                ratio = r["final_acc"] / base
                print(f"  {r['partition']} seed {r['seed']}: FL / centralized = {ratio:.3f}")
    print("overhead in ms from server timestamps; all processes share the machine's cores")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runners", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument(
        "--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2, 3, 4]
    )
    ap.add_argument(
        "--partitions",
        type=lambda s: s.split(","),
        default=["dirichlet:0.5", "iid", "label_skew:2"],
        help="comma list: iid, dirichlet:ALPHA, label_skew:CLASSES, stratified, ...",
    )
    ap.add_argument(
        "--noop", action="store_true", help="runners send the global model back untrained"
    )
    ap.add_argument(
        "--trainer",
        choices=["numpy", "torch"],
        default="numpy",
        help="the runners' --fl-trainer (torch needs PyTorch installed)",
    )
    ap.add_argument("--kill", type=int, default=0, help="runners to SIGKILL during rounds 5-10")
    ap.add_argument("--min-share", type=float, default=None)
    ap.add_argument("--round-timeout", type=int, default=60)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per session")
    ap.add_argument("--baseline-epochs", type=int, default=250)
    ap.add_argument("--runner-gap", type=float, default=1.0)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--json", type=Path)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_sigterm_handler()
    if args.db == "postgres":
        with temporary_postgres_database() as url:
            out = run_grid(args, url)
    else:
        out = run_grid(args, "")
    report(out, args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

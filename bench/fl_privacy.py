"""Differential privacy in federated learning: accuracy against epsilon on digits.

The set-up of ``bench/fl_digits.py`` (whose helpers this imports): one server, N `parity-runner`
processes, scikit-learn's digits uploaded as CSV, 20 % held out by the server, MLP 64-32-10,
5 local epochs, batch 16, lr 0.1, FedAvg, Dirichlet alpha 0.5. Each session adds
``config.privacy_config.differential_privacy`` with a clip C (``--clip``) and one noise
multiplier z, in central mode (the server clips every update and adds N(0, (zC/m)^2) to the
mean) and in local mode (every runner clips its own update and adds N(0, (zC)^2) before posting);
a plain FedAvg session without DP is the reference. Printed per session: the final and best test
accuracy and the epsilon the server's accountant (RDP) reports after the last round at
``--delta``.

With every runner in every round (q = 1) the epsilons are large: client-level DP needs many
participants and a sampling rate well under 1 to give a meaningful guarantee; this run shows
what the noise costs in accuracy at this scale.

    .venv/bin/python bench/fl_privacy.py                                   # 50 rounds, seeds 0-2
    .venv/bin/python bench/fl_privacy.py --rounds 20 --seeds 0             # quicker
    .venv/bin/python bench/fl_privacy.py --modes central --noise 0.3,1.0 --rounds 10 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ServerProcess, install_sigterm_handler, sign_in, temporary_postgres_database
from fl_digits import Fleet, digits_csv, run_session, session_body, summarize, wait_online


def privacy_config(mode: str, z: float, args: argparse.Namespace) -> dict[str, Any] | None:
    if mode == "none":
        return None
    return {
        "differential_privacy": {
            "mode": mode,
            "noise_multiplier": z,
            "l2_norm_clip": args.clip,
            "delta": args.delta,
        }
    }


def cells(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(mode, z) of every session, the no-DP reference first."""
    out: list[tuple[str, float]] = [("none", 0.0)] if args.reference else []
    return out + [(mode, z) for mode in args.modes for z in args.noise]


def run_grid(args: argparse.Namespace, db_url: str) -> list[dict[str, Any]]:
    data, _x, _y = digits_csv()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="parity-fl-dp-") as tmp:
        env = {"TASK_LEASE_SECONDS": "6", "RUNNER_OFFLINE_TIMEOUT_SECONDS": "8"}
        with ServerProcess(database_url=db_url, env=env) as server:
            client = sign_in(server.base_url)
            headers = {"Authorization": f"Bearer {client.token}"}
            with httpx.Client(
                base_url=server.base_url, headers=headers, timeout=60, trust_env=False
            ) as c:
                cid = c.put("/api/v1/storage/upload", content=data).json()["cid"]
                fleet = Fleet(server.base_url, Path(tmp), False, "0x" + os.urandom(32).hex())
                owner = fleet.start(args.runners)
                try:
                    wait_online(c, owner, args.runners)
                    for seed in args.seeds:
                        for mode, z in cells(args):
                            results.append(one_session(c, fleet, cid, seed, mode, z, args))
                            print(json.dumps(results[-1]), flush=True)
                            time.sleep(args.runner_gap)  # the fleet's claims settle
                finally:
                    fleet.stop()
    return results


def one_session(
    c: httpx.Client,
    fleet: Fleet,
    cid: str,
    seed: int,
    mode: str,
    z: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    body = session_body(cid, args.partition, seed, args, args.runners)
    body["name"] = f"digits dp {mode} z={z:g} seed {seed}"
    dp = privacy_config(mode, z, args)
    if dp is not None:
        body["config"]["privacy_config"] = dp
    run = run_session(c, body, fleet, 0, args.timeout)
    row = {"mode": mode, "noise_multiplier": z, "seed": seed, **summarize(run)}
    privacy = run["session"].get("privacy") or {}
    row["epsilon"] = privacy.get("epsilon")
    row["delta"] = privacy.get("delta")
    last = run["rounds"][-1] if run["rounds"] else {}
    row["clipped_last"] = last.get("dp_num_clipped")
    return row


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nFL digits with differential privacy: {args.runners} runner processes, "
        f"{args.rounds} rounds, {args.partition}, MLP 64-32-10, E={args.epochs} B=16 lr=0.1, "
        f"FedAvg, clip C={args.clip:g}, delta={args.delta:g}, every runner every round (q = 1), "
        f"RDP accountant"
    )
    hdr = (
        f"{'mode':8} {'z':>5} {'seed':>4} {'status':>9} {'final %':>8} {'best %':>7} "
        f"{'epsilon':>10}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        fin = "-" if r["final_acc"] is None else f"{100 * r['final_acc']:.2f}"
        best = "-" if r["best_acc"] is None else f"{100 * r['best_acc']:.2f}"
        if r["mode"] == "none":
            eps = "no DP"
        else:
            eps = "inf" if r["epsilon"] is None else f"{r['epsilon']:.4g}"
        z = "-" if r["mode"] == "none" else f"{r['noise_multiplier']:g}"
        print(f"{r['mode']:8} {z:>5} {r['seed']:>4} {r['status']:>9} {fin:>8} {best:>7} {eps:>10}")
        if r["failure_reason"]:
            print(f"    failure_reason: {r['failure_reason']}")
    print(
        "epsilon: after the last round, for the given delta (inf: z = 0, clipping only). With "
        "10 participants all in every round no epsilon here is a useful guarantee; it takes "
        "many participants and a sampling rate q << 1 (sampling_rate; parity.fl.privacy)."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def floats(s: str) -> list[float]:
        return [float(v) for v in s.split(",")]

    ap.add_argument("--runners", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--partition", default="dirichlet:0.5")
    ap.add_argument("--modes", type=lambda s: s.split(","), default=["central", "local"])
    ap.add_argument("--noise", type=floats, default=[0.0, 0.1, 0.3, 1.0])
    ap.add_argument("--clip", type=float, default=1.0, help="l2_norm_clip C")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--no-reference", dest="reference", action="store_false")
    ap.add_argument("--round-timeout", type=int, default=60)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per session")
    ap.add_argument("--runner-gap", type=float, default=1.0)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    args.min_share = None  # what fl_digits.session_body reads
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_sigterm_handler()
    if args.db == "postgres":
        with temporary_postgres_database() as url:
            results = run_grid(args, url)
    else:
        results = run_grid(args, "")
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

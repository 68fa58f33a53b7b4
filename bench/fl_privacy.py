"""Privacy in federated learning on digits: accuracy against epsilon (differential privacy), and
SecAgg+ against plain FedAvg (``--secagg``).

The set-up of ``bench/fl_digits.py`` (whose helpers this imports): one server, N `parity-runner`
processes, scikit-learn's digits uploaded as CSV, 20 % held out by the server, MLP 64-32-10,
5 local epochs, batch 16, lr 0.1, FedAvg, Dirichlet alpha 0.5.

Differential privacy (the default). Each session adds
``config.privacy_config.differential_privacy`` with a clip C (``--clip``) and one noise
multiplier z, in central mode (the server clips every update and adds N(0, (zC/m)^2) to the
mean) and in local mode (every runner clips its own update and adds N(0, (zC)^2) before posting);
a plain FedAvg session without DP is the reference. Printed per session: the final and best test
accuracy and the epsilon the server's accountant (RDP) reports after the last round at
``--delta``. With every runner in every round (q = 1) the epsilons are large: client-level DP
needs many participants and a sampling rate well under 1 to give a meaningful guarantee; this
run shows what the noise costs in accuracy at this scale.

Secure aggregation (``--secagg``). Per seed, in the same server run and on the same data and
seed: a plain FedAvg session, then a SecAgg+ session
(``config.privacy_config.secure_aggregation``: ``--num-shares`` 5, ``--threshold`` 3,
``--clipping-range`` 8, ``--quantization-range`` 2^20, ``--stage-timeout`` 10 s), both with
``min_share`` 0.8 so a round survives one dropout. One runner is SIGKILLed when the SecAgg+
session reaches ``--kill-round`` (3; ``--kill-in both`` kills the same device in the plain
session too, ``none`` in neither); the fleet is restarted before the next session. Printed: the
final accuracy of both and their difference in points (goal: within 0.5), the median and the
largest round duration (``duration_ms`` of ``GET …/sessions/{id}/metrics``: round open to round
complete, server clock), the ratio SecAgg+ / plain, and the goal ``SecAgg+ median <= 2 x plain
median + stage floor``. The stage floor is 4 stages x 1 request (the runner's POST of its
message, whose answer carries the stage's result) x the HTTP floor, the median of 100
sequential authenticated GETs to the same server: the least four sequential stage exchanges add
to a round. The round the runner dies in waits for a stage deadline (or its task's lease) before
the dropout is recovered, which the largest duration shows and the median leaves out.

    .venv/bin/python bench/fl_privacy.py                                   # 50 rounds, seeds 0-2
    .venv/bin/python bench/fl_privacy.py --rounds 20 --seeds 0             # quicker
    .venv/bin/python bench/fl_privacy.py --modes central --noise 0.3,1.0 --rounds 10 --seeds 0
    .venv/bin/python bench/fl_privacy.py --secagg                          # 50 rounds, seeds 0-2
    .venv/bin/python bench/fl_privacy.py --secagg --rounds 3 --seeds 0     # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import install_sigterm_handler, temporary_postgres_database
from fl_digits import (
    TERMINAL,
    Fleet,
    bench_server,
    digits_csv,
    full_fleet,
    http_floor,
    run_session,
    session_body,
    summarize,
)

STAGES = 4  # advertise_keys, share_keys, masked_input, unmask
REQUESTS_PER_STAGE = 1  # the runner's POST ?wait=, answered with the stage's result


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


def secagg_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "secure_aggregation": {
            "mode": "secagg_plus",
            "num_shares": args.num_shares,
            "reconstruction_threshold": args.threshold,
            "clipping_range": args.clipping_range,
            "quantization_range": args.quantization_range,
            "stage_timeout_seconds": args.stage_timeout,
        }
    }


def cells(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(mode, z) of every session, the no-DP reference first."""
    out: list[tuple[str, float]] = [("none", 0.0)] if args.reference else []
    return out + [(mode, z) for mode in args.modes for z in args.noise]


def run_grid(args: argparse.Namespace, db_url: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with bench_server(digits_csv()[0], db_url, "parity-fl-dp-") as (c, _server, fleet, cid):
        full_fleet(c, fleet, args.runners, 0)
        for seed in args.seeds:
            for mode, z in cells(args):
                results.append(one_session(c, fleet, cid, seed, mode, z, args))
                print(json.dumps(results[-1]), flush=True)
                time.sleep(args.runner_gap)  # the fleet's claims settle
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


# -- SecAgg+ against plain FedAvg ------------------------------------------------------------


def run_killing(
    c: httpx.Client,
    body: dict[str, Any],
    fleet: Fleet,
    victim: str | None,
    at_round: int,
    timeout: float,
) -> dict[str, Any]:
    """One session to its end; ``victim`` (a device) is SIGKILLed once the session's current
    round reaches ``at_round``. The same result as ``fl_digits.run_session``."""
    r = c.post("/api/v1/federated-learning/sessions", json=body)
    r.raise_for_status()
    sid = r.json()["id"]
    t0 = time.monotonic()
    c.post(f"/api/v1/federated-learning/sessions/{sid}/start").raise_for_status()
    session: dict[str, Any] = {}
    killed: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session = c.get(f"/api/v1/federated-learning/sessions/{sid}").json()
        if victim and not killed and session["current_round"] >= at_round:
            fleet.kill(victim)
            killed.append(victim)
        if session["status"] in TERMINAL:
            break
        time.sleep(0.2)
    wall = time.monotonic() - t0
    metrics = c.get(f"/api/v1/federated-learning/sessions/{sid}/metrics").json()["rounds"]
    return {"session": session, "rounds": metrics, "wall_s": wall, "killed": killed}


def secagg_session(
    c: httpx.Client, fleet: Fleet, cid: str, seed: int, secure: bool, args: argparse.Namespace
) -> dict[str, Any]:
    """The plain (``secure`` False) or the SecAgg+ session of one seed, with its round times."""
    full_fleet(c, fleet, args.runners, args.runner_gap)
    kind = "secagg" if secure else "plain"
    body = session_body(cid, args.partition, seed, args, args.runners)
    body["name"] = f"digits {kind} seed {seed}"
    if secure:
        body["config"]["privacy_config"] = secagg_config(args)
    kills = args.kill_in == "both" or args.kill_in == kind
    victim = random.Random(seed).choice(sorted(fleet.procs)) if kills else None
    run = run_killing(c, body, fleet, victim, args.kill_round, args.timeout)
    durations = [r["duration_ms"] for r in run["rounds"] if r.get("duration_ms") is not None]
    row = {"session": kind, "seed": seed, **summarize(run)}
    row["duration_p50_ms"] = statistics.median(durations) if durations else None
    row["duration_max_ms"] = max(durations, default=None)
    row["participants_min"] = min((r["participants"] for r in run["rounds"]), default=None)
    return row


def compare(plain: dict[str, Any], secure: dict[str, Any], stage_floor: float) -> dict[str, Any]:
    """The two goals of one seed: accuracy within 0.5 points, and SecAgg+'s median round within
    twice the plain median plus the stage floor."""
    out: dict[str, Any] = {"seed": plain["seed"], "acc_diff_points": None, "ratio": None}
    if plain["final_acc"] is not None and secure["final_acc"] is not None:
        out["acc_diff_points"] = 100 * (secure["final_acc"] - plain["final_acc"])
    p, s = plain["duration_p50_ms"], secure["duration_p50_ms"]
    if p and s:
        out["ratio"] = s / p
        out["time_bound_ms"] = 2 * p + stage_floor
        out["time_goal_met"] = s <= out["time_bound_ms"]
    if out["acc_diff_points"] is not None:
        out["acc_goal_met"] = abs(out["acc_diff_points"]) <= 0.5
    return out


def run_secagg(args: argparse.Namespace, db_url: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    with bench_server(digits_csv()[0], db_url, "parity-fl-secagg-") as (c, _server, fleet, cid):
        floor = http_floor(c, 100)
        stage_floor = STAGES * REQUESTS_PER_STAGE * floor
        for seed in args.seeds:
            pair = []
            for secure in (False, True):
                pair.append(secagg_session(c, fleet, cid, seed, secure, args))
                rows.append(pair[-1])
                print(json.dumps(pair[-1]), flush=True)
                time.sleep(args.runner_gap)  # the fleet's claims settle
            pairs.append(compare(pair[0], pair[1], stage_floor))
    return {"floor_ms": floor, "stage_floor_ms": stage_floor, "sessions": rows, "pairs": pairs}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def report_secagg(out: dict[str, Any], args: argparse.Namespace) -> None:
    q = args.quantization_range
    levels = f"2^{q.bit_length() - 1}" if q & (q - 1) == 0 else str(q)
    killed = {"secagg": "the SecAgg+ session", "both": "both sessions", "none": "neither session"}
    print(
        f"\nFL digits, SecAgg+ against plain FedAvg: {args.runners} runner processes, "
        f"{args.rounds} rounds, {args.partition}, MLP 64-32-10, E={args.epochs} B=16 lr=0.1, "
        f"min_share {args.min_share:g}; SecAgg+ num_shares {args.num_shares}, threshold "
        f"{args.threshold}, clipping_range {args.clipping_range:g}, quantization_range {levels}, "
        f"stage timeout {args.stage_timeout:g} s; one runner SIGKILLed at round "
        f"{args.kill_round} of {killed[args.kill_in]}; db={args.db}"
    )
    hdr = (
        f"{'session':8} {'seed':>4} {'status':>9} {'final %':>8} {'best %':>7} {'rounds':>6} "
        f"{'p50 ms':>7} {'max ms':>7} {'min k':>5} {'killed':>7} {'wall s':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in out["sessions"]:
        print(
            f"{r['session']:8} {r['seed']:>4} {r['status']:>9} {_pct(r['final_acc']):>8} "
            f"{_pct(r['best_acc']):>7} {r['rounds']:>6} {_ms(r['duration_p50_ms']):>7} "
            f"{_ms(r['duration_max_ms']):>7} {r['participants_min'] or '-'!s:>5} "
            f"{','.join(r['killed']) or '-':>7} {r['wall_s']:>7}"
        )
        if r["failure_reason"]:
            print(f"    failure_reason: {r['failure_reason']}")
    print(
        f"HTTP floor {out['floor_ms']:.1f} ms; stage floor = {STAGES} stages x "
        f"{REQUESTS_PER_STAGE} requests x HTTP floor = {out['stage_floor_ms']:.1f} ms"
    )
    for p in out["pairs"]:
        diff = "-" if p["acc_diff_points"] is None else f"{p['acc_diff_points']:+.2f}"
        ratio = "-" if p["ratio"] is None else f"{p['ratio']:.2f}"
        acc_goal = {True: "met", False: "NOT met"}.get(p.get("acc_goal_met"), "-")
        time_goal = {True: "met", False: "NOT met"}.get(p.get("time_goal_met"), "-")
        bound = _ms(p.get("time_bound_ms"))
        print(
            f"seed {p['seed']}: final accuracy SecAgg+ - plain = {diff} points (goal within 0.5: "
            f"{acc_goal}); median round SecAgg+ / plain = {ratio} (goal SecAgg+ p50 <= 2 x "
            f"plain p50 + stage floor = {bound} ms: {time_goal})"
        )
    print(
        "round durations: open to complete, server clock (GET …/metrics duration_ms); max shows "
        "the round the runner died in; all processes share the machine's cores"
    )


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
        if r["mode"] == "none":
            eps = "no DP"
        else:
            eps = "inf" if r["epsilon"] is None else f"{r['epsilon']:.4g}"
        z = "-" if r["mode"] == "none" else f"{r['noise_multiplier']:g}"
        print(
            f"{r['mode']:8} {z:>5} {r['seed']:>4} {r['status']:>9} {_pct(r['final_acc']):>8} "
            f"{_pct(r['best_acc']):>7} {eps:>10}"
        )
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
    sa = ap.add_argument_group("SecAgg+ against plain FedAvg")
    sa.add_argument("--secagg", action="store_true", help="run this comparison, not the DP grid")
    sa.add_argument("--num-shares", type=int, default=5, help="odd")
    sa.add_argument("--threshold", type=int, default=3, help="reconstruction_threshold")
    sa.add_argument("--clipping-range", type=float, default=8.0)
    sa.add_argument("--quantization-range", type=int, default=2**20)
    sa.add_argument("--stage-timeout", type=float, default=10.0, help="stage_timeout_seconds")
    sa.add_argument("--kill-round", type=int, default=3, help="round the runner is SIGKILLed in")
    sa.add_argument("--kill-in", choices=["secagg", "both", "none"], default="secagg")
    sa.add_argument(
        "--min-share", type=float, default=None, help="default: none for DP, 0.8 with --secagg"
    )
    ap.add_argument("--round-timeout", type=int, default=60)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per session")
    ap.add_argument("--runner-gap", type=float, default=1.0)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.secagg and args.min_share is None:
        args.min_share = 0.8  # fl_digits.session_body reads it: a round survives one dropout
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_sigterm_handler()
    run = run_secagg if args.secagg else run_grid
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(temporary_postgres_database()) if args.db == "postgres" else ""
        out: Any = run(args, url)
    if args.secagg:
        report_secagg(out, args)
    else:
        report(out, args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

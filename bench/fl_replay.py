"""The arithmetic of a `fl_digits.py` session, replayed in this process without the server.

The same steps the server and its runners take for one session, called directly: the digits CSV
read as the server reads it, the held-out split and partitions of `plan_partitions`, the initial
model of `init_weights(session seed)`, each participant's `train_local` with the shuffle seed
`task_seed(session seed, round, participant index)`, FedAvg over the updates, and the server's
evaluation on the held-out rows after every round. A session over real runners gives the same
accuracy per round (its numbers depend on nothing the coordination does), so this answers
"how does this partitioning do over many seeds" in seconds per seed instead of a fleet of
processes. Printed per seed: final and best accuracy, the first round at >= 95 %, beside the
centralized baseline (`fl_digits.centralized_baseline`) of the same seed.

    .venv/bin/python bench/fl_replay.py --partitions dirichlet:0.5 --seeds 0-9
    .venv/bin/python bench/fl_replay.py --partitions iid,label_skew:2 --seeds 0-4 --rounds 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from fl_digits import centralized_baseline, digits_csv, session_body

from parity.core.fl.aggregation import fedavg
from parity.core.fl.model import evaluate, init_weights, parse_model_spec
from parity.core.fl.train import parse_train_config, train_local
from parity.fl.datasets import load_dataset, plan_partitions
from parity.fl.rounds import task_seed


def seeds_of(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def replay(
    data: bytes, strategy: str, seed: int, args: argparse.Namespace
) -> tuple[list[float], int]:
    """Test accuracy after each round of one session, and its number of participants."""
    body = session_body("replay", strategy, seed, args, args.runners)
    training, config = body["training_data"], body["config"]
    x, y, _ = load_dataset(data, training["data_format"])
    plan = plan_partitions(
        x,
        y,
        strategy=training["split_strategy"],
        metadata=training["metadata"],
        num_participants=args.runners,
        seed=seed,
        test_split=training["test_split"],
    )
    assert plan.test is not None
    spec = parse_model_spec(body["model_type"], config["model_config"])
    train = parse_train_config(config)
    weights = init_weights(spec, seed)
    accuracies = []
    for number in range(1, args.rounds + 1):
        updates = [
            (r.weights, r.num_examples)
            for r in (
                train_local(spec, weights, px, py, train, task_seed(seed, number, index))
                for index, (px, py) in enumerate(plan.participants)
            )
        ]
        weights = fedavg(updates)
        accuracies.append(evaluate(spec, weights, *plan.test).accuracy)
    return accuracies, len(plan.participants)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--partitions", default="dirichlet:0.5")
    p.add_argument("--seeds", default="0-4", help="e.g. 0-9 or 0,3,7")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--runners", type=int, default=10)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--baseline-epochs", type=int, default=250)
    args = p.parse_args()
    args.round_timeout, args.min_share = 60, None  # what session_body reads
    data, x, y = digits_csv()
    print(
        f"FL replay: {args.runners} participants, {args.rounds} rounds, MLP 64-32-10, "
        f"E={args.epochs} B=16 lr=0.1, FedAvg (the arithmetic of fl_digits.py, in process)"
    )
    print(f"{'partition':16s} {'seed':>4s} {'final %':>8s} {'best %':>7s} {'to 95%':>6s} "
          f"{'central %':>9s} {'ratio':>6s} {'s':>5s}")  # fmt: skip
    for strategy in args.partitions.split(","):
        finals = []
        for seed in seeds_of(args.seeds):
            started = time.perf_counter()
            acc, _ = replay(data, strategy, seed, args)
            central = centralized_baseline(x, y, seed, args.baseline_epochs)
            first = next((i + 1 for i, a in enumerate(acc) if a >= 0.95), None)
            finals.append(acc[-1])
            print(
                f"{strategy:16s} {seed:4d} {100 * acc[-1]:8.2f} {100 * max(acc):7.2f} "
                f"{first if first else '-':>6} {100 * central:9.2f} {acc[-1] / central:6.3f} "
                f"{time.perf_counter() - started:5.1f}",
                flush=True,
            )
        print(
            f"{strategy:16s} mean {100 * statistics.mean(finals):.2f} %, "
            f"min {100 * min(finals):.2f} %, sd {100 * float(np.std(finals)):.2f} "
            f"over {len(finals)} seeds"
        )


if __name__ == "__main__":
    main()

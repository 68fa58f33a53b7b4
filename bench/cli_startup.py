"""Command line start-up: wall time of `parity-server` and `parity-runner` commands that answer
without a server, beside the floor of any Typer command line in the same run.

Every command runs as a fresh interpreter (`python -c` with the tree's `src` first on the path,
so any checkout can be measured with this venv: `--tree` a `git worktree` of another commit),
`--repeat` times after one unmeasured warm-up run, alternating the commands so a busy moment
hits all of them alike. Printed per command: median and min wall ms, and the median's ratio to
the floor: `import typer` plus an empty command in a fresh interpreter (what a Typer CLI costs
before its own code).

    .venv/bin/python bench/cli_startup.py [--repeat 15] [--tree PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

SERVER = "from parity.cli.main import main; main()"
RUNNER = "from parity.agent.cli import main; main()"
FLOOR = "import typer\napp = typer.Typer()\n@app.command()\ndef hello() -> None:\n    pass\napp()"

COMMANDS: list[tuple[str, str, list[str]]] = [
    ("python -c pass", "pass", []),
    ("floor: empty Typer command", FLOOR, []),
    ("parity-server version", SERVER, ["version"]),
    ("parity-server --help", SERVER, ["--help"]),
    ("parity-server llm models --help", SERVER, ["llm", "models", "--help"]),
    ("parity-server storage put --help", SERVER, ["storage", "put", "--help"]),
    ("parity-runner --help", RUNNER, ["--help"]),
]


def run_once(tree: Path, code: str, args: list[str]) -> float:
    prelude = f"import sys; sys.path.insert(0, {str(tree / 'src')!r})\n"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", prelude + code, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{args}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--tree", type=Path, default=REPO_ROOT, help="checkout to measure")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    tree = args.tree.resolve()
    for _, code, argv in COMMANDS:
        run_once(tree, code, argv)  # warm the page cache and the bytecode cache
    times: dict[str, list[float]] = {name: [] for name, _, _ in COMMANDS}
    for _ in range(args.repeat):
        for name, code, argv in COMMANDS:
            times[name].append(run_once(tree, code, argv))
    floor = statistics.median(times["floor: empty Typer command"])
    rows: list[dict[str, Any]] = []
    print(f"cli_startup: {tree}, {args.repeat} runs each, wall ms")
    for name, values in times.items():
        med = statistics.median(values)
        row = {"command": name, "median_ms": round(med, 1), "min_ms": round(min(values), 1),
               "ratio_to_floor": round(med / floor, 2)}  # fmt: skip
        rows.append(row)
        print(f"  {name:36s} median {med:7.1f}  min {min(values):7.1f}  x floor {med / floor:5.2f}")
    if args.json:
        args.json.write_text(json.dumps({"tree": str(tree), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Running README.md's walk-throughs as written: the blocks, their steps and expectations, one
shell whose exported variables carry from step to step, and the commands that keep running.

A walk-through block is a fenced ``bash`` block right after ``<!-- walkthrough: NAME -->``. In
it, each command (with its ``\\`` continuation lines) is a step; ``# -> TEXT`` lines after a
step are what it prints (``…`` stands for anything); other comment lines are prose."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BLOCK = re.compile(r"<!-- walkthrough: ([a-z0-9-]+) -->\n```(?:bash|sh)\n(.*?)\n```", re.S)
EXPECT = "# -> "

# Commands that keep running until Ctrl-C: started in the background; a second one of the same
# kind replaces the first, as a user stops one before starting another.
LONG_RUNNING: dict[str, re.Pattern[str]] = {
    "server": re.compile(r"parity-server(\s+server)?\s*(#.*)?$"),
    "dev-chain": re.compile(r"parity-server\s+dev-chain\b"),
    "runner": re.compile(r"parity-runner(?!\s+status\b)(\s|$)"),
}
# Steps that only read: asked again until their expected output is there (the server finishes
# work in the background: runners, event visibility, settlement).
READ_ONLY = re.compile(
    r"(curl\s(?!.*\s-X\s)|parity-server\s+(balance|token|storage\s+(get|info))\b"
    r"|parity-runner\s+status\b)"
)


@dataclass
class Step:
    block: str
    line: int  # in README.md, for messages
    command: str
    expect: list[str] = field(default_factory=list)

    @property
    def head(self) -> str:
        """The command without its continuation lines and trailing comment."""
        return self.command.split("\n", 1)[0].split(" #", 1)[0].strip()

    def kind(self) -> str | None:
        return next((k for k, p in LONG_RUNNING.items() if p.match(self.head)), None)

    @property
    def read_only(self) -> bool:
        return bool(READ_ONLY.match(self.head))


@dataclass
class Block:
    name: str
    steps: list[Step]


def parse(readme: str) -> list[Block]:
    blocks = []
    for match in BLOCK.finditer(readme):
        first = readme.count("\n", 0, match.start(2)) + 1
        lines = match.group(2).split("\n")
        steps: list[Step] = []
        i = 0
        while i < len(lines):
            text, where = lines[i].strip(), first + i
            if text.startswith(EXPECT):
                assert steps, f"README.md:{where}: an expected output before any command"
                steps[-1].expect.append(text[len(EXPECT) :])
            elif text and not text.startswith("#"):
                command = lines[i]
                while command.rstrip().endswith("\\"):
                    i += 1
                    command += "\n" + lines[i]
                assert "<<" not in command, f"README.md:{where}: no here-documents in walk-throughs"
                steps.append(Step(match.group(1), where, command.strip()))
            i += 1
        blocks.append(Block(match.group(1), steps))
    return blocks


def expectation(text: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in text.split("…")), re.S)


def missing_output(expected: list[str], output: str) -> list[str]:
    return [e for e in expected if not expectation(e).search(output)]


class Shell:
    """``bash`` per step, sourcing the variables the steps before exported (``set -a``: every
    assignment is exported, as in one interactive shell) and saving them afterwards."""

    def __init__(self, cwd: Path, state: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.state = state
        state.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))

    def script(self, command: str, *, background: bool = False) -> str:
        state = shlex.quote(str(self.state))
        if background:
            return f"set -a\nsource {state}\nset +a\nexec {command}\n"
        return (
            f"set -a\nsource {state}\n{command}\n__rc=$?\nset +a\n"
            f"export -n __rc\nexport -p > {state}\nexit $__rc\n"
        )

    def run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", self.script(command)],
            cwd=self.cwd,
            env={},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def variable(self, name: str) -> str | None:
        done = self.run(f'printf %s "${{{name}:-}}"', timeout=10)
        return done.stdout or None


@dataclass
class Running:
    kind: str
    command: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Background:
    """The walk-through's long-running commands, one per kind, each in its own process group."""

    def __init__(self, shell: Shell, logs: Path) -> None:
        self.shell = shell
        self.logs = logs
        self.running: dict[str, Running] = {}
        self.started = 0

    def start(self, kind: str, command: str) -> Running:
        self.stop(kind)
        self.started += 1
        log_path = self.logs / f"{self.started:02d}-{kind}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["bash", "-c", self.shell.script(command, background=True)],
                cwd=self.shell.cwd,
                env={},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running[kind] = Running(kind, command, proc, log_path)
        return self.running[kind]

    def stop(self, kind: str, timeout: float = 30.0) -> None:
        running = self.running.pop(kind, None)
        if running is None or running.proc.poll() is not None:
            return
        os.killpg(running.proc.pid, signal.SIGTERM)
        try:
            running.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(running.proc.pid, signal.SIGKILL)
            running.proc.wait(timeout=10)

    def stop_all(self) -> None:
        for kind in ("runner", "server", "dev-chain"):
            self.stop(kind)
        for kind in list(self.running):
            self.stop(kind)

    def logs_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {r.kind}: {r.command}\n{r.log()[-chars:]}" for r in self.running.values()
        )


def wait_until(
    ready: Callable[[], bool], running: Running, what: str, timeout: float = 120.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if running.proc.poll() is not None:
            raise AssertionError(f"{what} exited ({running.proc.returncode}):\n{running.log()}")
        time.sleep(0.2)
    raise AssertionError(f"{what} not ready in {timeout:.0f} s:\n{running.log()[-4000:]}")


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False

"""README.md's walk-throughs, word for word, as a new user runs them: every block marked
``<!-- walkthrough: NAME -->``, in file order, in one shell in a temporary HOME, against a real
server process on the embedded default and on PostgreSQL (the ``postgresql`` block first, then
the rest). Each step must exit 0 and print what its ``# -> `` lines say; commands that keep
running are started in the background and waited for.

What the test changes, and why (README's Development section says the same):

* port 8080 becomes a free port (``SERVER_PORT`` in the environment, and the URLs in commands),
  and ``dev-chain`` gets a free ``--port``: other tests and servers may hold the defaults;
* ``source .venv/bin/activate`` runs a stand-in that puts this interpreter's scripts on PATH
  (the working directory is a temporary one, and PATH starts without them);
* ``make contracts`` becomes the ``npm ci`` the chain tests run (``tests/chain_support.py``);
  without Node.js/npm or anvil the chain blocks are skipped with the reason printed;
* ``<a printed test key>`` is the key ``dev-chain`` printed for account 1;
* on PostgreSQL, ``export DATABASE_URL=…`` names a fresh test database;
* the keystore password prompt is answered through ``PARITY_KEYSTORE_PASSWORD``.
"""

from __future__ import annotations

import os
import re
import shutil
import sysconfig
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chain_support import REPO, anvil_binary
from tests.e2e.procs import free_port
from tests.e2e.walkthrough import (
    Background,
    Block,
    Shell,
    Step,
    healthy,
    missing_output,
    parse,
    wait_until,
)

pytestmark = pytest.mark.slow

README = REPO / "README.md"
PASSWORD = "walk-through password"
CHAIN_BLOCKS = frozenset({"chain", "paid-work"})
STEP_TIMEOUT_S = 180.0
RETRY_FOR_S = 90.0
TEST_KEY = re.compile(r"\(1\)\s+0x[0-9a-fA-F]{40}\s+key\s+(0x[0-9a-fA-F]{64})")


def test_readme_walkthrough_blocks_are_found_and_well_formed():
    blocks = parse(README.read_text())
    names = [b.name for b in blocks]
    for name in ("quickstart", "postgresql", "bad-input", "compute", "storage", "chain"):
        assert name in names, f"README.md lost its `{name}` walk-through"
    assert len(set(names)) == len(names), f"walk-through names repeat: {names}"
    for block in blocks:
        assert block.steps, f"walk-through {block.name} has no commands"
    quickstart = blocks[names.index("quickstart")]
    assert quickstart.steps[0].command == "source .venv/bin/activate"
    assert quickstart.steps[1].kind() == "server"


@dataclass
class Walk:
    """One walk-through run: its shell, background commands and the test's substitutions."""

    shell: Shell
    background: Background
    port: int
    chain_port: int
    database_url: str | None
    anvil: Path | str | None = None  # the binary, or why there is none (after make contracts)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def local(self, text: str) -> str:
        return re.sub(r"\b(127\.0\.0\.1|localhost):8080\b", f"127.0.0.1:{self.port}", text)

    def rewrite(self, step: Step) -> str:
        command = self.local(step.command)
        if step.kind() == "dev-chain" and "--port" not in command:
            command = command.replace("dev-chain", f"dev-chain --port {self.chain_port}", 1)
        if "<a printed test key>" in command:
            running = self.background.running.get("dev-chain")
            found = TEST_KEY.search(running.log()) if running else None
            assert found, f"README.md:{step.line}: no test key printed by dev-chain to use"
            command = command.replace("<a printed test key>", found.group(1))
        if self.database_url is not None:
            command = re.sub(
                r"^export DATABASE_URL=\S+", f"export DATABASE_URL={self.database_url}", command
            )
        return command

    def failure(self, step: Step, why: str, output: str = "") -> str:
        return (
            f"README.md:{step.line} ({step.block}): {why}\n$ {step.command}\n{output[-4000:]}\n"
            f"{self.background.logs_tail()}"
        )

    def start(self, step: Step, kind: str) -> None:
        running = self.background.start(kind, self.rewrite(step))
        if kind == "server":
            wait_until(lambda: healthy(self.url), running, "parity-server server")
            # Announced once listening, with where (README: Quick start).
            assert f'"url": "{self.url}"' in running.log(), running.log()
            assert f'"docs_url": "{self.url}/docs"' in running.log(), running.log()
        elif kind == "runner":
            wait_until(lambda: "runner_registered" in running.log(), running, "parity-runner")
        else:
            wait_until(lambda: TEST_KEY.search(running.log()) is not None, running, "dev-chain")
            env_file = self.shell.cwd / ".env"
            wait_until(
                lambda: env_file.exists() and "STAKE_WALLET" in env_file.read_text(),
                running,
                "dev-chain's .env",
            )

    def make_contracts(self) -> None:
        """`make contracts`, without touching the repository's committed artifacts: the
        node_modules install the chain tests do; then anvil is found through ANVIL_BIN."""
        self.anvil = anvil_binary()
        if isinstance(self.anvil, Path):
            self.shell.run(f"export ANVIL_BIN={self.anvil}", timeout=10)

    def run(self, step: Step) -> None:
        print(f"[{step.block}] $ {step.command}", flush=True)
        if step.command.startswith("make "):
            assert step.command.split("#")[0].strip() == "make contracts", self.failure(
                step, "the test runs no make target but `make contracts`"
            )
            self.make_contracts()
            return
        kind = step.kind()
        if kind is not None:
            self.start(step, kind)
            return
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            done = self.shell.run(self.rewrite(step), timeout=STEP_TIMEOUT_S)
            output = done.stdout + "\n" + done.stderr
            if done.returncode != 0:
                raise AssertionError(self.failure(step, f"exit status {done.returncode}", output))
            missing = missing_output([self.local(e) for e in step.expect], output)
            if not missing:
                return
            if not step.read_only or time.monotonic() > deadline:
                raise AssertionError(
                    self.failure(step, f"expected output missing: {missing}", output)
                )
            time.sleep(1)


def _stand_in_venv(cwd: Path) -> None:
    scripts = Path(sysconfig.get_path("scripts"))
    assert (scripts / "parity-server").exists(), f"parity-server is not installed in {scripts}"
    activate = cwd / ".venv" / "bin" / "activate"
    activate.parent.mkdir(parents=True)
    activate.write_text(
        "# stand-in for the repository's .venv/bin/activate: this test's interpreter\n"
        f'export VIRTUAL_ENV="{scripts.parent}"\nexport PATH="{scripts}:$PATH"\n'
    )


def _prerequisites() -> None:
    """What README asks a reader to have; without it the walk-through cannot run here."""
    for tool in ("bash", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"the README walk-through needs {tool}")
    if os.geteuid() != 0 and shutil.which("bwrap") is None:
        pytest.skip("the runner's command sandbox needs bubblewrap (bwrap) or root (README)")


def _walk(tmp_path: Path, database_url: str | None) -> None:
    _prerequisites()
    blocks = parse(README.read_text())
    order: list[Block] = [b for b in blocks if b.name != "postgresql"]
    if database_url is not None:
        order = [b for b in blocks if b.name == "postgresql"] + order
    home, cwd, logs = tmp_path / "home", tmp_path / "work", tmp_path / "logs"
    for d in (home, cwd, logs):
        d.mkdir()
    _stand_in_venv(cwd)
    scripts = sysconfig.get_path("scripts")
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != scripts
    )
    port = free_port()
    shell = Shell(
        cwd,
        tmp_path / "shell-state.sh",
        {
            "HOME": str(home),
            "PATH": path,
            "LANG": "C.UTF-8",
            "SERVER_PORT": str(port),
            "PARITY_KEYSTORE_PASSWORD": PASSWORD,
        },
    )
    walk = Walk(shell, Background(shell, logs), port, free_port(), database_url)
    try:
        for block in order:
            if block.name in CHAIN_BLOCKS and isinstance(walk.anvil, str):
                continue
            for step in block.steps:
                walk.run(step)
                if block.name in CHAIN_BLOCKS and isinstance(walk.anvil, str):
                    why = f"README chain walk-through skipped: {walk.anvil}"
                    print(why, flush=True)
                    warnings.warn(why, stacklevel=1)
                    break
        _runner_behaves_as_described(walk, postgresql=database_url is not None)
    finally:
        walk.background.stop_all()


def _runner_behaves_as_described(walk: Walk, *, postgresql: bool) -> None:
    """What README's parity-runner section says beyond the steps' output: outside the embedded
    mode the loopback push webhook is refused and the runner pulls, saying so once; SIGTERM
    ends with the runner telling the server it is offline."""
    runner = walk.background.running["runner"]
    refused = runner.log().count("push_refused_pulling_instead")
    assert refused == (1 if postgresql else 0), runner.log()
    walk.background.stop("runner")
    assert runner.proc.returncode == 0, runner.log()
    assert "runner_offline_reported" in runner.log(), runner.log()


def test_readme_walkthrough_on_the_embedded_default(tmp_path: Path):
    _walk(tmp_path, None)


@pytest.mark.postgres_only
def test_readme_walkthrough_on_postgresql(tmp_path: Path, fresh_database_url: str):
    _walk(tmp_path, fresh_database_url)

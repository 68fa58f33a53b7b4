"""Help read through a pipe (CI logs, `| less`, a file) is not cut at 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from parity.cli import help_width

RUNNER = "from parity.agent.cli import main; main()"
SERVER = "from parity.cli.main import main; main()"


def _help(code: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    done = subprocess.run(
        [sys.executable, "-c", code, *args, "--help"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_runner_help_in_a_pipe_shows_whole_option_and_variable_names() -> None:
    out = _help(RUNNER)
    assert "…" not in out
    for whole in ("--max-concurrent-tasks", "RUNNER_SERVER_URL", "--push-public-url", "--no-push"):
        assert whole in out


def test_server_help_in_a_pipe_is_not_cut() -> None:
    out = _help(SERVER, "storage", "put")
    assert "…" not in out
    assert "--keystore" in out and "PARITY_TOKEN" in out


def test_columns_still_decides_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(help_width.typer.rich_utils, "MAX_WIDTH", None)
    help_width.widen_help_without_terminal({"COLUMNS": "80"})
    assert help_width.typer.rich_utils.MAX_WIDTH is None

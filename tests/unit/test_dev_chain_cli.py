"""`parity-server dev-chain` refuses what would go wrong before it starts anvil: a port another
node already listens on (its answers would pass for our anvil's, and the contracts would be
deployed onto that node) and an --env-file that cannot be written."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from parity.chain.devchain import Anvil, PortInUseError
from parity.cli.chain import register_chain_commands


@pytest.fixture
def listening() -> Iterator[int]:
    """A loopback port something already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.fixture
def fake_anvil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ANVIL_BIN: a script that only leaves a mark when it is started."""
    script = tmp_path / "anvil"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path / 'started'}\n")
    script.chmod(0o755)
    monkeypatch.setenv("ANVIL_BIN", str(script))
    return tmp_path / "started"


def _dev_chain(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    register_chain_commands(app)
    app.command("version")(lambda: None)  # two commands: typer keeps the command name
    result = CliRunner().invoke(app, ["dev-chain", *args])
    return result.exit_code, result.output


def test_anvil_does_not_start_on_a_port_in_use(listening: int, fake_anvil: Path):
    with pytest.raises(PortInUseError, match=f"port {listening} .* already in use"):
        Anvil(Path("/bin/true"), port=listening).start()


def test_dev_chain_on_a_port_in_use_says_so_and_writes_nothing(
    listening: int, fake_anvil: Path, tmp_path: Path
):
    env_file = tmp_path / ".env"
    code, out = _dev_chain("--port", str(listening), "--env-file", str(env_file))
    assert code == 1
    assert f"port {listening} on 127.0.0.1 is already in use" in out
    assert "--port" in out
    assert not fake_anvil.exists() and not env_file.exists()


def test_dev_chain_refuses_an_env_file_in_a_missing_directory(fake_anvil: Path, tmp_path: Path):
    code, out = _dev_chain("--env-file", str(tmp_path / "nodir" / ".env"))
    assert code == 1
    assert f"--env-file: no such directory: {tmp_path / 'nodir'}" in out
    assert not fake_anvil.exists()


def test_dev_chain_refuses_an_env_file_that_is_a_directory(fake_anvil: Path, tmp_path: Path):
    code, out = _dev_chain("--env-file", str(tmp_path))
    assert code == 1
    assert f"--env-file: {tmp_path} is a directory" in out
    assert not fake_anvil.exists()

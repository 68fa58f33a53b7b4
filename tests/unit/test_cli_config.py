"""`parity-server`'s settings file and its messages: `--config` before the command applies to
the command, `migrate --check` writes nothing, warnings read as one line, and a runner whose
server cannot be reached says which server and where its URL came from."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

SERVER = "from parity.cli.main import main; main()"
RUNNER = "from parity.agent.cli import main; main()"


def _run(code: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PARITY_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_config_before_the_command_is_the_commands_settings_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    chosen = tmp_path / "chosen.db"
    (tmp_path / "a.env").write_text(f"DATABASE_URL=sqlite+aiosqlite:///{chosen}\n")
    done = _run(
        SERVER, "--config", "a.env", "migrate", env={"PARITY_HOME": str(home)}, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert chosen.is_file()
    assert not (home / "parity.db").exists()


def test_config_naming_no_file_stops_the_command(tmp_path: Path) -> None:
    for args in (["--config", "typo.env", "migrate"], ["migrate", "--config", "typo.env"]):
        done = _run(SERVER, *args, env={"PARITY_HOME": str(tmp_path / "h")}, cwd=tmp_path)
        assert done.returncode == 2
        assert "--config names 'typo.env': no such file" in done.stderr
    assert not (tmp_path / "h").exists()


def test_migrate_check_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    done = _run(SERVER, "migrate", "--check", env={"PARITY_HOME": str(home)}, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.startswith("current: none  head: ")
    assert not home.exists()


def test_a_settings_warning_is_one_plain_line(tmp_path: Path) -> None:
    env = {
        "PARITY_HOME": str(tmp_path / "h"),
        "FILECOIN_CHAIN_ID": "5",
        "BLOCKCHAIN_CHAIN_ID": "6",
    }
    done = _run(SERVER, "migrate", "--check", env=env, cwd=tmp_path)
    assert (
        "warning: FILECOIN_CHAIN_ID and BLOCKCHAIN_CHAIN_ID are both set and differ; "
        "using FILECOIN_CHAIN_ID\n"
    ) in done.stderr
    assert "UserWarning" not in done.stderr


def test_runner_commands_name_the_unreachable_server_and_its_source(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"PARITY_HOME": str(home), "PARITY_KEYSTORE_PASSWORD": "pw"}
    made = _run(SERVER, "auth", "--new", env=env, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    url = f"http://127.0.0.1:{_closed_port()}"
    for args in (
        ["status", "--server", url],
        ["--server", url, "--no-push", "--wait-for-server", "0"],
    ):
        done = _run(RUNNER, *args, env=env, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert f"error: cannot reach {url} (from --server/RUNNER_SERVER_URL): " in done.stderr
        assert "Traceback" not in done.stderr


def test_client_commands_name_the_unreachable_server_and_its_source(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    env = {"PARITY_HOME": str(tmp_path / "home"), "PARITY_SERVER_URL": url}
    cid = "bafkreie5sn5r5bsykbpcz645iivozoz6kymqiv4lxfkfwgvnc744prrire"
    for args in (
        ["llm", "models", "--token", "t"],
        ["fl", "list", "--token", "t"],
        ["storage", "info", cid, "--token", "t"],
    ):
        done = _run(SERVER, *args, env=env, cwd=tmp_path)
        assert done.returncode == 1, (args, done.stderr)
        assert f"error: cannot reach {url} (from PARITY_SERVER_URL): " in done.stderr, args
    done = _run(
        SERVER, "storage", "info", cid, "--token", "t", "--server", url, env={}, cwd=tmp_path
    )
    assert f"error: cannot reach {url} (from --server): " in done.stderr

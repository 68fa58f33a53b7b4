"""A database that cannot be reached or refuses the login stops `parity-server server`,
`migrate` and `migrate --check` with one line: which database (never its password), the
settings it came from and the driver's reason; exit 1, no traceback.

The unknown role and database need the PostgreSQL server (PARITY_TEST_DB=postgres); a closed
port, an IPv6 host and an SQLite file that cannot be opened need no database server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

SERVER = "from parity.cli.main import main; main()"
PG_ADMIN_URL = os.environ.get(
    "PARITY_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
PASSWORD = "Sekr1t-pw@:/x"  # quoted in the URL; must not be printed, quoted or not
COMMANDS = [["server"], ["migrate"], ["migrate", "--check"], ["storage", "gc"]]


def _free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _parity_server(args: list[str], env: dict[str, str], tmp: Path) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PARITY_", "DATABASE_"))}
    settings = {
        "PARITY_HOME": str(tmp / "home"),
        "PARITY_CONFIG_PATH": os.devnull,  # no .env
        "SERVER_PORT": str(_free_port()),  # a busy 8080 must not be what stops the server
        "LOG_FORMAT": "console",
    }
    done = subprocess.run(
        [sys.executable, "-c", SERVER, *args],
        env={**clean, **settings, **env},
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def _one_error_line(rc: int, out: str, *expected: str) -> str:
    assert rc == 1, out
    assert "Traceback" not in out, out
    for secret in (PASSWORD, "Sekr1t", "Sekr1t-pw%40"):
        assert secret not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert len(out.strip().splitlines()) == 1, out
    line = errors[0]
    assert line.startswith("error: cannot connect to the database "), line
    for text in expected:
        assert text in line, line
    return line


def _pg() -> tuple[str, int]:
    parts = urlsplit(PG_ADMIN_URL)
    assert parts.hostname is not None
    return parts.hostname, parts.port or 5432


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@pytest.mark.db
@pytest.mark.postgres_only
@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_an_unknown_role_is_one_line_naming_the_database_and_database_url(
    tmp_path: Path, args: list[str]
) -> None:
    host, port = _pg()
    role = f"nosuchuser_{uuid.uuid4().hex[:8]}"
    url = f"postgresql+asyncpg://{role}:Sekr1t-pw%40%3A%2Fx@{_netloc(host, port)}/postgres"
    rc, out = _parity_server(args, {"DATABASE_URL": url}, tmp_path)
    _one_error_line(
        rc,
        out,
        f"postgresql://{role}@{_netloc(host, port)}/postgres (from DATABASE_URL): ",
        f'role "{role}" does not exist',
    )


@pytest.mark.db
@pytest.mark.postgres_only
@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_an_unknown_database_is_one_line_naming_the_database_parts(
    tmp_path: Path, args: list[str]
) -> None:
    host, port = _pg()
    name = f"nope_db_{uuid.uuid4().hex[:8]}"
    env = {
        "DATABASE_HOST": host,
        "DATABASE_PORT": str(port),
        "DATABASE_PASSWORD": PASSWORD,  # trust auth ignores it; it is still never printed
        "DATABASE_NAME": name,
    }
    rc, out = _parity_server(args, env, tmp_path)
    _one_error_line(
        rc,
        out,
        f"postgresql://postgres@{_netloc(host, port)}/{name} "
        "(from DATABASE_HOST, DATABASE_PORT, DATABASE_PASSWORD, DATABASE_NAME): ",
        f'database "{name}" does not exist',
    )


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_closed_port_says_it_was_the_database_and_which_settings(
    tmp_path: Path, args: list[str]
) -> None:
    port = _free_port()
    env = {"DATABASE_HOST": "127.0.0.1", "DATABASE_PORT": str(port), "DATABASE_PASSWORD": PASSWORD}
    rc, out = _parity_server(args, env, tmp_path)
    _one_error_line(
        rc,
        out,
        f"postgresql://postgres@127.0.0.1:{port}/parity "
        "(from DATABASE_HOST, DATABASE_PORT, DATABASE_PASSWORD): ",
        "Connect call failed",
    )


@pytest.mark.parametrize("host", ["::1", "[::1]"])
@pytest.mark.parametrize("args", [["server"], ["migrate"]], ids=" ".join)
def test_an_ipv6_database_host_is_connected_to_not_a_crash(
    tmp_path: Path, args: list[str], host: str
) -> None:
    # Nothing listens on the port: the connection is attempted (and refused, or IPv6 is off),
    # where "::1" used to stop start-up with "Port could not be cast to integer value".
    port = _free_port()
    env = {"DATABASE_HOST": host, "DATABASE_PORT": str(port), "DATABASE_NAME": "x"}
    rc, out = _parity_server(args, env, tmp_path)
    _one_error_line(
        rc,
        out,
        f"postgresql://postgres@[::1]:{port}/x "
        "(from DATABASE_HOST, DATABASE_PORT, DATABASE_NAME): ",
    )


@pytest.mark.parametrize("args", [["server"], ["migrate"]], ids=" ".join)
def test_an_sqlite_file_that_cannot_be_opened_is_one_line(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "no-such-dir" / "parity.db"
    rc, out = _parity_server(args, {"DATABASE_URL": f"sqlite+aiosqlite:///{path}"}, tmp_path)
    _one_error_line(
        rc, out, f"sqlite:///{path} (from DATABASE_URL): ", "unable to open database file"
    )


def test_the_database_is_shown_without_its_password_driver_or_query() -> None:
    from parity.db.migrate import display_url

    shown = display_url("postgresql+asyncpg://u%40x:p%40ss@[::1]:5433/d?password=q&ssl=require")
    assert shown == "postgresql://u%40x@[::1]:5433/d"
    assert display_url("sqlite+aiosqlite:////tmp/p.db") == "sqlite:////tmp/p.db"
    assert display_url("postgresql+asyncpg://u:p@::1:5432/x") == "postgresql://…"

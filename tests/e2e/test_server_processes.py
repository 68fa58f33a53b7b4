"""Real server processes: embedded lock, concurrent migration on PostgreSQL, graceful stop."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_DB
from tests.e2e.procs import ServerProcess

pytestmark = pytest.mark.slow


def test_second_embedded_server_is_refused_by_the_lock(tmp_path: Path):
    home = tmp_path / "parity"
    first = ServerProcess(home).start()
    try:
        first.wait_healthy()
        second = ServerProcess(home).start()
        code = second.wait_exit(timeout=60)
        assert code == 1
        assert "already using" in second.log() and "one server process" in second.log()
        assert httpx.get(f"{first.url}/api/health", timeout=5).status_code == 200
    finally:
        first.stop()


def test_sigterm_stops_the_server_cleanly_and_releases_the_lock(tmp_path: Path):
    home = tmp_path / "parity"
    server = ServerProcess(home).start()
    server.wait_healthy()
    # Exit status 0 within the shutdown budget (~20 s); past it stop() kills, which is not 0.
    assert server.stop(signal.SIGTERM, timeout=20) == 0
    assert "server_stopped" in server.log()
    again = ServerProcess(home).start()
    try:
        again.wait_healthy()
    finally:
        again.stop()


def test_embedded_server_needs_no_configuration(tmp_path: Path):
    home = tmp_path / "parity"
    server = ServerProcess(home).start()
    try:
        server.wait_healthy()
        status = httpx.get(f"{server.url}/api/status", timeout=5).json()
        assert status["mode"] == "embedded"
        assert (home / "parity.db").exists() and (home / "server.lock").exists()
    finally:
        server.stop()


def test_bad_configuration_stops_startup_naming_the_key(tmp_path: Path):
    server = ServerProcess(tmp_path / "parity", SERVER_ENDPOINT="http://localhost:8080").start()
    assert server.wait_exit(timeout=60) == 2
    assert "SERVER_ENDPOINT" in server.log()


@pytest.mark.postgres_only
def test_two_servers_migrate_one_postgres_at_once(fresh_database_url: str, tmp_path: Path):
    a = ServerProcess(tmp_path / "a", fresh_database_url).start()
    b = ServerProcess(tmp_path / "b", fresh_database_url).start()
    try:
        a.wait_healthy(60)
        b.wait_healthy(60)
        for s in (a, b):
            assert "Traceback" not in s.log()
            assert httpx.get(f"{s.url}/api/status", timeout=5).json()["mode"] == "postgresql"
    finally:
        assert a.stop() == 0
        assert b.stop() == 0


def test_refuses_to_start_on_a_newer_schema(fresh_database_url: str, tmp_path: Path):
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from parity.db import migrate

    async def bump() -> None:
        await migrate.upgrade(fresh_database_url)
        engine = create_async_engine(fresh_database_url, poolclass=NullPool)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
        await engine.dispose()

    asyncio.run(bump())
    server = ServerProcess(tmp_path / "p", fresh_database_url).start()
    assert server.wait_exit(timeout=60) == 1
    assert "newer than this server" in server.log()
    assert TEST_DB in ("sqlite", "postgres")

"""Schema migrations on the configured database: up/down/up, the too-new refusal, --check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from parity.db import migrate
from parity.db.registry import Base


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url, poolclass=NullPool)
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    await engine.dispose()
    return names - {"alembic_version"}


async def test_up_down_up_round_trip(fresh_database_url: str):
    expected = {t.name for t in Base.metadata.sorted_tables}
    st = await migrate.upgrade(fresh_database_url)
    assert st.up_to_date
    assert await _tables(fresh_database_url) == expected
    st = await migrate.downgrade(fresh_database_url, "base")
    assert st.current is None
    assert await _tables(fresh_database_url) == set()
    st = await migrate.upgrade(fresh_database_url)
    assert st.current == migrate.head_revision()
    assert await _tables(fresh_database_url) == expected


async def test_upgrade_twice_is_a_no_op(fresh_database_url: str):
    a = await migrate.upgrade(fresh_database_url)
    b = await migrate.upgrade(fresh_database_url)
    assert a.current == b.current == migrate.head_revision()


async def test_models_match_the_migrations(fresh_database_url: str):
    """Autogenerate finds nothing to add: the migration scripts describe the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    await migrate.upgrade(fresh_database_url)
    engine = create_async_engine(fresh_database_url, poolclass=NullPool)
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
        )
    await engine.dispose()
    assert diff == []


async def test_database_newer_than_the_code_is_refused(fresh_database_url: str):
    await migrate.upgrade(fresh_database_url)
    engine = create_async_engine(fresh_database_url, poolclass=NullPool)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'fffffffffff'"))
    await engine.dispose()
    with pytest.raises(migrate.SchemaTooNew, match="newer than this server"):
        await migrate.upgrade(fresh_database_url)
    assert (await migrate.schema_status(fresh_database_url)).too_new


def _cli(args: list[str], url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"DATABASE_URL": url, "PARITY_HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "parity", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=home.parent,
    )


def test_migrate_check_reports_and_migrate_applies(fresh_database_url: str, tmp_path: Path):
    home = tmp_path / "home"
    before = _cli(["migrate", "--check"], fresh_database_url, home)
    assert before.returncode == 1, before.stderr
    assert "current: none" in before.stdout
    applied = _cli(["migrate"], fresh_database_url, home)
    assert applied.returncode == 0, applied.stderr
    after = _cli(["migrate", "--check"], fresh_database_url, home)
    assert after.returncode == 0, after.stderr
    assert f"current: {migrate.head_revision()}" in after.stdout

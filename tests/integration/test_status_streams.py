"""/api/status says when LLM token streams cannot cross replicas: no STREAM_BUS_URL while
another replica shares the database (tests/integration/test_relay.py), or a STREAM_BUS_URL whose
Redis or NATS server does not answer, shown before any stream needed it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from tests.conftest import make_settings
from tests.contract.nats_service import nats_url
from tests.contract.redis_service import redis_url
from tests.integration.queue_helpers import served


@asynccontextmanager
async def _status(
    database_url: str, home: Path, clock: FrozenClock, **settings: str
) -> AsyncIterator[dict[str, Any]]:
    s = make_settings(database_url, home, **settings)
    async with served(
        Container(settings=s, db=Database(s.resolved_database_url), clock=clock)
    ) as http:
        r = await http.get("/api/status")
        assert r.status_code == 200, r.text
        yield r.json()


async def test_a_stream_bus_that_does_not_answer_is_a_warning(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
):
    # Nothing listens on port 1: the relay is configured but cannot work.
    bus = "redis://127.0.0.1:1/0"
    async with _status(database_url, tmp_path / "h", clock, STREAM_BUS_URL=bus) as status:
        assert status["backends"]["streams"] == "redis"
        assert [
            w.startswith("STREAM_BUS_URL: Redis does not answer") for w in status["warnings"]
        ] == [True]


async def test_a_stream_bus_that_answers_is_no_warning(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
):
    url = redis_url()
    async with _status(database_url, tmp_path / "h", clock, STREAM_BUS_URL=url) as status:
        assert status["backends"]["streams"] == "redis"
        assert status["warnings"] == []


async def test_a_nats_stream_bus_is_reported_and_one_that_does_not_answer_is_a_warning(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
):
    down = "nats://127.0.0.1:1"
    async with _status(database_url, tmp_path / "a", clock, STREAM_BUS_URL=down) as status:
        assert status["backends"]["streams"] == "nats"
        assert [
            w.startswith("STREAM_BUS_URL: NATS does not answer") for w in status["warnings"]
        ] == [True]
    up = nats_url()
    async with _status(database_url, tmp_path / "b", clock, STREAM_BUS_URL=up) as status:
        assert status["backends"]["streams"] == "nats"
        assert status["warnings"] == []


async def test_a_lone_server_without_a_stream_bus_is_no_warning(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
):
    async with _status(database_url, tmp_path / "h", clock) as status:
        assert status["backends"]["streams"] == "in-process"
        assert status["warnings"] == []

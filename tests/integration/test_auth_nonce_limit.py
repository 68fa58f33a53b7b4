"""Sign-in nonces are limited per client address (AUTH_NONCE_RATE_PER_MINUTE, AUTH_NONCE_BURST):
one client cannot fill the database with nonce rows, and nobody can lock a wallet out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from parity.app import create_app
from parity.auth.models import AuthNonce
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from tests.conftest import ALICE, BOB, make_settings, sign_in

ClientAt = Callable[[str], contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@contextlib.asynccontextmanager
async def _server(
    database_url: str, home: Path, clock: FrozenClock, **settings: Any
) -> AsyncIterator[tuple[Container, ClientAt]]:
    """A server, and clients of it that connect from a given address."""
    s = make_settings(database_url, home, **settings)
    c = Container(settings=s, db=Database(s.resolved_database_url), clock=clock)
    app = create_app(c, run_migrations=False, start_jobs=False)

    @contextlib.asynccontextmanager
    async def client_at(host: str) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(host, 4711))
        async with httpx.AsyncClient(transport=transport, base_url="http://parity.test") as http:
            yield http

    try:
        async with app.router.lifespan_context(app):
            yield c, client_at
    finally:
        await c.db.dispose()


async def _nonce_rows(c: Container) -> int:
    async with c.db.read_session() as session:
        rows = await session.execute(select(func.count()).select_from(AuthNonce))
        return int(rows.scalar_one())


def _nonce(http: httpx.AsyncClient, address: str = ALICE.address, *, mirror: bool = False) -> Any:
    path = "/api/auth/nonce" if mirror else "/api/v1/auth/nonce"
    return http.post(path, json={"address": address})


async def test_past_the_burst_a_client_gets_429_naming_the_limit_and_no_row_is_written(
    database_url: str, tmp_path: Path, clock: FrozenClock
):
    async with (
        _server(
            database_url, tmp_path, clock, AUTH_NONCE_RATE_PER_MINUTE=6, AUTH_NONCE_BURST=3
        ) as (c, client_at),
        client_at("203.0.113.7") as http,
    ):
        # The /api mirror and /api/v1 share one budget; any wallet address counts.
        assert (await _nonce(http)).status_code == 200
        assert (await _nonce(http, BOB.address, mirror=True)).status_code == 200
        assert (await _nonce(http)).status_code == 200
        for mirror in (False, True):
            r = await _nonce(http, mirror=mirror)
            assert r.status_code == 429, r.text
            assert r.headers["Retry-After"] == "10"  # one every 10 s, in whole seconds
            err = r.json()["error"]
            assert err["code"] == "rate_limited"
            assert "AUTH_NONCE_RATE_PER_MINUTE" in err["message"]
            assert "6 per minute" in err["message"] and "bursts of up to 3" in err["message"]
            assert err["details"] == {
                "limit_per_minute": 6.0,
                "burst": 3,
                "retry_after_seconds": 10,
            }
        assert await _nonce_rows(c) == 3
        # Retry-After is honest: after it, one more is allowed, and then no more.
        clock.advance(10)
        assert (await _nonce(http)).status_code == 200
        r = await _nonce(http)
        assert r.status_code == 429 and r.headers["Retry-After"] == "10"
        assert await _nonce_rows(c) == 4


async def test_a_refused_request_does_no_database_work(
    database_url: str, tmp_path: Path, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
):
    async with (
        _server(
            database_url, tmp_path, clock, AUTH_NONCE_RATE_PER_MINUTE=1, AUTH_NONCE_BURST=1
        ) as (c, client_at),
        client_at("203.0.113.7") as http,
    ):
        assert (await _nonce(http)).status_code == 200

        def no_database(*_: object, **__: object) -> Any:
            raise AssertionError("a refused nonce request opened a write session")

        monkeypatch.setattr(c.db, "write_session", no_database)
        r = await _nonce(http)
        assert r.status_code == 429 and r.headers["Retry-After"] == "60"


async def test_a_flood_from_one_address_neither_limits_others_nor_locks_the_wallet_out(
    database_url: str, tmp_path: Path, clock: FrozenClock
):
    async with _server(
        database_url, tmp_path, clock, AUTH_NONCE_RATE_PER_MINUTE=1, AUTH_NONCE_BURST=2
    ) as (_, client_at):
        async with client_at("198.51.100.66") as flooder:
            codes = [(await _nonce(flooder)).status_code for _ in range(10)]
            assert codes == [200, 200] + [429] * 8
            # A forwarded-for header is not a way around it.
            r = await flooder.post(
                "/api/v1/auth/nonce",
                json={"address": ALICE.address},
                headers={"X-Forwarded-For": "192.0.2.1", "X-Real-IP": "192.0.2.1"},
            )
            assert r.status_code == 429
        async with client_at("192.0.2.10") as owner:
            assert await sign_in(owner, ALICE)  # ALICE's own sign-in, from her address
        # IPv6 clients are counted by their /64: other addresses of that network share it.
        async with client_at("2001:db8:7:7::1") as a, client_at("2001:db8:7:7::2") as b:
            assert (await _nonce(a)).status_code == 200
            assert (await _nonce(b)).status_code == 200
            assert (await _nonce(a)).status_code == 429
        async with client_at("2001:db8:7:8::1") as other_net:
            assert (await _nonce(other_net)).status_code == 200


async def test_zero_is_unlimited(database_url: str, tmp_path: Path, clock: FrozenClock):
    async with _server(database_url, tmp_path, clock, AUTH_NONCE_RATE_PER_MINUTE=0) as (
        c,
        client_at,
    ):
        async with client_at("203.0.113.7") as http:
            for _ in range(80):
                assert (await _nonce(http)).status_code == 200
        assert len(c.nonce_limiter) == 0


async def test_the_default_allows_60_at_once_and_one_a_second(
    database_url: str, tmp_path: Path, clock: FrozenClock
):
    async with _server(database_url, tmp_path, clock) as (c, client_at):
        assert (c.settings.auth_nonce_rate_per_minute, c.settings.auth_nonce_burst) == (60, 60)
        async with client_at("203.0.113.7") as http:
            for _ in range(60):
                assert (await _nonce(http)).status_code == 200
            r = await _nonce(http)
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            clock.advance(1)
            assert (await _nonce(http)).status_code == 200

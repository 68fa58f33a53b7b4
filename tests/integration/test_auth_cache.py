"""The in-process token cache: a token that authenticated is not looked up again for
AUTH_CACHE_SECONDS, and every kind of revocation is refused on the very next request even
though the token was cached."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from parity.app import create_app
from parity.auth import service as auth_service
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.hooks import run_after_commit
from parity.db.session import Database
from tests.conftest import ADMIN, ALICE, BOB, bearer, make_settings, sign_in
from tests.integration.queue_helpers import device, register_runner

ME = "/api/v1/auth/me"


class TokenLookups:
    """Counts the statements that read the token table."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sql = statement.lower()
        if sql.lstrip().startswith("select") and "from auth_tokens" in sql:
            self.count += 1


def _watch(container: Container) -> Iterator[TokenLookups]:
    lookups = TokenLookups()
    engines: list[Engine] = [e.sync_engine for e in container.db.engines]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", lookups)
    yield lookups
    for engine in engines:
        event.remove(engine, "before_cursor_execute", lookups)


@pytest.fixture
def token_lookups(container: Container) -> Iterator[TokenLookups]:
    yield from _watch(container)


async def _served_from_cache(client: httpx.AsyncClient, lookups: TokenLookups, token: str) -> None:
    """Use the token twice: the first request looks it up, the second does not."""
    assert (await client.get(ME, headers=bearer(token))).status_code == 200
    before = lookups.count
    assert (await client.get(ME, headers=bearer(token))).status_code == 200
    assert lookups.count == before, "the second request looked the token up again"


async def test_a_second_request_with_the_same_token_skips_the_token_lookup(
    client: httpx.AsyncClient, token_lookups: TokenLookups
):
    token = await sign_in(client, ALICE)
    before = token_lookups.count
    for _ in range(5):
        r = await client.get(ME, headers=bearer(token))
        assert r.status_code == 200 and r.json()["address"] == ALICE.address.lower()
    assert token_lookups.count == before + 1


async def test_a_cached_token_is_looked_up_again_after_auth_cache_seconds(
    client: httpx.AsyncClient, token_lookups: TokenLookups, clock: FrozenClock
):
    token = await sign_in(client, ALICE)
    await _served_from_cache(client, token_lookups, token)
    before = token_lookups.count
    clock.advance(5)  # AUTH_CACHE_SECONDS defaults to 5
    assert (await client.get(ME, headers=bearer(token))).status_code == 200
    assert token_lookups.count == before + 1


async def test_an_unknown_token_is_never_cached(
    client: httpx.AsyncClient, token_lookups: TokenLookups
):
    bad = "ps_sess_" + "0" * 64
    for _ in range(3):
        r = await client.get(ME, headers=bearer(bad))
        assert r.status_code == 401 and "unknown" in r.json()["error"]["message"]
    assert token_lookups.count == 3


async def test_logout_refuses_the_cached_token_at_once(
    client: httpx.AsyncClient, token_lookups: TokenLookups
):
    token = await sign_in(client, ALICE)
    other = await sign_in(client, BOB)
    await _served_from_cache(client, token_lookups, token)
    await _served_from_cache(client, token_lookups, other)
    assert (await client.post("/api/v1/auth/logout", headers=bearer(token))).status_code == 204
    r = await client.get(ME, headers=bearer(token))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    # Everyone else's tokens still work (looked up again once).
    assert (await client.get(ME, headers=bearer(other))).status_code == 200


async def test_a_revoked_api_key_is_refused_at_once(
    client: httpx.AsyncClient, token_lookups: TokenLookups
):
    token = await sign_in(client, ALICE)
    created = await client.post("/api/v1/auth/keys", json={"name": "ci"}, headers=bearer(token))
    key = created.json()["key"]
    await _served_from_cache(client, token_lookups, key)
    r = await client.delete(f"/api/v1/auth/keys/{created.json()['id']}", headers=bearer(token))
    assert r.status_code == 200
    assert (await client.get(ME, headers=bearer(key))).status_code == 401
    assert (await client.get(ME, headers=bearer(token))).status_code == 200


async def test_re_registration_refuses_the_old_runner_token_at_once(
    client: httpx.AsyncClient, token_lookups: TokenLookups
):
    bob = await sign_in(client, BOB)
    dev = device()
    old, _ = await register_runner(client, bob, dev)
    await _served_from_cache(client, token_lookups, old)
    new, _ = await register_runner(client, bob, dev)
    assert (await client.get(ME, headers=bearer(old))).status_code == 401
    me = await client.get(ME, headers=bearer(new))
    assert me.status_code == 200 and me.json()["kind"] == "runner"


async def test_a_banned_runners_cached_token_is_refused_at_once(
    client: httpx.AsyncClient, token_lookups: TokenLookups
):
    admin = await sign_in(client, ADMIN)
    runner_token, body = await register_runner(client, await sign_in(client, BOB), device())
    await _served_from_cache(client, token_lookups, runner_token)
    r = await client.post(f"/api/v1/runners/{body['runner']['id']}/ban", headers=bearer(admin))
    assert r.status_code == 200, r.text
    assert (await client.get(ME, headers=bearer(runner_token))).status_code == 401


async def test_operator_revoke_all_refuses_cached_tokens_at_once(
    client: httpx.AsyncClient, token_lookups: TokenLookups
):
    admin = await sign_in(client, ADMIN)
    bob1 = await sign_in(client, BOB)
    bob2 = await sign_in(client, BOB)
    for t in (admin, bob1, bob2):
        await _served_from_cache(client, token_lookups, t)
    r = await client.post(
        f"/api/v1/admin/accounts/{BOB.address}/revoke-tokens", headers=bearer(admin)
    )
    assert r.status_code == 200 and r.json()["revoked"] == 2
    for t in (bob1, bob2):
        assert (await client.get(ME, headers=bearer(t))).status_code == 401
    assert (await client.get(ME, headers=bearer(admin))).status_code == 200


async def test_a_revocation_that_finds_nothing_keeps_the_cache(
    client: httpx.AsyncClient, token_lookups: TokenLookups, container: Container
):
    admin = await sign_in(client, ADMIN)
    await _served_from_cache(client, token_lookups, admin)
    generation = container.token_cache.generation
    r = await client.post(
        f"/api/v1/admin/accounts/{BOB.address}/revoke-tokens", headers=bearer(admin)
    )
    assert r.status_code == 200 and r.json()["revoked"] == 0
    assert container.token_cache.generation == generation


async def test_a_lookup_racing_the_revoking_commit_does_not_keep_the_token(
    client: httpx.AsyncClient, container: Container
):
    token = await sign_in(client, ALICE)
    tokens, admins = container.token_cache, container.settings.admins

    async def authenticate() -> Any:
        return await auth_service.authenticate(
            container.db.lookup, tokens, admins, container.clock.now(), token
        )

    principal = await authenticate()
    async with container.db.write_session() as session:
        auth_service.bind_token_cache(session, tokens)
        await auth_service.logout(session, container.auth, principal)
        assert len(tokens) == 0  # forgotten at once ...
        # ... but a request that reads the row before the commit still sees it valid, and
        # stores that answer.
        assert await authenticate() == principal
        assert len(tokens) == 1
        await session.commit()
    await run_after_commit(session)  # what the write unit of work does after its commit
    assert len(tokens) == 0
    r = await client.get(ME, headers=bearer(token))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


@pytest.fixture
async def uncached(
    database_url: str, tmp_path: Path, clock: FrozenClock
) -> AsyncIterator[tuple[httpx.AsyncClient, TokenLookups]]:
    s = make_settings(database_url, tmp_path / "uncached", AUTH_CACHE_SECONDS=0)
    c = Container(settings=s, db=Database(s.resolved_database_url), clock=clock)
    app = create_app(c, run_migrations=False, start_jobs=False)
    watch = _watch(c)
    lookups = next(watch)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://parity.test"
            ) as http,
        ):
            yield http, lookups
    finally:
        next(watch, None)
        await c.db.dispose()


async def test_with_auth_cache_seconds_zero_every_request_looks_the_token_up(
    uncached: tuple[httpx.AsyncClient, TokenLookups],
):
    client, lookups = uncached
    token = await sign_in(client, ALICE)
    before = lookups.count
    for _ in range(3):
        assert (await client.get(ME, headers=bearer(token))).status_code == 200
    assert lookups.count == before + 3

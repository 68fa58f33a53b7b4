"""/api/status reports the chain start-up check; a node on the wrong chain stops start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from parity.app import create_app
from parity.chain.fake import FakeChain, FakeChainClient
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.errors import ConfigError
from tests.conftest import make_settings
from tests.integration.queue_helpers import served

FAKE = FakeChain()
StatusOf = Callable[[FakeChain], Awaitable[dict[str, Any]]]


def _container(database_url: str, home: Path, clock: FrozenClock, chain: FakeChain) -> Container:
    settings = make_settings(
        database_url,
        home,
        filecoin_rpc="http://node.test:8545",
        filecoin_stake_wallet_address=FAKE.stake_wallet_address,
    )
    c = Container(settings=settings, db=Database(settings.resolved_database_url), clock=clock)
    c.chain = FakeChainClient(chain)
    return c


async def _verdict(client: httpx.AsyncClient) -> str:
    return str((await client.get("/api/status")).json()["backends"]["chain"])


@pytest.fixture
async def status_of(
    database_url: str, tmp_path: Path, clock: FrozenClock
) -> AsyncIterator[StatusOf]:
    async def status(chain: FakeChain) -> dict[str, Any]:
        async with served(_container(database_url, tmp_path / "home", clock, chain)) as client:
            r = await client.get("/api/v1/status")
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body

    yield status


async def test_status_shows_a_good_chain_as_ok(status_of: StatusOf):
    body = await status_of(FakeChain())
    assert body["backends"]["chain"] == "ok"
    assert body["chain"]["chain_id"] == 314159
    assert body["chain"]["decimals"] == 18
    assert body["chain"]["payment_ref"] is True
    assert body["chain"]["stake_wallet_address"] == FAKE.stake_wallet_address


async def test_status_shows_missing_contract_code_as_no_contract(status_of: StatusOf):
    chain = FakeChain()
    chain.remove_code(chain.stake_wallet_address)
    body = await status_of(chain)
    assert body["backends"]["chain"] == "no_contract"
    assert "FILECOIN_STAKE_WALLET_ADDRESS" in body["chain"]["message"]


async def test_an_unreachable_node_does_not_stop_start_up_and_is_rechecked(
    database_url: str, tmp_path: Path, clock: FrozenClock
):
    chain = FakeChain()
    chain.unreachable = True
    async with served(_container(database_url, tmp_path / "home", clock, chain)) as client:
        assert await _verdict(client) == "unreachable"
        chain.unreachable = False
        # Within the re-check interval the verdict stands...
        assert await _verdict(client) == "unreachable"
        clock.advance(31)
        # ...after it, the node is asked again.
        assert await _verdict(client) == "ok"


async def test_a_node_on_another_chain_stops_start_up(
    database_url: str, tmp_path: Path, clock: FrozenClock
):
    c = _container(database_url, tmp_path / "home", clock, FakeChain(chain_id=1))
    app = create_app(c, run_migrations=False, start_jobs=False)
    with pytest.raises(ConfigError, match=r"FILECOIN_CHAIN_ID is 314159 but .* serves chain 1"):
        async with app.router.lifespan_context(app):
            pass
    await c.db.dispose()


async def test_a_node_that_goes_away_after_start_up_shows_unreachable(
    database_url: str, tmp_path: Path, clock: FrozenClock
):
    chain = FakeChain()
    async with served(_container(database_url, tmp_path / "home", clock, chain)) as client:
        assert await _verdict(client) == "ok"
        chain.unreachable = True
        clock.advance(31)
        body = (await client.get("/api/status")).json()
        assert body["backends"]["chain"] == "unreachable"
        assert "unreachable" in body["chain"]["message"]
        chain.unreachable = False
        clock.advance(31)
        assert await _verdict(client) == "ok"

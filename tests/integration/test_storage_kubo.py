"""The storage API on the kubo adapter (against the fake kubo node: the real-kubo path is not
exercised on the build machines), and 503 with a clear message when the node is down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from parity.app import create_app
from parity.container import Container
from parity.storage.kubo import KuboContentStore
from parity.storage.local import LocalContentStore
from tests.conftest import ALICE, bearer, make_settings, sign_in
from tests.contract.fake_kubo import FakeKubo
from tests.contract.vectors import HELLO, MULTI_MIB

API = "/api/v1/storage"
KUBO = "http://127.0.0.1:5001"


async def _client_on(
    container: Container, store: KuboContentStore
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        container.settings.resolved_database_url,
        container.settings.home,
        filecoin_ipfs_endpoint=KUBO,
    )
    c = Container(settings=settings, db=container.db, clock=container.clock)
    c.content_store = store
    app = create_app(c, run_migrations=False, start_jobs=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://parity.test") as client,
    ):
        yield client


@pytest.fixture
async def kubo_client(container: Container, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    fake = FakeKubo(LocalContentStore(tmp_path / "kubo"))
    store = KuboContentStore(KUBO, transport=httpx.ASGITransport(app=fake.app))
    async for client in _client_on(container, store):
        yield client


@pytest.fixture
async def dead_kubo_client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    store = KuboContentStore(KUBO, transport=httpx.MockTransport(refuse))
    async for client in _client_on(container, store):
        yield client


async def test_upload_download_pin_through_the_kubo_adapter(kubo_client: httpx.AsyncClient):
    auth = bearer(await sign_in(kubo_client, ALICE))
    r = await kubo_client.put(f"{API}/upload", content=MULTI_MIB.data(), headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["cid"] == MULTI_MIB.v1 and r.json()["cid_v0"] == MULTI_MIB.v0
    got = await kubo_client.get(f"{API}/download/{MULTI_MIB.v0}", headers=auth)
    assert got.content == MULTI_MIB.data()
    part = await kubo_client.get(
        f"{API}/download/{MULTI_MIB.v1}", headers={**auth, "Range": "bytes=100-199"}
    )
    assert part.status_code == 206 and part.content == MULTI_MIB.data()[100:200]
    assert (await kubo_client.delete(f"{API}/pin/{MULTI_MIB.v1}", headers=auth)).status_code == 204
    assert (await kubo_client.post(f"{API}/pin/{MULTI_MIB.v1}", headers=auth)).status_code == 201
    status = (await kubo_client.get("/api/v1/status")).json()
    assert status["backends"]["content_store"] == "kubo"
    assert status["storage"]["reachable"] is True and status["storage"]["endpoint"] == KUBO


async def test_a_dead_node_is_503_with_a_clear_message(dead_kubo_client: httpx.AsyncClient):
    auth = bearer(await sign_in(dead_kubo_client, ALICE))
    for r in (
        await dead_kubo_client.put(f"{API}/upload", content=b"data", headers=auth),
        await dead_kubo_client.get(f"{API}/download/{HELLO.v1}", headers=auth),
        await dead_kubo_client.get(f"{API}/info/{HELLO.v1}", headers=auth),
        await dead_kubo_client.post(f"{API}/pin/{HELLO.v1}", headers=auth),
    ):
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "content_store_unavailable"
        assert KUBO in err["message"] and "unreachable" in err["message"]
        assert r.headers["retry-after"] == "5"
    status = await dead_kubo_client.get("/api/v1/status")
    assert status.status_code == 200
    assert status.json()["storage"]["reachable"] is False

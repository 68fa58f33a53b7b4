"""What only the kubo adapter does: the add options it sends, offline reads, and how a node that
is down, slow, wrong or failing is reported. (Against the fake node; no real kubo here.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from parity.core.storage.multiformats import Cid
from parity.errors import Category
from parity.storage.errors import ContentNotFound, StoreFailed, StoreUnavailable
from parity.storage.kubo import KuboContentStore
from tests.contract.conftest import KUBO_URL
from tests.contract.fake_kubo import FakeKubo
from tests.contract.vectors import HELLO, MULTI_MIB, ONE_CHUNK


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_add_passes_the_kubo_import_options_explicitly(
    kubo_store: KuboContentStore, fake_kubo: FakeKubo
):
    await kubo_store.put(_once(HELLO.data()), pin=True)
    name, params = fake_kubo.requests[-1]
    assert name == "add"
    assert params["cid-version"] == "1"
    assert params["raw-leaves"] == "true"
    assert params["chunker"] == "size-262144"
    assert params["hash"] == "sha2-256"
    assert params["pin"] == "true"


async def test_reads_and_pins_never_go_to_the_network(
    kubo_store: KuboContentStore, fake_kubo: FakeKubo
):
    stored = await kubo_store.put(_once(MULTI_MIB.data()))
    await kubo_store.stat(stored.cid)
    await kubo_store.stat(Cid.parse(HELLO.v1))
    _ = [p async for p in kubo_store.cat(stored.cid, 0, 10)]
    await kubo_store.pin(stored.cid)
    used = [
        (n, p) for n, p in fake_kubo.requests if n in ("cat", "block/get", "block/stat", "pin/add")
    ]
    assert {n for n, _ in used} == {"cat", "block/get", "block/stat", "pin/add"}
    assert all(p.get("offline") == "true" for _, p in used)


async def test_a_node_that_answers_another_cid_is_refused(
    kubo_store: KuboContentStore, fake_kubo: FakeKubo
):
    fake_kubo.answer_cid = ONE_CHUNK.v1
    with pytest.raises(StoreFailed, match="expected"):
        await kubo_store.put(_once(HELLO.data()))


def _down(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("Connection refused", request=request)


def _slow(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


@pytest.mark.parametrize(("handler", "why"), [(_down, "unreachable"), (_slow, "did not answer")])
async def test_a_node_down_or_slow_is_unavailable_naming_the_endpoint(handler, why):  # type: ignore[no-untyped-def]
    store = KuboContentStore(KUBO_URL, timeout_seconds=3, transport=httpx.MockTransport(handler))
    cid = Cid.parse(HELLO.v1)
    calls = [
        store.put(_once(b"data")),
        store.stat(cid),
        store.pin(cid),
        store.unpin(cid),
        store.pins(),
        store.gc(),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable) as err:
            await call
        assert KUBO_URL in err.value.message and why in err.value.message
        assert err.value.category == Category.UNAVAILABLE
    with pytest.raises(StoreUnavailable):
        _ = [p async for p in store.cat(cid)]
    info = await store.describe()
    assert info["reachable"] is False and KUBO_URL in info["error"]
    await store.aclose()


async def test_node_errors_are_reported_with_its_message():
    def failing(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v0/block/stat":
            return httpx.Response(
                500,
                json={
                    "Message": "block was not found locally (offline)",
                    "Code": 0,
                    "Type": "error",
                },
            )
        return httpx.Response(500, json={"Message": "repo is locked", "Code": 0, "Type": "error"})

    store = KuboContentStore(KUBO_URL, transport=httpx.MockTransport(failing))
    assert await store.stat(Cid.parse(HELLO.v1)) is None
    with pytest.raises(StoreFailed, match="repo is locked"):
        await store.pins()
    with pytest.raises(StoreFailed, match="repo is locked"):
        await store.put(_once(b"data"))
    await store.aclose()


async def test_pin_of_content_the_node_lacks_is_not_found(kubo_store: KuboContentStore):
    with pytest.raises(ContentNotFound):
        await kubo_store.pin(Cid.parse(MULTI_MIB.v1))

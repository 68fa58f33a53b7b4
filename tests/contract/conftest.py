"""The content-store contract runs against every adapter: the local blockstore, and the kubo
adapter talking HTTP to a fake kubo node (tests/contract/fake_kubo.py) in process. The real-kubo
path is not exercised here: no kubo daemon is available on the build machines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from parity.storage.kubo import KuboContentStore
from parity.storage.local import LocalContentStore
from parity.storage.ports import ContentStore
from tests.contract.fake_kubo import FakeKubo

KUBO_URL = "http://kubo.test:5001"


@pytest.fixture
def fake_kubo(tmp_path: Path) -> FakeKubo:
    return FakeKubo(LocalContentStore(tmp_path / "kubo-blocks"))


@pytest.fixture
async def kubo_store(fake_kubo: FakeKubo) -> AsyncIterator[KuboContentStore]:
    store = KuboContentStore(KUBO_URL, transport=httpx.ASGITransport(app=fake_kubo.app))
    yield store
    await store.aclose()


@pytest.fixture(params=["local", "kubo"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, fake_kubo: FakeKubo
) -> AsyncIterator[ContentStore]:
    if request.param == "local":
        yield LocalContentStore(tmp_path / "blocks")
        return
    kubo = KuboContentStore(KUBO_URL, transport=httpx.ASGITransport(app=fake_kubo.app))
    yield kubo
    await kubo.aclose()

"""The global-model cache of update checks: a round's updates arrive together, and those that
miss while the model is read share that one read; a failed read is not remembered."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from parity.core.fl.tensors import encode
from parity.fl import store_io
from parity.fl.errors import ContentInvalid
from parity.fl.updates import ModelCache
from parity.storage.local import LocalContentStore


async def _model(tmp_path: Path) -> tuple[Any, str, str, dict[str, np.ndarray]]:
    store = LocalContentStore(tmp_path)
    weights = {"fc1.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    cid, sha = await store_io.put_bytes(store, encode(weights))
    return SimpleNamespace(store=store), cid, sha, weights


async def test_updates_that_miss_together_share_one_read(tmp_path: Path) -> None:
    deps, cid, sha, weights = await _model(tmp_path)
    cache = ModelCache()
    got = await asyncio.gather(*(cache.get(deps, cid, sha, 1 << 20) for _ in range(10)))  # type: ignore[arg-type]
    assert cache.loads == 1
    assert all(g is got[0] for g in got)
    np.testing.assert_array_equal(got[0]["fc1.weight"], weights["fc1.weight"])
    await cache.get(deps, cid, sha, 1 << 20)  # type: ignore[arg-type]
    assert cache.loads == 1  # remembered


async def test_a_failed_read_fails_its_waiters_and_is_tried_again(tmp_path: Path) -> None:
    deps, cid, sha, _ = await _model(tmp_path)
    cache = ModelCache()
    wrong = hashlib.sha256(b"another model").hexdigest()
    got = await asyncio.gather(
        *(cache.get(deps, cid, wrong, 1 << 20) for _ in range(3)),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert all(isinstance(g, ContentInvalid) for g in got), got
    assert cache.loads == 1
    assert (await cache.get(deps, cid, sha, 1 << 20))["fc1.weight"].shape == (2, 3)  # type: ignore[arg-type]
    assert cache.loads == 2


async def test_a_waiter_that_goes_away_does_not_cancel_the_read(tmp_path: Path) -> None:
    deps, cid, sha, _ = await _model(tmp_path)
    cache = ModelCache()
    first = asyncio.create_task(cache.get(deps, cid, sha, 1 << 20))  # type: ignore[arg-type]
    second = asyncio.create_task(cache.get(deps, cid, sha, 1 << 20))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await second)["fc1.weight"].shape == (2, 3)
    assert cache.loads == 1


def test_a_read_left_pending_by_a_closed_event_loop_is_started_again(tmp_path: Path) -> None:
    cache = ModelCache()
    setup = asyncio.new_event_loop()
    deps, cid, sha, _ = setup.run_until_complete(_model(tmp_path))
    never: asyncio.Future[Any] = setup.create_future()  # a read that never finished
    cache._loading[cid] = never
    setup.close()
    got = asyncio.run(cache.get(deps, cid, sha, 1 << 20))  # type: ignore[arg-type]
    assert got["fc1.weight"].shape == (2, 3) and cache.loads == 1

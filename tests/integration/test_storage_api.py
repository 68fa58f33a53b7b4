"""The storage API on the embedded store: uploads (raw and multipart, streamed, limited), reads
with ranges, CIDv0 aliases, pins with quotas, unpin, garbage collection."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from parity.app import create_app
from parity.container import Container
from parity.storage import service
from tests.conftest import ALICE, BOB, bearer, make_settings, sign_in
from tests.contract.vectors import HELLO, MULTI_MIB, ONE_CHUNK, ONE_CHUNK_PLUS_ONE, QUICK, Vector

API = "/api/v1/storage"

ClientFactory = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def make_client(container: Container) -> ClientFactory:
    """A client on an app whose settings add ``extra`` (e.g. storage limits)."""

    @contextlib.asynccontextmanager
    async def factory(**extra: Any) -> AsyncIterator[httpx.AsyncClient]:
        c = container
        if extra:
            settings = make_settings(c.settings.resolved_database_url, c.settings.home, **extra)
            c = Container(settings=settings, db=container.db, clock=container.clock)
        app = create_app(c, run_migrations=False, start_jobs=False)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://parity.test") as client,
        ):
            yield client

    return factory


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer(await sign_in(client, ALICE))


async def _put(
    client: httpx.AsyncClient, auth: dict[str, str], data: bytes, **params: Any
) -> httpx.Response:
    return await client.put(f"{API}/upload", content=data, headers=auth, params=params)


@pytest.mark.parametrize("vector", QUICK, ids=lambda v: v.name)
async def test_raw_upload_gives_kubos_cid_and_downloads_the_same_bytes(
    client: httpx.AsyncClient, alice: dict[str, str], vector: Vector
):
    r = await _put(client, alice, vector.data())
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["cid"] == vector.v1
    assert body["cid_v0"] == vector.v0
    assert body["size"] == vector.size
    assert body["pinned"] is True and body["retained"] is True
    assert body["created_at"] is not None
    assert body["download_url"] == f"http://parity.test/api/v1/storage/download/{vector.v1}"
    assert body["gateway_url"] is None
    got = await client.get(f"{API}/download/{vector.v1}", headers=alice)
    assert got.status_code == 200
    assert got.content == vector.data()
    assert got.headers["content-length"] == str(vector.size)
    assert got.headers["etag"] == f'"{vector.v1}"'


async def test_multipart_upload_streams_the_file_part_and_names_the_pin(
    client: httpx.AsyncClient, alice: dict[str, str]
):
    files = {"file": ("model.bin", MULTI_MIB.data(), "application/octet-stream")}
    r = await client.post(f"{API}/upload", files=files, data={"note": "x"}, headers=alice)
    assert r.status_code == 201, r.text
    assert r.json()["cid"] == MULTI_MIB.v1
    pins = (await client.get(f"{API}/pins", headers=alice)).json()
    assert [(p["cid"], p["name"], p["size"]) for p in pins["items"]] == [
        (MULTI_MIB.v1, "model.bin", MULTI_MIB.size)
    ]


async def test_multipart_upload_without_a_file_part_is_422(
    client: httpx.AsyncClient, alice: dict[str, str]
):
    r = await client.post(
        f"{API}/upload", data={"other": "x"}, files={"x": ("", b"")}, headers=alice
    )
    assert r.status_code in (201, 422)  # an empty filename still counts as a file part
    r = await client.post(
        f"{API}/upload",
        content=b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--b--\r\n',
        headers={**alice, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_multipart"
    r = await client.post(
        f"{API}/upload", content=b"x", headers={**alice, "Content-Type": "text/plain"}
    )
    assert r.status_code == 422


async def test_a_pin_name_too_long_or_with_a_control_character_is_422_in_words(
    client: httpx.AsyncClient, alice: dict[str, str]
):
    r = await _put(client, alice, HELLO.data(), name="x" * 256)
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "name: String should have at most 255 characters"
    r = await _put(client, alice, HELLO.data(), name="a\tb")
    assert r.status_code == 422 and "control characters" in r.json()["error"]["message"]
    r = await _put(client, alice, HELLO.data(), name="x" * 255)
    assert r.status_code == 201


async def test_pin_is_true_or_false_not_yes_or_1(client: httpx.AsyncClient, alice: dict[str, str]):
    for word in ("yes", "1", "on", ""):
        r = await _put(client, alice, HELLO.data(), pin=word)
        assert r.status_code == 422, word
        assert r.json()["error"]["message"] == "pin: must be true or false"
    r = await _put(client, alice, HELLO.data(), pin="False")
    assert r.status_code == 201 and r.json()["pinned"] is False
    r = await _put(client, alice, HELLO.data(), pin="true")
    assert r.status_code == 201 and r.json()["pinned"] is True


async def test_a_plain_ipfs_add_cidv0_resolves_to_the_same_data(
    client: httpx.AsyncClient, alice: dict[str, str]
):
    for vector in (HELLO, MULTI_MIB):
        assert (await _put(client, alice, vector.data())).status_code == 201
        got = await client.get(f"{API}/download/{vector.v0}", headers=alice)
        assert got.status_code == 200 and got.content == vector.data()
        assert got.headers["x-content-cid"] == vector.v1
        info = (await client.get(f"{API}/info/{vector.v0}", headers=alice)).json()
        assert info["cid"] == vector.v1 and info["cid_v0"] == vector.v0


async def test_info_reports_cid_size_pinned_created_and_gateway(
    make_client: ClientFactory, container: Container
):
    async with make_client(filecoin_gateway_url="https://gw.example/") as client:
        auth = bearer(await sign_in(client, ALICE))
        await _put(client, auth, HELLO.data(), pin="false")
        info = (await client.get(f"{API}/info/{HELLO.v1}", headers=auth)).json()
        assert info["size"] == 12 and info["pinned"] is False and info["retained"] is False
        assert info["created_at"] is not None
        assert info["gateway_url"] == f"https://gw.example/ipfs/{HELLO.v1}"
        await client.post(f"{API}/pin/{HELLO.v1}", headers=auth)
        info = (await client.get(f"{API}/info/{HELLO.v1}", headers=auth)).json()
        assert info["pinned"] is True and info["retained"] is True


async def test_unknown_and_invalid_cids(client: httpx.AsyncClient, alice: dict[str, str]):
    for path in ("download", "info"):
        r = await client.get(f"{API}/{path}/{MULTI_MIB.v1}", headers=alice)
        assert r.status_code == 404 and r.json()["error"]["code"] == "content_not_found"
        r = await client.get(f"{API}/{path}/not-a-cid", headers=alice)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cid"
    r = await client.post(f"{API}/pin/{MULTI_MIB.v1}", headers=alice)
    assert r.status_code == 404


async def test_everything_needs_a_token(client: httpx.AsyncClient):
    assert (await client.put(f"{API}/upload", content=b"x")).status_code == 401
    assert (await client.get(f"{API}/download/{HELLO.v1}")).status_code == 401
    assert (await client.get(f"{API}/info/{HELLO.v1}")).status_code == 401
    assert (await client.post(f"{API}/pin/{HELLO.v1}")).status_code == 401


async def test_a_cid_is_a_capability_any_account_may_read(
    client: httpx.AsyncClient, alice: dict[str, str]
):
    await _put(client, alice, HELLO.data())
    bob = bearer(await sign_in(client, BOB))
    got = await client.get(f"{API}/download/{HELLO.v1}", headers=bob)
    assert got.content == HELLO.data()
    info = (await client.get(f"{API}/info/{HELLO.v1}", headers=bob)).json()
    assert info["pinned"] is False and info["retained"] is True


# -- ranges


async def test_range_requests(client: httpx.AsyncClient, alice: dict[str, str]):
    data = MULTI_MIB.data()
    await _put(client, alice, data)
    url = f"{API}/download/{MULTI_MIB.v1}"
    r = await client.get(url, headers={**alice, "Range": "bytes=262140-262150"})
    assert r.status_code == 206
    assert r.content == data[262140:262151]
    assert r.headers["content-range"] == f"bytes 262140-262150/{len(data)}"
    assert r.headers["content-length"] == "11"
    r = await client.get(url, headers={**alice, "Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == data[-5:]
    r = await client.get(url, headers={**alice, "Range": f"bytes={len(data)}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(data)}"
    assert r.json()["error"]["code"] == "range_not_satisfiable"
    r = await client.get(url, headers={**alice, "Range": "bytes=0-1", "If-Range": '"other"'})
    assert r.status_code == 200 and len(r.content) == len(data)
    r = await client.get(
        url, headers={**alice, "Range": "bytes=0-1", "If-Range": f'"{MULTI_MIB.v1}"'}
    )
    assert r.status_code == 206 and r.content == data[:2]


async def test_head_and_conditional_get(client: httpx.AsyncClient, alice: dict[str, str]):
    await _put(client, alice, ONE_CHUNK.data())
    url = f"{API}/download/{ONE_CHUNK.v1}"
    r = await client.head(url, headers=alice)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == str(ONE_CHUNK.size)
    assert r.headers["accept-ranges"] == "bytes"
    r = await client.get(url, headers={**alice, "If-None-Match": f'"{ONE_CHUNK.v1}"'})
    assert r.status_code == 304 and r.content == b""


# -- limits


async def test_upload_over_the_storage_limit_is_413_declared_or_streamed(
    make_client: ClientFactory,
):
    async with make_client(storage_max_upload_bytes=262144) as client:
        auth = bearer(await sign_in(client, ALICE))
        r = await _put(client, auth, ONE_CHUNK.data())
        assert r.status_code == 201

        r = await _put(client, auth, ONE_CHUNK_PLUS_ONE.data())  # Content-Length declared
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "upload_too_large"

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(5):
                yield b"x" * 100_000

        r = await client.put(f"{API}/upload", content=chunked(), headers=auth)
        assert r.status_code == 413
        assert r.json()["error"]["details"]["max_upload_bytes"] == 262144
        files = {"file": ("big", ONE_CHUNK_PLUS_ONE.data() * 2)}
        r = await client.post(f"{API}/upload", files=files, headers=auth)
        assert r.status_code == 413


async def test_uploads_are_exempt_from_the_generic_body_limit_and_nothing_else_is(
    make_client: ClientFactory,
):
    async with make_client(max_request_body_bytes=4096) as client:
        auth = bearer(await sign_in(client, ALICE))
        r = await _put(client, auth, MULTI_MIB.data())
        assert r.status_code == 201
        r = await client.put("/api/storage/upload", content=ONE_CHUNK.data(), headers=auth)
        assert r.status_code == 201  # the /api mirror too
        r = await client.post(f"{API}/pin/{HELLO.v1}", content=b"x" * 5000, headers=auth)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


async def test_quota_refuses_pins_that_do_not_fit(make_client: ClientFactory):
    async with make_client(storage_quota_bytes=300_000, storage_max_pins=2) as client:
        auth = bearer(await sign_in(client, ALICE))
        assert (await _put(client, auth, ONE_CHUNK.data())).status_code == 201
        r = await _put(client, auth, ONE_CHUNK_PLUS_ONE.data())  # refused before streaming
        assert r.status_code == 409
        err = r.json()["error"]
        assert err["code"] == "storage_quota_exceeded"
        assert err["details"]["quota_bytes"] == 300_000
        assert err["details"]["pinned_bytes"] == 262144
        assert (
            "262145 more bytes would exceed the storage quota (STORAGE_QUOTA_BYTES)"
            in (err["message"])
        )
        r = await _put(client, auth, ONE_CHUNK_PLUS_ONE.data(), pin="false")  # unpinned: fine
        assert r.status_code == 201
        r = await client.post(f"{API}/pin/{ONE_CHUNK_PLUS_ONE.v1}", headers=auth)
        assert r.status_code == 409
        assert (await _put(client, auth, HELLO.data())).status_code == 201
        r = await _put(client, auth, b"third pin")
        assert r.status_code == 409 and "2 of 2 pins" in r.json()["error"]["message"]
        # The pin count is what stops it, and the message says so (not "bytes would exceed").
        assert (
            "one more pin would exceed the pin limit (STORAGE_MAX_PINS)"
            in (r.json()["error"]["message"])
        )
        usage = (await client.get(f"{API}/usage", headers=auth)).json()
        assert usage["pinned_bytes"] == 262144 + 12 and usage["pin_count"] == 2
        assert usage["quota_bytes"] == 300_000 and usage["max_pins"] == 2
        # Unpinning frees the room.
        assert (await client.delete(f"{API}/pin/{HELLO.v1}", headers=auth)).status_code == 204
        assert (await _put(client, auth, b"third pin")).status_code == 201


# -- pins


async def test_pin_is_idempotent_and_unpin_removes_only_yours(
    client: httpx.AsyncClient, alice: dict[str, str]
):
    await _put(client, alice, HELLO.data(), pin="false")
    r = await client.post(f"{API}/pin/{HELLO.v1}", json={"name": "greeting"}, headers=alice)
    assert r.status_code == 201
    assert r.json()["name"] == "greeting" and r.json()["size"] == 12
    again = await client.post(f"{API}/pin/{HELLO.v0}", headers=alice)  # the v0 alias: same pin
    assert again.status_code == 200 and again.json()["id"] == r.json()["id"]
    bob = bearer(await sign_in(client, BOB))
    assert (await client.delete(f"{API}/pin/{HELLO.v1}", headers=bob)).status_code == 404
    assert (await client.delete(f"{API}/pin/{HELLO.v1}", headers=alice)).status_code == 204
    r = await client.delete(f"{API}/pin/{HELLO.v1}", headers=alice)
    assert r.status_code == 404 and r.json()["error"]["code"] == "pin_not_found"
    usage = (await client.get(f"{API}/usage", headers=alice)).json()
    assert usage["pinned_bytes"] == 0 and usage["pin_count"] == 0


async def test_pin_honours_idempotency_key(client: httpx.AsyncClient, alice: dict[str, str]):
    await _put(client, alice, HELLO.data(), pin="false")
    headers = {**alice, "Idempotency-Key": "pin-1"}
    first = await client.post(f"{API}/pin/{HELLO.v1}", headers=headers)
    second = await client.post(f"{API}/pin/{HELLO.v1}", headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()


async def test_pins_list_pages_newest_first(
    client: httpx.AsyncClient, alice: dict[str, str], container: Container
):
    cids = []
    for i in range(3):
        cids.append((await _put(client, alice, f"file {i}".encode())).json()["cid"])
        container.clock.advance(1)  # type: ignore[attr-defined]
    page = (await client.get(f"{API}/pins", params={"limit": 2}, headers=alice)).json()
    assert [p["cid"] for p in page["items"]] == cids[::-1][:2]
    rest = await client.get(
        f"{API}/pins", params={"limit": 2, "cursor": page["next_cursor"]}, headers=alice
    )
    assert [p["cid"] for p in rest.json()["items"]] == cids[:1]


# -- garbage collection


async def test_gc_keeps_what_any_account_pins_and_removes_the_rest(
    client: httpx.AsyncClient, alice: dict[str, str], container: Container
):
    bob = bearer(await sign_in(client, BOB))
    await _put(client, alice, MULTI_MIB.data())
    await client.post(f"{API}/pin/{MULTI_MIB.v1}", headers=bob)
    await _put(client, alice, HELLO.data(), pin="false")
    store = container.content_store

    async def gc() -> service.GcResult:
        container.clock.advance(5)  # type: ignore[attr-defined]  # past the files' mtimes
        return await service.collect_garbage(container.db, store, container.clock.now(), 0)

    result = await gc()
    assert result.report.removed_blocks == 1  # hello, unpinned
    assert result.pruned_objects == 1
    r = await client.get(f"{API}/info/{HELLO.v1}", headers=alice)
    assert r.status_code == 404
    await client.delete(f"{API}/pin/{MULTI_MIB.v1}", headers=alice)
    await gc()
    got = await client.get(f"{API}/download/{MULTI_MIB.v1}", headers=alice)
    assert got.content == MULTI_MIB.data()  # Bob still pins it
    await client.delete(f"{API}/pin/{MULTI_MIB.v1}", headers=bob)
    result = await gc()
    assert result.report.removed_blocks == 14  # 13 leaves and the root
    assert (await client.get(f"{API}/download/{MULTI_MIB.v1}", headers=alice)).status_code == 404


async def test_gc_spares_young_blocks_and_repairs_a_lost_store_pin(
    client: httpx.AsyncClient, alice: dict[str, str], container: Container
):
    await _put(client, alice, HELLO.data(), pin="false")
    await _put(client, alice, ONE_CHUNK.data())
    store = container.content_store
    from parity.core.storage.multiformats import Cid

    await store.unpin(Cid.parse(ONE_CHUNK.v1))  # as if a release raced a new pin
    result = await service.collect_garbage(container.db, store, container.clock.now(), 3600)
    assert result.report.removed_blocks == 0  # hello is younger than the grace period
    assert result.repinned == 1
    assert Cid.parse(ONE_CHUNK.v1) in await store.pins()


# -- streaming


async def test_upload_streams_without_holding_the_file(
    client: httpx.AsyncClient, alice: dict[str, str]
):
    total = 48 << 20
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        block = hashlib.shake_128(b"stream").digest(1 << 16)
        for i in range(total >> 16):
            piece = block[:-4] + i.to_bytes(4, "big")
            digest.update(piece)
            yield piece

    tracemalloc.start()
    try:
        r = await client.put(f"{API}/upload", content=body(), headers=alice)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 201, r.text
    assert r.json()["size"] == total
    # Three 2 MiB batches in flight plus hashing copies: under 12 MiB, 12.9 MiB seen on a
    # loaded machine; holding the file would be 48 MiB and more.
    assert peak < 16 << 20, f"peak Python allocations {peak} bytes for a {total}-byte upload"


async def test_download_streams_in_pieces(
    client: httpx.AsyncClient, alice: dict[str, str], container: Container
):
    await _put(client, alice, MULTI_MIB.data())
    app = create_app(container, run_migrations=False, start_jobs=False)
    messages: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"{API}/download/{MULTI_MIB.v1}",
        "raw_path": f"{API}/download/{MULTI_MIB.v1}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"parity.test"), (b"authorization", alice["Authorization"].encode())],
        "client": ("127.0.0.1", 1),
        "server": ("parity.test", 80),
    }

    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    bodies = [m["body"] for m in messages if m["type"] == "http.response.body" and m.get("body")]
    assert b"".join(bodies) == MULTI_MIB.data()
    # Blocks are sent in pieces of at most 1 MiB (several 256 KiB blocks joined off the loop).
    assert len(bodies) >= 4 and max(len(b) for b in bodies) <= 1 << 20


async def test_status_reports_the_content_store(client: httpx.AsyncClient, container: Container):
    status = (await client.get("/api/v1/status")).json()
    assert status["backends"]["content_store"] == "local"
    assert status["storage"] == {
        "kind": "local",
        "path": str(Path(container.settings.home) / "blocks"),
        "reachable": True,
    }


async def test_concurrent_pins_never_overrun_the_quota_or_double_count(make_client: ClientFactory):
    # On PostgreSQL the account's usage row lock serializes the two checks.
    async with make_client(storage_quota_bytes=300_000) as client:
        auth = bearer(await sign_in(client, ALICE))
        for data in (ONE_CHUNK.data(), ONE_CHUNK_PLUS_ONE.data()):
            assert (await _put(client, auth, data, pin="false")).status_code == 201
        both = await asyncio.gather(
            client.post(f"{API}/pin/{ONE_CHUNK.v1}", headers=auth),
            client.post(f"{API}/pin/{ONE_CHUNK_PLUS_ONE.v1}", headers=auth),
        )
        assert sorted(r.status_code for r in both) == [201, 409]
        await _put(client, auth, HELLO.data(), pin="false")
        same = await asyncio.gather(
            *(client.post(f"{API}/pin/{HELLO.v1}", headers=auth) for _ in range(2)),
            _put(client, auth, HELLO.data()),
        )
        assert sorted(r.status_code for r in same) == [200, 201, 201]
        usage = (await client.get(f"{API}/usage", headers=auth)).json()
        assert usage["pin_count"] == 2
        assert usage["pinned_bytes"] in (262144 + 12, 262145 + 12)

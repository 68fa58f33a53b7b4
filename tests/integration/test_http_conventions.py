"""Error envelope, route mirroring, idempotency, request ids, body limits, offline docs, and
the unit of work committing before the response."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from parity.app import create_app
from parity.auth.models import AuthToken
from parity.container import Container
from parity.db.session import Database
from tests.conftest import ALICE, TEST_DB, bearer, make_settings, sign_in


def _is_envelope(body: dict[str, object]) -> bool:
    err = body.get("error")
    return isinstance(err, dict) and {"code", "message", "details"} <= set(err)


async def test_unknown_route_gets_the_envelope(client: httpx.AsyncClient):
    r = await client.get("/api/v1/no-such-thing")
    assert r.status_code == 404
    assert _is_envelope(r.json()) and r.json()["error"]["code"] == "not_found"


async def test_wrong_method_gets_the_envelope(client: httpx.AsyncClient):
    r = await client.delete("/api/v1/auth/nonce")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


async def test_malformed_json_is_422_not_500(client: httpx.AsyncClient):
    r = await client.post(
        "/api/v1/auth/nonce", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert _is_envelope(r.json())


async def test_validation_error_names_the_field(client: httpx.AsyncClient):
    token = await sign_in(client, ALICE)
    r = await client.post("/api/v1/auth/keys", json={"name": ""}, headers=bearer(token))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert err["details"]["errors"][0]["field"] == "name"
    assert "name" in err["message"]
    extra = await client.post(
        "/api/v1/auth/keys", json={"name": "x", "bogus": 1}, headers=bearer(token)
    )
    assert extra.status_code == 422
    assert extra.json()["error"]["details"]["errors"][0]["field"] == "bogus"


async def test_every_v1_route_is_mirrored_under_api(client: httpx.AsyncClient):
    spec = (await client.get("/openapi.json")).json()
    v1 = [(p, m) for p, ops in spec["paths"].items() if p.startswith("/api/v1/") for m in ops]
    assert len(v1) >= 8
    for path, method in v1:
        concrete = re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", path)
        mirror = "/api/" + concrete[len("/api/v1/") :]
        r = await client.request(method.upper(), mirror)
        body = r.json() if r.content else {}
        assert body.get("error", {}).get("message") != "no such route", (method, mirror)
        assert r.status_code != 405, (method, mirror)


async def test_health_and_status_on_both_prefixes(client: httpx.AsyncClient):
    for prefix in ("/api", "/api/v1"):
        h = await client.get(f"{prefix}/health")
        assert h.status_code == 200 and h.json()["database"] == "ok"
    s = (await client.get("/api/status")).json()
    assert s["version"] and s["uptime_seconds"] >= 0
    assert s["backends"]["database"] == ("postgresql" if TEST_DB == "postgres" else "sqlite")
    assert s["backends"]["chain"] == "off"
    assert "accounts" in s["counts"]


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient):
    r = await client.get("/", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r2 = await client.get("/", headers={"X-Request-ID": "bad id with spaces"})
    assert (
        r2.headers["x-request-id"] != "bad id with spaces" and len(r2.headers["x-request-id"]) == 32
    )


async def test_oversized_body_is_413(container: Container):
    small = Container(
        settings=make_settings(
            container.settings.resolved_database_url,
            container.settings.home,
            max_request_body_bytes=100,
        ),
        db=container.db,
        clock=container.clock,
    )
    app = create_app(small, run_migrations=False, start_jobs=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    ) as c:
        r = await c.post("/api/v1/auth/nonce", json={"address": "0x" + "a" * 40, "pad": "x" * 200})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_docs_page_works_offline(client: httpx.AsyncClient):
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text.lower()
    assert "/openapi.json" in docs.text
    spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/auth/token" in spec["paths"]
    # The /api mirror is served but not duplicated in the schema.
    assert "/api/auth/token" not in spec["paths"]


async def test_idempotency_key_replays_the_stored_response(client: httpx.AsyncClient):
    token = await sign_in(client, ALICE)
    h = bearer(token) | {"Idempotency-Key": "create-1"}
    first = await client.post("/api/v1/auth/keys", json={"name": "k"}, headers=h)
    again = await client.post("/api/auth/keys", json={"name": "k"}, headers=h)
    assert first.status_code == again.status_code == 201
    # The same key, its secret issued anew: a secret is never stored to be replayed.
    same = {k: v for k, v in first.json().items() if k not in ("key", "prefix")}
    assert {k: v for k, v in again.json().items() if k not in ("key", "prefix")} == same
    assert again.json()["key"] != first.json()["key"]
    me = "/api/v1/auth/me"
    assert (await client.get(me, headers=bearer(first.json()["key"]))).status_code == 401
    assert (await client.get(me, headers=bearer(again.json()["key"]))).status_code == 200
    listed = await client.get("/api/v1/auth/keys", headers=bearer(token))
    assert len(listed.json()["items"]) == 1
    changed = await client.post("/api/v1/auth/keys", json={"name": "other"}, headers=h)
    assert changed.status_code == 422
    assert changed.json()["error"]["code"] == "idempotency_key_reused"
    # Without the header every POST creates.
    await client.post("/api/v1/auth/keys", json={"name": "k"}, headers=bearer(token))
    listed = await client.get("/api/v1/auth/keys", headers=bearer(token))
    assert len(listed.json()["items"]) == 2


async def test_idempotency_keys_are_scoped_to_the_identity(client: httpx.AsyncClient):
    from tests.conftest import BOB

    a = await sign_in(client, ALICE)
    b = await sign_in(client, BOB)
    ra = await client.post(
        "/api/v1/auth/keys", json={"name": "k"}, headers=bearer(a) | {"Idempotency-Key": "same"}
    )
    rb = await client.post(
        "/api/v1/auth/keys", json={"name": "k"}, headers=bearer(b) | {"Idempotency-Key": "same"}
    )
    assert ra.status_code == rb.status_code == 201
    assert ra.json()["id"] != rb.json()["id"]


async def test_commit_failure_is_503_and_changes_nothing(
    client: httpx.AsyncClient, container: Container, monkeypatch: pytest.MonkeyPatch
):
    token = await sign_in(client, ALICE)

    async def count() -> int:
        async with container.db.read_session() as s:
            return int(await s.scalar(select(func.count()).select_from(AuthToken)) or 0)

    before = await count()
    original = AsyncSession.commit

    async def failing_commit(self: AsyncSession) -> None:
        raise OperationalError("COMMIT", {}, Exception("injected commit failure"))

    monkeypatch.setattr(AsyncSession, "commit", failing_commit)
    r = await client.post("/api/v1/auth/keys", json={"name": "lost"}, headers=bearer(token))
    monkeypatch.setattr(AsyncSession, "commit", original)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "database_unavailable"
    assert r.headers["retry-after"]
    assert await count() == before
    assert "stack" not in r.text.lower() and "Traceback" not in r.text


async def _key_created_while_commit_fails(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, state: str, message: str
) -> httpx.Response:
    """``POST /auth/keys`` whose commit raises the database error of SQLSTATE ``state``, as
    asyncpg (and SQLAlchemy's wrapper) carry it."""
    token = await sign_in(client, ALICE)

    class DatabaseError(Exception):
        sqlstate = state

    async def failing_commit(self: AsyncSession) -> None:
        raise DBAPIError("COMMIT", {}, DatabaseError(message))

    monkeypatch.setattr(AsyncSession, "commit", failing_commit)
    return await client.post("/api/v1/auth/keys", json={"name": "k"}, headers=bearer(token))


async def test_a_deadlock_or_serialization_failure_is_a_retryable_503(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
):
    r = await _key_created_while_commit_fails(client, monkeypatch, "40P01", "deadlock detected")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "database_conflict"
    assert r.headers["retry-after"] == "1"


async def test_a_value_the_database_refuses_for_its_column_is_a_422(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
):
    # 22001: string data, right truncation.
    r = await _key_created_while_commit_fails(
        client, monkeypatch, "22001", "value too long for type character varying(255)"
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_input"
    assert r.json()["error"]["details"] == {"sqlstate": "22001"}


@pytest.mark.db  # picks its unreachable database by PARITY_TEST_DB, without a db fixture
async def test_database_down_gives_503_on_health_and_reads(tmp_path: Path):
    if TEST_DB == "postgres":
        url = "postgresql+asyncpg://postgres@127.0.0.1:1/parity"  # nothing listens on port 1
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'x' / 'parity.db'}"
    settings = make_settings(url, tmp_path / "home")
    c = Container(settings=settings, db=Database(url))
    app = create_app(c, run_migrations=False, start_jobs=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    ) as cl:
        h = await cl.get("/api/health")
        assert h.status_code == 503
        assert h.json()["error"]["code"] == "database_unavailable"
        n = await cl.post("/api/v1/auth/nonce", json={"address": ALICE.address})
        assert n.status_code == 503
        # The no-database endpoint still answers.
        assert (await cl.get("/")).status_code == 200
    await c.db.dispose()


def test_secrets_never_reach_the_log(capsys: pytest.CaptureFixture[str]):
    from parity.logging import configure_logging, get_logger

    configure_logging("info", "json")
    get_logger("t").info(
        "login",
        authorization="Bearer ps_sess_" + "a" * 64,
        signature="0x" + "b" * 130,
        note="token ps_key_" + "c" * 64 + " used",
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    data = json.loads(line)
    assert data["authorization"] == "[redacted]"
    assert data["signature"] == "[redacted]"
    assert "c" * 64 not in data["note"]


def _sync_callables(dependant: Any, where: str) -> list[str]:
    found = []
    for dep in dependant.dependencies:
        call = dep.call
        if not (inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)):
            found.append(f"{where}: {getattr(call, '__qualname__', call)!r}")
        found += _sync_callables(dep, where)
    return found


def _api_routes(routes: Any) -> Any:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # an included router
            yield from _api_routes(route.original_router.routes)
        elif hasattr(route, "routes"):  # a mount
            yield from _api_routes(route.routes)


def test_no_route_or_dependency_runs_in_the_thread_pool(container: Container):
    # FastAPI runs a plain ``def`` endpoint or dependency in its thread pool: a thread hop and
    # a GIL hand-over on every request of that route.
    app = create_app(container, run_migrations=False, start_jobs=False)
    found = []
    routes = list(_api_routes(app.routes))
    assert len(routes) > 100  # the walk reaches the routes of the included routers
    for route in routes:
        where = f"{sorted(route.methods)} {route.path}"
        if not inspect.iscoroutinefunction(route.endpoint):
            found.append(f"{where}: the endpoint")
        found += _sync_callables(route.dependant, where)
    assert found == []


async def test_no_secret_is_stored_to_be_replayed(client: httpx.AsyncClient, container: Container):
    # Stored responses are kept 24 h in plain text: an API key, a runner token or a claim token
    # in them would outlive the hashes that protect them everywhere else.
    from parity.idempotency.models import IdempotencyRecord
    from tests.integration.queue_helpers import claimed, create_task

    token = await sign_in(client, ALICE)
    h = bearer(token) | {"Idempotency-Key": "secret-1"}
    assert (
        await client.post("/api/v1/auth/keys", json={"name": "k"}, headers=h)
    ).status_code == 201
    await create_task(client, token)
    body = {
        "device_id": "idem-device",
        "capabilities": {"cpu_cores": 4, "memory_mb": 8192, "gpus": 0, "docker": False},
    }
    hr = bearer(token) | {"Idempotency-Key": "register-1"}
    first = await client.post("/api/v1/runners", json=body, headers=hr)
    runner = first.json()["runner_token"]
    await claimed(client, runner)  # a claim a re-registration hands back with a fresh token
    again = await client.post("/api/v1/runners", json=body, headers=hr)
    assert again.status_code == 201 and again.json()["runner"]["id"] == first.json()["runner"]["id"]
    assert again.json()["runner_token"] != runner
    assert len(again.json()["claims"]) == 1 and again.json()["claims"][0]["claim_token"]
    me = "/api/v1/auth/me"
    assert (await client.get(me, headers=bearer(runner))).status_code == 401
    assert (await client.get(me, headers=bearer(again.json()["runner_token"]))).status_code == 200
    async with container.db.read_session() as session:
        stored = (await session.scalars(select(IdempotencyRecord.response_body))).all()
    assert len(stored) == 2
    for text in stored:  # a key's display prefix (its first 16 characters) may be there
        assert not re.search(r"ps_(key|run|claim)_[0-9a-f]{20,}", text), text


async def test_one_idempotency_key_sent_at_once_creates_once_and_says_so(
    client: httpx.AsyncClient,
):
    # Several replicas (or connections) given the same key at the same moment: one creates;
    # on PostgreSQL the others, which read no stored answer yet, were a bare 409 "conflict".
    import asyncio

    token = await sign_in(client, ALICE)
    h = bearer(token) | {"Idempotency-Key": "burst-1"}
    body = {"title": "t", "type": "command", "config": {"command": ["true"]}}
    answers = await asyncio.gather(
        *(client.post("/api/v1/tasks", json=body, headers=h) for _ in range(6))
    )
    created = {r.json()["id"] for r in answers if r.status_code == 201}
    assert len(created) == 1
    for r in answers:
        if r.status_code != 201:
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "idempotency_key_in_use"
            assert r.headers["Retry-After"] == "1"
    listed = await client.get("/api/v1/tasks", headers=bearer(token))
    assert len(listed.json()) == 1
    again = await client.post("/api/v1/tasks", json=body, headers=h)
    assert again.status_code == 201 and again.json()["id"] in created

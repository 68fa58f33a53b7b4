"""The included routers' prefix checks (parity.api.routeindex) change which requests they
decline, never which route serves a request: every route's path, with and without a trailing
slash, under every method, resolves exactly as FastAPI's own matching resolves it."""

from __future__ import annotations

import re
from typing import Any

import httpx
from starlette.routing import Match

from parity.api.routeindex import literal_prefix
from parity.app import create_app
from parity.container import Container

SAMPLE = "123e4567-e89b-12d3-a456-426614174000"
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def _resolve(routes: list[Any], path: str, method: str, *, filtered: bool) -> tuple[Any, ...]:
    """(match kind, index of the top-level route, its child scope's path params) of the first
    full match, else of the first partial one, else none, as Starlette's router picks them."""
    scope = {"type": "http", "path": path, "method": method, "root_path": "",
             "headers": [], "query_string": b""}  # fmt: skip
    partial = None
    for i, route in enumerate(routes):
        fn = route.matches if filtered else type(route).matches.__get__(route)
        match, child = fn(dict(scope))
        if match == Match.FULL:
            return ("full", i, child.get("path_params"))
        if match == Match.PARTIAL and partial is None:
            partial = ("partial", i, child.get("path_params"))
    return partial or ("none", None, None)


def _sample_paths(app: Any) -> list[str]:
    paths = set()
    for route in app.router.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        raw = (
            [getattr(c.starlette_route, "path", None) or c.path for c in contexts()]
            if (contexts)
            else [getattr(route, "path", "/")]
        )
        for p in raw:
            concrete = re.sub(r"\{[^}]*\}", SAMPLE, p)
            paths |= {concrete, concrete.rstrip("/") + "/", concrete + "/extra"}
    return sorted(paths | {"/", "/nope", "/api", "/api/v1", "/v1", "/ollama"})


def test_literal_prefix():
    assert literal_prefix("/api/v1/tasks/{task_id}/logs") == "/api/v1/tasks"
    assert literal_prefix("/api/v1/llm/prompts") == "/api/v1/llm/prompts"
    assert literal_prefix("/api/v1/storage/download/{cid:path}") == "/api/v1/storage/download"
    assert literal_prefix("/") == ""


def test_every_route_resolves_as_without_the_filters(container: Container):
    app = create_app(container, run_migrations=False, start_jobs=False)
    routes = list(app.router.routes)
    filtered = [r for r in routes if "matches" in vars(r)]
    assert len(filtered) >= 20  # both prefixes' domain routers and the gateways got a check
    paths = _sample_paths(app)
    assert len(paths) > 300
    kinds = set()
    for path in paths:
        for method in METHODS:
            want = _resolve(routes, path, method, filtered=False)
            got = _resolve(routes, path, method, filtered=True)
            assert got == want, (method, path)
            kinds.add(want[0])
    assert kinds == {"full", "partial", "none"}  # the sample reaches every outcome


async def test_mirror_and_gateway_paths_still_reach_their_routes(client: httpx.AsyncClient):
    assert (await client.get("/api/health")).status_code == 200
    assert (await client.get("/api/v1/health")).status_code == 200
    r = await client.delete("/api/llm/models")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = await client.get("/v1/models")  # the gateway wants an API key
    assert r.status_code == 401 and "error" in r.json()
    assert (await client.get("/api/llm/nothing-here")).status_code == 404

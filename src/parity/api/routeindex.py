"""Route matching that skips the included routers a path cannot reach.

FastAPI matches a request against every route of every included router, in order, until one
matches in full; each try sets and restores per-route scope state and runs the route's regex.
The app includes every domain router twice (``/api/v1`` and the ``/api`` mirror) and the
gateways after them, so a mirrored or gateway request paid for about a hundred tries (~0.3 ms
of CPU per request). Each included router here first checks the path against the literal
prefixes of its routes (the text before the first ``{`` parameter, without a trailing slash)
and declines at once when none is a prefix of it. Any path a route can match starts with that
route's literal prefix, so a router declined this way would have answered ``Match.NONE``
anyway: which route serves a request, 404s, 405s and slash redirects are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import Scope

MatchFn = Callable[[Scope], tuple[Match, Scope]]


def literal_prefix(path: str) -> str:
    """The part of a route path every matching request path starts with."""
    return path.split("{", 1)[0].rstrip("/")


def route_path(scope: Scope) -> str:
    """The request path the routes see: without the app's ``root_path`` (as Starlette's own
    routes strip it before matching)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


def _route_paths(route: Any) -> list[str]:
    contexts = route.effective_route_contexts()
    return [getattr(c.starlette_route, "path", None) or c.path for c in contexts]


def _filtered(inner: MatchFn, prefixes: tuple[str, ...]) -> MatchFn:
    def matches(scope: Scope) -> tuple[Match, Scope]:
        if not route_path(scope).startswith(prefixes):
            return Match.NONE, {}
        return inner(scope)

    return matches


def install_prefix_filters(app: FastAPI) -> int:
    """Give every included router of ``app`` its prefix check; call it once, after the last
    ``include_router``. Returns how many routers got one."""
    count = 0
    for route in app.router.routes:
        if not hasattr(route, "effective_route_contexts"):
            continue  # a plain route: one regex, nothing to skip
        prefixes = tuple(sorted({literal_prefix(p) for p in _route_paths(route)}))
        if not prefixes or "" in prefixes:
            continue  # a route at the root: every path may reach it
        route.matches = _filtered(route.matches, prefixes)  # type: ignore[method-assign,assignment]
        count += 1
    return count

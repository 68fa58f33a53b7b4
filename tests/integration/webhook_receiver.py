"""A real webhook receiver for the delivery tests: a Starlette app served by uvicorn on
127.0.0.1 (random port). It verifies Standard Webhooks signatures with
parity.webhooks.signing.verify, de-duplicates on webhook-id, can fail its first N requests
with 500, and records everything it got."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from parity.webhooks import signing
from tests.conftest import until


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.body)
        return out

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    secrets: list[str]
    now: Callable[[], int]
    fail_first: int = 0
    port: int = 0
    requests: list[Received] = field(default_factory=list)  # every POST, in order
    events: list[Received] = field(default_factory=list)  # verified and new (de-duplicated)
    duplicates: list[Received] = field(default_factory=list)
    rejected: list[tuple[Received, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def types(self) -> list[str]:
        return [str(r.json["type"]) for r in self.events]

    async def handle(self, request: Request) -> JSONResponse:
        got = Received(dict(request.headers), await request.body())
        self.requests.append(got)
        if len(self.requests) <= self.fail_first:
            return JSONResponse({"error": "failing on purpose"}, status_code=500)
        try:
            signing.verify(self.secrets, got.headers, got.body, now=self.now())
        except signing.SignatureInvalid as exc:
            self.rejected.append((got, exc.reason))
            return JSONResponse({"error": exc.reason}, status_code=400)
        if any(r.id == got.id for r in self.events):
            self.duplicates.append(got)
        else:
            self.events.append(got)
        return JSONResponse({"ok": True})


@contextlib.asynccontextmanager
async def serve(receiver: Receiver) -> AsyncIterator[Receiver]:
    app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started)
        receiver.port = server.servers[0].sockets[0].getsockname()[1]
        yield receiver
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)

"""The runner's own webhook endpoint for push offers (Standard Webhooks signatures)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from parity.webhooks.signing import SignatureInvalid, verify

OfferHandler = Callable[[str], Coroutine[Any, Any, None]]


class _QuietServer(uvicorn.Server):
    """Leaves signal handling to the runner (uvicorn would take SIGTERM/SIGINT over)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class PushReceiver:
    def __init__(self, host: str, port: int, on_offer: OfferHandler) -> None:
        self.secret: str | None = None
        self.on_offer = on_offer
        self._seen: dict[str, float] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        app = Starlette(routes=[Route("/webhook", self._handle, methods=["POST"])])
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        self.server = _QuietServer(config)

    def url(self, public_base: str | None = None) -> str:
        base = public_base.rstrip("/") if public_base else f"http://{self.host}:{self.port}"
        return f"{base}/webhook"

    async def serve(self) -> None:
        await self.server.serve(sockets=[self.sock])

    def stop(self) -> None:
        self.server.should_exit = True

    async def _handle(self, request: Request) -> JSONResponse:
        body = await request.body()
        if self.secret is None:
            return JSONResponse({"status": "not_ready"}, status_code=503)
        try:
            verify([self.secret], dict(request.headers), body, int(time.time()))
        except SignatureInvalid as exc:
            return JSONResponse({"error": str(exc)}, status_code=401)
        msg_id = request.headers.get("webhook-id", "")
        now = time.monotonic()
        self._seen = {k: t for k, t in self._seen.items() if now - t < 600}
        if msg_id in self._seen:
            return JSONResponse({"status": "duplicate"})
        self._seen[msg_id] = now
        try:
            event: dict[str, Any] = json.loads(body)
        except ValueError:
            return JSONResponse({"error": "not JSON"}, status_code=400)
        if event.get("type") != "task.offered":
            return JSONResponse({"status": "skipped"})
        task_id = str((event.get("data") or {}).get("task_id", ""))
        if task_id:
            # Answer at once; the claim races other runners on its own time.
            job = asyncio.create_task(self.on_offer(task_id))
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)
        return JSONResponse({"status": "ok"})

"""The runner's HTTP client for the server's runner API. Tokens stay in memory."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx


class ServerError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any],
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.details = details
        # Seconds the server asked to wait before trying again (its Retry-After), if it said.
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """A Retry-After header's wait in seconds (delta-seconds or an HTTP date); None when absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _error(r: httpx.Response) -> ServerError:
    try:
        err = r.json().get("error", {})
    except (ValueError, AttributeError):
        err = {}
    if not isinstance(err, dict):
        err = {}
    return ServerError(
        r.status_code,
        str(err.get("code", "http_error")),
        str(err.get("message", r.text[:200])),
        dict(err.get("details") or {}),
        parse_retry_after(r.headers.get("retry-after")),
    )


# The answers of a server without ``PUT /runners/tasks/{id}/output`` (an earlier version).
_NO_OUTPUT_ROUTE = frozenset(
    {(404, "not_found"), (405, "method_not_allowed"), (413, "payload_too_large")}
)


def _raise(r: httpx.Response) -> None:
    if r.status_code >= 400:
        raise _error(r)


def refuses_webhook(err: ServerError) -> bool:
    """Whether a registration was refused because of its ``webhook`` (the SSRF guard's
    ``webhook_url_refused``, or a validation error naming the field): the rest of it is fine,
    and the runner can register without push."""
    if err.status not in (400, 422):
        return False
    if err.code == "webhook_url_refused" or err.details.get("field") == "webhook":
        return True
    fields = [e.get("field") for e in err.details.get("errors") or [] if isinstance(e, dict)]
    return "webhook" in fields


class ServerClient:
    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(15.0, read=45.0),
            transport=transport,
            headers={"User-Agent": "parity-runner"},
        )
        self.session_token: str | None = None
        self.session_expires_at: str | None = None  # as the sign-in answered it
        self.runner_token: str | None = None
        # Called when the server refuses the push webhook at registration; the runner then
        # registers again without it (pull only) instead of stopping.
        self.on_push_refused: Callable[[ServerError], None] | None = None

    async def close(self) -> None:
        await self.http.aclose()

    def _auth(self, runner: bool = True) -> dict[str, str]:
        token = self.runner_token if runner else self.session_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def sign_in(self, account: Any) -> str:
        from eth_account.messages import encode_defunct  # slow to import: only where signing

        r = await self.http.post("/api/v1/auth/nonce", json={"address": account.address})
        _raise(r)
        body = r.json()
        sig = account.sign_message(encode_defunct(text=body["message"])).signature.hex()
        r = await self.http.post(
            "/api/v1/auth/token",
            json={"address": account.address, "signature": sig, "nonce": body["nonce"]},
        )
        _raise(r)
        grant = r.json()
        self.session_token = str(grant["token"])
        self.session_expires_at = str(grant["expires_at"]) if grant.get("expires_at") else None
        return self.session_token

    async def register(self, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post("/api/v1/runners", json=body, headers=self._auth(runner=False))
        if r.status_code >= 400 and body.get("webhook") and self.on_push_refused is not None:
            refusal = _error(r)
            if refuses_webhook(refusal):
                self.on_push_refused(refusal)
                body = {k: v for k, v in body.items() if k != "webhook"}
                r = await self.http.post(
                    "/api/v1/runners", json=body, headers=self._auth(runner=False)
                )
        _raise(r)
        data: dict[str, Any] = r.json()
        self.runner_token = str(data["runner_token"])
        return data

    async def heartbeat(self, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post("/api/v1/runners/heartbeat", json=body, headers=self._auth())
        _raise(r)
        return dict(r.json())

    async def claim_next(self, wait: float, max_tasks: int = 1) -> list[dict[str, Any]]:
        """Claim and start (``start=true``: the runner executes at once, so one request less
        per task; the server's run clock starts here)."""
        r = await self.http.post(
            "/api/v1/runners/tasks/claim",
            params={"wait": wait, "max_tasks": max_tasks, "start": "true"},
            headers=self._auth(),
            timeout=httpx.Timeout(15.0, read=wait + 20.0),
        )
        if r.status_code == 204:
            return []
        _raise(r)
        data = r.json()
        return list(data["claims"]) if "claims" in data else [data]

    async def reconcile(self, claims: list[str]) -> list[str]:
        """List the claim tokens held; the server gives back every other claim of this runner
        (ones whose answer was lost) and answers their task ids."""
        r = await self.http.post(
            "/api/v1/runners/tasks/reconcile", json={"claims": claims}, headers=self._auth()
        )
        _raise(r)
        return [str(x) for x in r.json()["released"]]

    async def claim(self, task_id: str) -> dict[str, Any]:
        r = await self.http.post(
            f"/api/v1/runners/tasks/{task_id}/claim", params={"start": "true"}, headers=self._auth()
        )
        _raise(r)
        return dict(r.json())

    async def transition(self, task_id: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post(
            f"/api/v1/runners/tasks/{task_id}/{action}", json=body, headers=self._auth()
        )
        _raise(r)
        return dict(r.json())

    async def stream(
        self, task_id: str, token: str, deltas: AsyncIterator[str | None]
    ) -> dict[str, Any]:
        """Relay an llm task's token deltas as one chunked NDJSON request (fenced by the claim
        token in ``X-Claim-Token``); answers once ``deltas`` ends. A None is sent as a blank
        line (the server skips it): it keeps a silent stream's request alive."""

        async def body() -> AsyncIterator[bytes]:
            async for text in deltas:
                yield b"\n" if text is None else (json.dumps({"delta": text}) + "\n").encode()

        r = await self.http.post(
            f"/api/v1/runners/tasks/{task_id}/stream",
            content=body(),
            headers={
                **self._auth(),
                "X-Claim-Token": token,
                "Content-Type": "application/x-ndjson",
            },
            # Open as long as the backend generates.
            timeout=httpx.Timeout(15.0, read=None, write=None),
        )
        _raise(r)
        return dict(r.json())

    async def logs(self, task_id: str, token: str, seq: int, lines: list[str]) -> None:
        await self.transition(task_id, "logs", {"claim_token": token, "seq": seq, "lines": lines})

    async def my_runners(self) -> list[dict[str, Any]]:
        r = await self.http.get("/api/v1/runners", headers=self._auth(runner=False))
        _raise(r)
        return list(r.json()["items"])

    async def ledger_balance(self) -> dict[str, Any]:
        """The wallet's ledger balance: runners earn for their owner's account."""
        r = await self.http.get("/api/v1/ledger/balance", headers=self._auth(runner=False))
        _raise(r)
        return dict(r.json())

    async def upload(self, data: bytes) -> str:
        """Store bytes in the server's content store; returns the CID."""
        r = await self.http.put(
            "/api/v1/storage/upload",
            content=data,
            headers={**self._auth(), "content-type": "application/octet-stream"},
            timeout=httpx.Timeout(120.0),
        )
        _raise(r)
        return str(r.json()["cid"])

    async def upload_output(self, task_id: str, claim_token: str, data: bytes) -> str:
        """Store the output of a task this runner holds; returns the CID. The server pins it
        for the task's creator. A server without that route (an earlier version: 404/405, or
        413 ``payload_too_large`` when the output passes its ``MAX_REQUEST_BODY_BYTES``, which
        it applies before routing) gets a plain upload instead, pinned for this runner's
        wallet as such servers did. A server with the route limits it by
        ``STORAGE_MAX_UPLOAD_BYTES`` alone (413 ``upload_too_large``)."""
        r = await self.http.put(
            f"/api/v1/runners/tasks/{task_id}/output",
            content=data,
            headers={
                **self._auth(),
                "content-type": "application/octet-stream",
                "X-Claim-Token": claim_token,
            },
            timeout=httpx.Timeout(120.0),
        )
        if (r.status_code, _error(r).code) in _NO_OUTPUT_ROUTE:
            return await self.upload(data)
        _raise(r)
        return str(r.json()["cid"])

    async def model_update(self, content: bytes) -> dict[str, Any]:
        """Post an FL model update (a JSON body, fenced by its task's claim token); the server
        completes the task when it accepts the update."""
        r = await self.http.post(
            "/api/v1/federated-learning/model-updates",
            content=content,
            headers={**self._auth(), "Content-Type": "application/json"},
            timeout=httpx.Timeout(30.0, read=120.0),
        )
        _raise(r)
        return dict(r.json())

    def _secagg_path(self, session_id: str, round_number: int, stage: str) -> str:
        return (
            f"/api/v1/federated-learning/sessions/{session_id}/rounds/{round_number}/secagg/{stage}"
        )

    async def secagg_post(
        self,
        session_id: str,
        round_number: int,
        stage: str,
        body: dict[str, Any],
        wait: float | None = None,
    ) -> dict[str, Any]:
        """Post this participant's message for a SecAgg+ stage (fenced by the task's claim
        token in ``body["claim_token"]``); with ``wait``, the answer's ``reply`` carries the
        messages it needs next once final (waiting up to ``wait`` seconds)."""
        r = await self.http.post(
            self._secagg_path(session_id, round_number, stage),
            json=body,
            params=None if wait is None else {"wait": wait},
            headers=self._auth(),
            timeout=httpx.Timeout(30.0, read=120.0 + (wait or 0.0)),
        )
        _raise(r)
        return dict(r.json())

    async def secagg_get(
        self, session_id: str, round_number: int, stage: str, token: str, wait: float
    ) -> dict[str, Any]:
        """The messages of a SecAgg+ stage addressed to this participant, long-polling up to
        ``wait`` seconds; ``ready`` is false until the stage's messages are final."""
        r = await self.http.get(
            self._secagg_path(session_id, round_number, stage),
            params={"wait": wait},
            headers={**self._auth(), "X-Claim-Token": token},
            timeout=httpx.Timeout(15.0, read=wait + 20.0),
        )
        _raise(r)
        return dict(r.json())

    async def download(self, cid: str) -> AsyncIterator[bytes]:
        """Stream content by CID from the server's content store."""
        async with self.http.stream(
            "GET",
            f"/api/v1/storage/download/{cid}",
            headers=self._auth(),
            timeout=httpx.Timeout(30.0, read=300.0),
        ) as r:
            if r.status_code >= 400:
                await r.aread()
                _raise(r)
            async for chunk in r.aiter_bytes(1024 * 1024):
                yield chunk

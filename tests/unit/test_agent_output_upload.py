"""parity-runner stores a large output through the task's output route (fenced by its claim
token, pinned for the task's creator); against a server without that route (an earlier
version: 404 not_found / 405, or 413 payload_too_large past its request body limit) it
falls back to a plain upload; any other refusal, the route's own 413 included, is raised."""

from __future__ import annotations

import httpx
import pytest

from parity.agent.client import ServerClient, ServerError


def _client(handler) -> ServerClient:  # type: ignore[no-untyped-def]
    client = ServerClient("http://server", transport=httpx.MockTransport(handler))
    client.runner_token = "rt"
    return client


def _error(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": code, "details": {}}})


async def test_the_output_goes_to_the_tasks_route_with_its_claim_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"cid": "bafk-output"})

    client = _client(handler)
    assert await client.upload_output("t1", "claim-1", b"data") == "bafk-output"
    [request] = seen
    assert (request.method, request.url.path) == ("PUT", "/api/v1/runners/tasks/t1/output")
    assert request.headers["x-claim-token"] == "claim-1"
    assert request.content == b"data"


@pytest.mark.parametrize(
    "status,code",
    [
        (404, "not_found"),
        (405, "method_not_allowed"),
        # An output past an earlier server's MAX_REQUEST_BODY_BYTES: refused before routing.
        (413, "payload_too_large"),
    ],
)
async def test_a_server_without_the_route_gets_a_plain_upload(status: int, code: str) -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path.endswith("/output"):
            return _error(status, code)
        return httpx.Response(201, json={"cid": "bafk-plain"})

    client = _client(handler)
    assert await client.upload_output("t1", "claim-1", b"data") == "bafk-plain"
    assert paths == ["/api/v1/runners/tasks/t1/output", "/api/v1/storage/upload"]


async def test_a_refusal_of_the_route_is_not_retried_as_a_plain_upload() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return _error(409, "storage_quota_exceeded")

    client = _client(handler)
    with pytest.raises(ServerError) as caught:
        await client.upload_output("t1", "claim-1", b"data")
    assert caught.value.code == "storage_quota_exceeded"
    assert paths == ["/api/v1/runners/tasks/t1/output"]


async def test_the_routes_own_size_limit_is_not_retried_as_a_plain_upload() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return _error(413, "upload_too_large")

    client = _client(handler)
    with pytest.raises(ServerError) as caught:
        await client.upload_output("t1", "claim-1", b"data")
    assert caught.value.code == "upload_too_large"
    assert paths == ["/api/v1/runners/tasks/t1/output"]

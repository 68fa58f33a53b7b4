"""Annotated dependencies: the container, units of work, the caller's identity, idempotency.

The write unit of work commits *before* the response is sent (``scope="function"``), so a
failed commit turns into an error response instead of a success already on the wire."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncSession

from parity.auth import service as auth_service
from parity.auth.errors import SessionTokenRequired, TokenInvalid, WalletTokenRequired
from parity.auth.schemas import Principal
from parity.container import Container
from parity.db.hooks import run_after_commit
from parity.errors import InvalidInput, Unauthenticated
from parity.idempotency.service import IdempotencyGuard, request_fingerprint
from parity.runners.errors import RunnerTokenRequired


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


async def _container(request: Request) -> Container:
    # ``async`` on purpose: FastAPI runs a plain ``def`` dependency in the thread pool, a
    # thread hop (and GIL hand-over) on every request.
    return get_container(request)


ContainerDep = Annotated[Container, Depends(_container)]


async def _write_session(request: Request) -> AsyncIterator[AsyncSession]:
    container = get_container(request)
    async with container.db.write_session() as session:
        # A revocation written in this unit of work clears the token cache (auth service).
        auth_service.bind_token_cache(session, container.token_cache)
        yield session
        await session.commit()
    # Outside the write lock: wake-ups and pushes see committed data.
    await run_after_commit(session)


async def _read_session(request: Request) -> AsyncIterator[AsyncSession]:
    container = get_container(request)
    async with container.db.read_session() as session:
        yield session


WriteSession = Annotated[AsyncSession, Depends(_write_session, scope="function")]
ReadSession = Annotated[AsyncSession, Depends(_read_session, scope="function")]


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise TokenInvalid("missing Authorization: Bearer <token>", code="unauthenticated")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise TokenInvalid("Authorization must be 'Bearer <token>'", code="unauthenticated")
    return value.strip()


async def get_principal(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    container = get_container(request)
    raw = _bearer(authorization)
    # A cache hit needs no connection; a miss is a short read of its own (one statement, no
    # unit of work), released before the handler's unit of work starts.
    principal = await auth_service.authenticate(
        container.db.lookup,
        container.token_cache,
        container.settings.admins,
        container.clock.now(),
        raw,
    )
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]

# How often a long-lived response (an event or log stream) checks that its bearer token still
# holds, so a revoked or expired token stops receiving within this many seconds.
STREAM_REAUTH_SECONDS = 5.0


class StreamAuth:
    """The bearer token of a streaming response, checked again while it streams."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._checked = time.monotonic()

    async def revoked(self) -> bool:
        """True once the token no longer authenticates (revoked, expired, its runner banned);
        checked at most every STREAM_REAUTH_SECONDS (the token cache answers most checks)."""
        now = time.monotonic()
        if now - self._checked < STREAM_REAUTH_SECONDS:
            return False
        self._checked = now
        try:
            await get_principal(self._request, self._request.headers.get("authorization"))
        except Unauthenticated:
            return True
        return False


def refuse_runner_token(principal: Principal) -> Principal:
    """``principal`` unless it is a runner token (403 ``wallet_token_required``)."""
    if principal.kind == "runner":
        raise WalletTokenRequired(
            "use a wallet session or API key: a runner token does not create work, spend the "
            "wallet's funds or manage its keys"
        )
    return principal


async def get_wallet_principal(principal: CurrentPrincipal) -> Principal:
    return refuse_runner_token(principal)


# The caller of a route that creates or changes paid work, or mints or revokes credentials.
WalletPrincipal = Annotated[Principal, Depends(get_wallet_principal)]


async def get_session_principal(principal: CurrentPrincipal) -> Principal:
    """A signed-in wallet session (not a runner token, not an API key)."""
    refuse_runner_token(principal)
    if principal.kind == "api_key":
        raise SessionTokenRequired(
            "sign in (a wallet session) to create API keys: an API key cannot make more keys, "
            "so a leaked one can be revoked for good"
        )
    return principal


# The caller of a route that mints credentials (an API key).
SessionPrincipal = Annotated[Principal, Depends(get_session_principal)]


async def get_idempotency(
    request: Request,
    session: WriteSession,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> IdempotencyGuard:
    container = get_container(request)
    body = await request.body()
    # /api/v1/X and its /api/X mirror are the same resource.
    prefix = container.settings.server_endpoint
    path = request.url.path
    if path.startswith(prefix + "/v1/"):
        path = prefix + path[len(prefix) + 3 :]
    return IdempotencyGuard(
        session=session,
        identity=principal.identity,
        key=idempotency_key,
        method=request.method,
        path=path,
        fingerprint=request_fingerprint(request.method, path, body),
        now=container.clock.now(),
        ttl_seconds=container.settings.idempotency_ttl_seconds,
    )


Idempotency = Annotated[IdempotencyGuard, Depends(get_idempotency)]


async def get_runner_id(principal: CurrentPrincipal) -> uuid.UUID:
    """The calling runner (a runner token from registration), else 403 runner_token_required.
    ``async`` like every dependency here: a plain ``def`` would cost each runner request a
    thread-pool hop."""
    if principal.kind != "runner" or principal.runner_id is None:
        raise RunnerTokenRequired("this endpoint needs a runner token (from registration)")
    return principal.runner_id


CurrentRunner = Annotated[uuid.UUID, Depends(get_runner_id)]


async def get_claim_token(
    claim_token: Annotated[
        str | None, Header(alias="X-Claim-Token", description="The claim token of this task")
    ] = None,
) -> str:
    """The ``X-Claim-Token`` header of a runner call that carries no JSON body (the token
    stream, an output upload): 422 naming it when missing or empty."""
    if not claim_token:
        raise InvalidInput("X-Claim-Token", "required: the claim token of this task")
    return claim_token


ClaimTokenHeader = Annotated[str, Depends(get_claim_token)]

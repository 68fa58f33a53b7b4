"""Identity endpoints: SIWE sign-in, logout, whoami, API keys, operator token revocation."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from parity.api.deps import (
    ContainerDep,
    CurrentPrincipal,
    Idempotency,
    ReadSession,
    SessionPrincipal,
    WalletPrincipal,
    WriteSession,
)
from parity.api.jsonbody import JsonRoute
from parity.api.pagination import Page, PageParamsDep, make_page
from parity.auth import service
from parity.auth.models import AuthToken
from parity.auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    MeRead,
    NonceCreate,
    NonceRead,
    RevokedCount,
    TokenCreate,
    TokenRead,
)

router = APIRouter(route_class=JsonRoute, tags=["auth"])


def _key_read(row: AuthToken) -> ApiKeyRead:
    return ApiKeyRead(
        id=row.id,
        name=row.name,
        prefix=row.display_prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


async def _nonce_rate_limit(request: Request, c: ContainerDep) -> None:
    """Resolved before the write session: a refused request takes no database connection."""
    service.limit_nonce_requests(c.nonce_limiter, request.client.host if request.client else None)


@router.post(
    "/auth/nonce",
    response_model=NonceRead,
    dependencies=[Depends(_nonce_rate_limit)],
    responses={429: {"description": "Too many nonce requests from this client address"}},
)
async def create_nonce(body: NonceCreate, session: WriteSession, c: ContainerDep) -> NonceRead:
    """Issue a single-use nonce and the EIP-4361 message to sign (expires in 5 minutes).
    Limited per client address (AUTH_NONCE_RATE_PER_MINUTE): past it 429 with Retry-After."""
    row = await service.issue_nonce(session, c.auth, body.address)
    return NonceRead(nonce=row.nonce, message=row.message, expires_at=row.expires_at)


@router.post("/auth/token", response_model=TokenRead)
async def create_token(body: TokenCreate, session: WriteSession, c: ContainerDep) -> TokenRead:
    """Exchange an EIP-191 signature of the issued message for a session token (~24 h)."""
    raw, row = await service.exchange_signature(
        session, c.auth, body.address, body.signature, body.nonce
    )
    assert row.expires_at is not None
    return TokenRead(token=raw, expires_at=row.expires_at, address=row.address)


@router.post("/auth/logout", status_code=204)
async def logout(principal: CurrentPrincipal, session: WriteSession, c: ContainerDep) -> None:
    """Revoke the token this request was made with."""
    await service.logout(session, c.auth, principal)


@router.get("/auth/me", response_model=MeRead)
async def whoami(principal: CurrentPrincipal) -> MeRead:
    """Who the bearer token is: address, kind (session, API key, runner), operator scope."""
    return MeRead(
        address=principal.address,
        kind=principal.kind,
        is_admin=principal.is_admin,
        runner_id=principal.runner_id,
    )


@router.post("/auth/keys", status_code=201, response_model=ApiKeyCreated)
async def create_api_key(
    body: ApiKeyCreate,
    principal: SessionPrincipal,
    session: WriteSession,
    idem: Idempotency,
    c: ContainerDep,
) -> Any:
    """Create a named API key (usable as an OpenAI-style bearer key). The key is shown once.
    With `Idempotency-Key`, a repeat answers the same key with a new secret (the first one
    stops working): the secret itself is never stored."""
    stored = await idem.replay()
    if stored is not None:
        again = await service.reissue_api_key(
            session, c.auth, principal, uuid.UUID(stored.body["id"])
        )
        if again is None:
            return JSONResponse(stored.body, status_code=stored.status_code)
        raw, row = again
    else:
        raw, row = await service.create_api_key(
            session, c.auth, principal, body.name, body.expires_in_days
        )
    out = ApiKeyCreated(**_key_read(row).model_dump(), key=raw)
    if stored is None:
        await idem.remember(201, {**out.model_dump(mode="json"), "key": None})
    return out


@router.get("/auth/keys", response_model=Page[ApiKeyRead])
async def list_api_keys(
    principal: CurrentPrincipal, session: ReadSession, page: PageParamsDep
) -> Page[ApiKeyRead]:
    """Your API keys, newest first (cursor pagination); their secrets are never shown again."""
    rows = await service.list_api_keys(session, principal, page.limit, page.cursor)
    items = [_key_read(r) for r in rows]
    return make_page(items, rows, page.limit)


@router.delete("/auth/keys/{key_id}", response_model=ApiKeyRead)
async def revoke_api_key(
    key_id: uuid.UUID, principal: WalletPrincipal, session: WriteSession, c: ContainerDep
) -> ApiKeyRead:
    """Revoke one of your API keys (an operator: anyone's); it stops working at once."""
    row = await service.revoke_api_key(session, c.auth, principal, key_id)
    return _key_read(row)


@router.post("/admin/accounts/{address}/revoke-tokens", response_model=RevokedCount)
async def admin_revoke_tokens(
    address: str, principal: CurrentPrincipal, session: WriteSession, c: ContainerDep
) -> RevokedCount:
    """Operator only: revoke every session, runner and API-key token of an account."""
    n = await service.revoke_account_tokens(session, c.auth, principal, address)
    return RevokedCount(address=address.lower(), revoked=n)

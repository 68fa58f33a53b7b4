"""Identity use cases: SIWE sign-in, token checks, logout, API keys, operator scope.

Token checks go through the process's TokenCache (parity.auth.cache). Every revocation is
written here and makes that cache forget: the write unit of work carries the cache
(``bind_token_cache``), whichever domain's use case revokes in it."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from parity.auth import repository as repo
from parity.auth.cache import TokenCache
from parity.auth.errors import (
    AdminRequired,
    ApiKeyNotFound,
    InvalidSignature,
    NonceInvalid,
    TokenInvalid,
)
from parity.auth.models import AuthNonce, AuthToken
from parity.auth.ratelimit import ClientRateLimiter, client_key
from parity.auth.schemas import Principal
from parity.auth.signatures import checksum, normalize_address, recover_signer
from parity.clock import Clock
from parity.core.identity import siwe
from parity.core.tokens import hash_token, make_token, token_kind
from parity.db.hooks import after_commit
from parity.db.pagination import Cursor
from parity.errors import RateLimited


@dataclass(frozen=True)
class AuthConfig:
    public_url: str
    chain_id: int
    nonce_ttl_seconds: int
    session_ttl_seconds: int
    max_open_nonces: int
    admins: frozenset[str]


@dataclass(frozen=True)
class AuthDeps:
    config: AuthConfig
    clock: Clock
    random_bytes: Callable[[int], bytes]


def limit_nonce_requests(limiter: ClientRateLimiter, client_host: str | None) -> None:
    """Count a nonce request of the client at ``client_host`` (the connection's peer address,
    never a forwarded header); refused with 429 ``rate_limited`` and a ``Retry-After`` in whole
    seconds past AUTH_NONCE_RATE_PER_MINUTE with bursts of AUTH_NONCE_BURST. Called before the
    request's unit of work: a refused request does no database work."""
    wait = limiter.acquire(client_key(client_host))
    if not wait:
        return
    retry_after = max(1, math.ceil(wait))
    err = RateLimited(
        f"too many sign-in nonce requests from this client address: at most "
        f"{limiter.rate_per_minute:g} per minute in bursts of up to {limiter.burst} "
        f"(AUTH_NONCE_RATE_PER_MINUTE, AUTH_NONCE_BURST); retry in {retry_after} s",
        details={
            "limit_per_minute": limiter.rate_per_minute,
            "burst": limiter.burst,
            "retry_after_seconds": retry_after,
        },
    )
    err.retry_after = retry_after
    raise err


async def issue_nonce(session: AsyncSession, deps: AuthDeps, address: str) -> AuthNonce:
    """Create a single-use nonce and store the exact SIWE message the client must sign."""
    addr = normalize_address(address)
    now = deps.clock.now()
    # No per-address cap: anyone may ask for an address's nonces without a token, so a cap
    # would let a third party lock a wallet out of sign-in. A token request naming its nonce
    # finds it however many others were issued; one without tries the newest
    # AUTH_MAX_OPEN_NONCES. Expired nonces are pruned by the retention job. What one client may
    # ask for is capped per client address instead (limit_nonce_requests, before this).
    nonce = siwe.make_nonce(deps.random_bytes(16))
    url = urlsplit(deps.config.public_url)
    expires = now + timedelta(seconds=deps.config.nonce_ttl_seconds)
    message = siwe.build_message(
        siwe.SiweRequest(
            domain=url.netloc or url.path,
            address=checksum(addr),
            uri=deps.config.public_url,
            chain_id=deps.config.chain_id,
            nonce=nonce,
            issued_at=now,
            expiration_time=expires,
        )
    )
    row = AuthNonce(
        id=uuid.uuid4(),
        address=addr,
        nonce=nonce,
        message=message,
        issued_at=now,
        expires_at=expires,
        consumed_at=None,
    )
    await repo.add_nonce(session, row)
    return row


async def exchange_signature(
    session: AsyncSession, deps: AuthDeps, address: str, signature: str, nonce: str | None
) -> tuple[str, AuthToken]:
    """Verify an EIP-191 signature of an open nonce's message; consume the nonce and create a
    session token in the same transaction. Reused or expired nonces are refused."""
    addr = normalize_address(address)
    now = deps.clock.now()
    candidates = await repo.open_nonces(session, addr, now, deps.config.max_open_nonces, nonce)
    if not candidates:
        raise NonceInvalid("no open sign-in nonce for this address (used, expired or unknown)")
    chosen: AuthNonce | None = None
    for cand in candidates:
        if recover_signer(cand.message, signature) == addr:
            chosen = cand
            break
    if chosen is None:
        raise InvalidSignature("signature was not made by this address over an issued message")
    if not await repo.consume_nonce(session, chosen.id, now):
        raise NonceInvalid("nonce already used")
    await repo.ensure_account(session, addr, now)
    await repo.touch_login(session, addr, now)
    expires = now + timedelta(seconds=deps.config.session_ttl_seconds)
    return await _create_token(session, deps, addr, "session", expires_at=expires)


async def _create_token(
    session: AsyncSession,
    deps: AuthDeps,
    address: str,
    kind: str,
    *,
    expires_at: datetime | None,
    name: str | None = None,
    runner_id: uuid.UUID | None = None,
) -> tuple[str, AuthToken]:
    raw = make_token(kind, deps.random_bytes(32))
    row = AuthToken(
        id=uuid.uuid4(),
        kind=kind,
        token_hash=hash_token(raw),
        display_prefix=raw[:16],
        address=address,
        name=name,
        runner_id=runner_id,
        created_at=deps.clock.now(),
        expires_at=expires_at,
        revoked_at=None,
    )
    await repo.add_token(session, row)
    return raw, row


async def issue_runner_token(
    session: AsyncSession, deps: AuthDeps, address: str, runner_id: uuid.UUID
) -> tuple[str, AuthToken]:
    """A runner token lives until re-registration or revocation."""
    await repo.ensure_account(session, address, deps.clock.now())
    return await _create_token(
        session, deps, address, "runner", expires_at=None, runner_id=runner_id
    )


Lookup = Callable[[], AbstractAsyncContextManager[AsyncConnection]]


async def authenticate(
    lookup: Lookup, tokens: TokenCache, admins: frozenset[str], now: datetime, raw_token: str
) -> Principal:
    """Resolve a bearer token: from the cache when it authenticated within AUTH_CACHE_SECONDS,
    else in one indexed lookup by its SHA-256 on a connection of its own (``lookup``). Only a
    success is cached, and only when no revocation cleared the cache during the lookup."""
    if token_kind(raw_token) is None:
        raise TokenInvalid("unrecognised token")
    token_hash = hash_token(raw_token)
    cached = tokens.get(token_hash, now)
    if cached is not None:
        return cached
    generation = tokens.generation
    async with lookup() as conn:
        row = await repo.find_token(conn, token_hash)
    if row is None:
        raise TokenInvalid("unknown token")
    if row.revoked_at is not None:
        raise TokenInvalid("token revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise TokenInvalid("token expired")
    principal = Principal(
        address=row.address,
        kind=row.kind,
        token_id=row.id,
        is_admin=row.address in admins,
        runner_id=row.runner_id,
    )
    tokens.put(token_hash, principal, row.expires_at, generation, now)
    return principal


_TOKEN_CACHE = "token_cache"


def bind_token_cache(session: AsyncSession, tokens: TokenCache) -> None:
    """Attach the process's token cache to a write unit of work, for the revocations in it."""
    session.info[_TOKEN_CACHE] = tokens


def _forget_cached_tokens(session: AsyncSession) -> None:
    """After a revocation: clear the cache now, so this process refuses the token before the
    response; and again after commit, which drops what a request that read the row before the
    commit stored meanwhile, and is forwarded to the other replicas (they must not clear before
    the revocation is visible to them). A unit of work without a cache (a job, the CLI) leaves
    the servers' caches to their ttl."""
    tokens: TokenCache | None = session.info.get(_TOKEN_CACHE)
    if tokens is None:
        return
    tokens.clear(forward=False)
    after_commit(session, tokens.clear)


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise AdminRequired("this operation needs the operator scope (ADMIN_ADDRESSES)")


async def logout(session: AsyncSession, deps: AuthDeps, principal: Principal) -> None:
    if await repo.revoke_token(session, principal.token_id, deps.clock.now()):
        _forget_cached_tokens(session)


async def create_api_key(
    session: AsyncSession, deps: AuthDeps, principal: Principal, name: str, days: int | None
) -> tuple[str, AuthToken]:
    now = deps.clock.now()
    expires = now + timedelta(days=days) if days else None
    return await _create_token(
        session, deps, principal.address, "api_key", expires_at=expires, name=name
    )


async def reissue_api_key(
    session: AsyncSession, deps: AuthDeps, principal: Principal, key_id: uuid.UUID
) -> tuple[str, AuthToken] | None:
    """A new secret for one of the caller's API keys (the old secret stops working), for the
    replay of its creation: the secret is never stored where it could be read back. None when
    the key is gone (revoked, expired or not the caller's)."""
    row = await repo.get_api_key(session, key_id)
    now = deps.clock.now()
    if (
        row is None
        or row.address != principal.address
        or row.revoked_at is not None
        or (row.expires_at is not None and row.expires_at <= now)
    ):
        return None
    raw = make_token("api_key", deps.random_bytes(32))
    row.token_hash = hash_token(raw)
    row.display_prefix = raw[:16]
    await session.flush()
    _forget_cached_tokens(session)
    return raw, row


async def list_api_keys(
    session: AsyncSession, principal: Principal, limit: int, after: Cursor | None
) -> list[AuthToken]:
    return await repo.list_api_keys(session, principal.address, limit, after)


async def revoke_api_key(
    session: AsyncSession, deps: AuthDeps, principal: Principal, key_id: uuid.UUID
) -> AuthToken:
    row = await repo.get_api_key(session, key_id)
    # Someone else's key answers exactly like a missing one: ids are not an oracle.
    if row is None or (row.address != principal.address and not principal.is_admin):
        raise ApiKeyNotFound(f"API key {key_id} not found")
    if await repo.revoke_token(session, row.id, deps.clock.now()):
        _forget_cached_tokens(session)
    await session.refresh(row)
    return row


async def revoke_account_tokens(
    session: AsyncSession, deps: AuthDeps, principal: Principal, address: str
) -> int:
    """Operator action: revoke every token of an account."""
    require_admin(principal)
    n = await repo.revoke_all(session, normalize_address(address), deps.clock.now())
    if n:
        _forget_cached_tokens(session)
    return n


async def revoke_runner_tokens(session: AsyncSession, runner_id: uuid.UUID, now: datetime) -> int:
    """Re-registration and bans: the runner's earlier tokens stop working."""
    n = await repo.revoke_runner_tokens(session, runner_id, now)
    if n:
        _forget_cached_tokens(session)
    return n


async def count_accounts(session: AsyncSession) -> int:
    return await repo.count_accounts(session)

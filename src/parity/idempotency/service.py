"""Idempotency-Key on creating POSTs: same key + same identity → the stored response for the
retention window; the same key with a different body → 422. The record is written in the same
transaction as the work, so a replay can never see a response whose effects were rolled back."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from parity.errors import Conflict, InvalidInput
from parity.idempotency import repository as repo
from parity.idempotency.models import IdempotencyRecord

MAX_KEY_LENGTH = 255


class IdempotencyKeyReused(InvalidInput):
    code = "idempotency_key_reused"


class IdempotencyKeyInUse(Conflict):
    """Another request with the same key (on this replica or another) stored its answer
    first; this one changed nothing. Retried, it gets that answer."""

    code = "idempotency_key_in_use"
    retry_after = 1


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: Any


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


@dataclass
class IdempotencyGuard:
    session: AsyncSession
    identity: str
    key: str | None
    method: str
    path: str
    fingerprint: str
    now: datetime
    ttl_seconds: int

    async def replay(self) -> StoredResponse | None:
        if self.key is None:
            return None
        if not self.key or len(self.key) > MAX_KEY_LENGTH:
            raise InvalidInput("Idempotency-Key", f"must be 1 to {MAX_KEY_LENGTH} characters")
        rec = await repo.find(self.session, self.identity, self.key)
        if rec is None:
            return None
        if rec.expires_at <= self.now:
            await repo.remove(self.session, rec)
            return None
        if rec.request_hash != self.fingerprint:
            raise IdempotencyKeyReused(
                "Idempotency-Key", "already used with a different request body or path"
            )
        return StoredResponse(rec.status_code, json.loads(rec.response_body))

    async def remember(self, status_code: int, body: Any) -> None:
        if self.key is None:
            return
        try:
            await self._store(status_code, body)
        except IntegrityError:
            # Raised out of the unit of work: nothing this request wrote is committed.
            raise IdempotencyKeyInUse(
                "another request with this Idempotency-Key was handled at the same time; "
                "retry to get its answer",
                details={"field": "Idempotency-Key"},
            ) from None

    async def _store(self, status_code: int, body: Any) -> None:
        await repo.add(
            self.session,
            IdempotencyRecord(
                id=uuid.uuid4(),
                identity=self.identity,
                key=self.key,
                method=self.method,
                path=self.path,
                request_hash=self.fingerprint,
                status_code=status_code,
                response_body=json.dumps(body, separators=(",", ":")),
                created_at=self.now,
                expires_at=self.now + timedelta(seconds=self.ttl_seconds),
            ),
        )

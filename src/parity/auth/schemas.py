from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from parity.db.types import NameText


@dataclass(frozen=True)
class Principal:
    """Who is calling: always derived from the bearer token, never from headers or bodies."""

    address: str
    kind: str  # session | runner | api_key
    token_id: uuid.UUID
    is_admin: bool
    runner_id: uuid.UUID | None = None

    @property
    def identity(self) -> str:
        return self.address


class NonceCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    address: str = Field(description="Wallet address (0x…); mixed case must pass EIP-55")


class NonceRead(BaseModel):
    nonce: str
    message: str
    expires_at: datetime


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    address: str
    signature: str = Field(description="EIP-191 signature of the issued message (hex, 65 bytes)")
    nonce: str | None = Field(None, max_length=64)


class TokenRead(BaseModel):
    token: str
    expires_at: datetime
    address: str


class MeRead(BaseModel):
    address: str
    kind: str
    is_admin: bool
    runner_id: uuid.UUID | None = None


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: NameText = Field(
        min_length=1, max_length=100, description="One line, no control characters"
    )
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class ApiKeyRead(BaseModel):
    id: uuid.UUID
    name: str | None
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The key itself; shown only in this response")


class RevokedCount(BaseModel):
    address: str
    revoked: int

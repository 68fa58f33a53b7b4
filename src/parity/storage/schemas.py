from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from parity.db.types import NameText


class ContentRead(BaseModel):
    """What the server knows about a CID (upload and info answers)."""

    cid: str = Field(
        description="CIDv1 (base32, raw leaves): what `ipfs add --cid-version=1 "
        "--raw-leaves` gives for the same bytes"
    )
    cid_v0: str | None = Field(
        None, description="What a plain `ipfs add` gives (Qm…); accepted wherever a CID is"
    )
    size: int = Field(description="File size in bytes")
    pinned: bool = Field(description="You pin it")
    retained: bool = Field(description="Some account pins it, so garbage collection keeps it")
    created_at: datetime | None = Field(
        description="First stored here; null if stored before this server tracked it"
    )
    gateway_url: str | None = Field(description="FILECOIN_GATEWAY_URL/ipfs/<cid>, if configured")
    download_url: str


class PinCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: NameText | None = Field(
        None, max_length=255, description="A label for your pin (one line, no control characters)"
    )


class PinRead(BaseModel):
    id: uuid.UUID
    cid: str
    size: int
    name: str | None
    created_at: datetime


class UsageRead(BaseModel):
    address: str
    pinned_bytes: int
    pin_count: int
    quota_bytes: int
    max_pins: int
    max_upload_bytes: int

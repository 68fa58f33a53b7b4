"""The content-store port: where file bytes live, addressed by CID.

Two adapters pass one contract suite (tests/contract): :mod:`parity.storage.local` (an on-disk
blockstore, the embedded default) and :mod:`parity.storage.kubo` (a kubo node's HTTP RPC).
Both give the CIDv1 ``ipfs add --cid-version=1 --raw-leaves`` gives, and both compute it while
the bytes stream through, so a file is never held in memory.

Pins here are the store's own retention set (what its garbage collection keeps). Which account
owns which pin, and quotas, are the service's business (database).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from parity.core.storage.multiformats import Cid


@dataclass(frozen=True, slots=True)
class Stored:
    """What a ``put`` stored: the CIDv1 (raw leaves), the size, and the CIDv0 that a plain
    ``ipfs add`` gives the same bytes (None when aliases are off)."""

    cid: Cid
    size: int
    cid_v0: Cid | None


@dataclass(frozen=True, slots=True)
class GcReport:
    removed_blocks: int
    freed_bytes: int | None  # None when the store does not say
    # What GC did to the packs of a packed store; None for a store without packs (kubo).
    compacted_packs: int | None = None  # rewritten without their dead blocks
    merged_packs: int | None = None  # small packs whose live blocks moved into merged packs


class ContentStore(Protocol):
    kind: str  # "local" | "kubo"

    async def put(self, chunks: AsyncIterable[bytes], *, pin: bool = False) -> Stored:
        """Store a file streamed as ``chunks`` (any sizes); pin it when asked. Exceptions the
        iterator raises propagate unchanged (partial blocks are left for GC)."""
        ...

    async def stat(self, cid: Cid) -> int | None:
        """The file's size, or None when the store does not hold its root."""
        ...

    def cat(self, cid: Cid, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes ``[start, end)`` of the file; ContentNotFound when absent."""
        ...

    async def pin(self, cid: Cid) -> None:
        """Keep ``cid`` and everything below it through GC. ContentNotFound when absent."""
        ...

    async def unpin(self, cid: Cid) -> None:
        """Stop keeping ``cid``; a no-op when it was not pinned."""
        ...

    async def pins(self) -> set[Cid]:
        """The pinned roots, as CIDv1."""
        ...

    async def gc(self, *, keep: Collection[Cid] = (), older_than: float | None = None) -> GcReport:
        """Remove blocks no pin (nor ``keep``) reaches. The local store also spares blocks
        written after ``older_than`` (epoch seconds) so in-flight uploads survive; kubo runs its
        own ``repo gc``, which honours only its pins."""
        ...

    async def describe(self) -> dict[str, Any]:
        """Kind, location, and whether it answers now (never raises)."""
        ...

    async def aclose(self) -> None: ...

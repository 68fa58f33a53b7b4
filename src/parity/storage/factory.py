"""Which content store the settings select."""

from __future__ import annotations

from parity.config import Settings
from parity.storage.kubo import KuboContentStore
from parity.storage.local import LocalContentStore
from parity.storage.ports import ContentStore


def open_content_store(settings: Settings) -> ContentStore:
    """kubo's HTTP RPC when FILECOIN_IPFS_ENDPOINT is set, else the local blockstore."""
    if settings.filecoin_ipfs_endpoint:
        return KuboContentStore(
            settings.filecoin_ipfs_endpoint,
            timeout_seconds=settings.storage_kubo_timeout_seconds,
            with_cidv0=settings.storage_cidv0_aliases,
        )
    return LocalContentStore(settings.blocks_path, with_cidv0=settings.storage_cidv0_aliases)

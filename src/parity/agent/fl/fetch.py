"""Content of the server's store, fetched by CID and checked against the sha256 the task pins,
and the server-made partition file read back into arrays."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import AsyncIterator, Callable

import httpx
import numpy as np
from numpy.typing import NDArray

from parity.agent.client import ServerError
from parity.agent.fl.config import Blob
from parity.agent.fl.retry import until_reachable

__all__ = ["MAX_FETCH_BYTES", "Download", "FetchError", "decode_partition", "fetch_verified"]

Download = Callable[[str], AsyncIterator[bytes]]
# A reference model is at most 200 MB of float32 (core.fl.model.MAX_PARAMETERS); a partition
# the server cut for one participant is smaller than the whole data set it accepted.
MAX_FETCH_BYTES = 1024 * 1024 * 1024
# A server that does not answer (restarting) or answers 5xx is tried again for this long; the
# content is immutable, so a repeat is harmless.
FETCH_WINDOW_SECONDS = 60.0


class FetchError(Exception):
    """The content could not be fetched, did not match its hash, or could not be read."""


async def fetch_verified(
    download: Download, what: str, blob: Blob, *, max_bytes: int = MAX_FETCH_BYTES
) -> bytes:
    """The bytes of ``blob``, whose sha256 must be the one the task names. A connection that
    breaks off or a server error (5xx) is tried again for up to ``FETCH_WINDOW_SECONDS`` (the
    content is immutable); a refusal by the server (4xx) is not."""
    try:
        data = await until_reachable(
            lambda: _read(download, what, blob, max_bytes), FETCH_WINDOW_SECONDS
        )
    except ServerError as exc:
        raise FetchError(f"cannot download {what} {blob.cid}: {exc}") from exc
    except httpx.TransportError as exc:
        raise FetchError(f"cannot download {what} {blob.cid}: {exc!r}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != blob.sha256:
        raise FetchError(
            f"sha256 mismatch for {what} {blob.cid}: the task names {blob.sha256}, "
            f"the downloaded content has {actual}"
        )
    return data


async def _read(download: Download, what: str, blob: Blob, max_bytes: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in download(blob.cid):
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"{what} {blob.cid} is larger than {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


def decode_partition(data: bytes) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The ``X`` (float32 rows) and ``y`` (int64 labels) arrays of a partition NPZ; pickled
    content is refused."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise FetchError("the partition is a single array, not an NPZ archive of X and y")
        with loaded as npz:
            names = set(npz.files)
            if not {"X", "y"} <= names:
                raise FetchError(f"the partition has arrays {sorted(names)}; it needs X and y")
            x, y = np.asarray(npz["X"]), np.asarray(npz["y"])
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise FetchError(f"the partition is not a readable NPZ file: {exc}") from exc
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise FetchError(
            f"the partition has X {list(x.shape)} and y {list(y.shape)}; "
            "it needs X [rows, features] and one label per row"
        )
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu":
        raise FetchError(f"the partition has X of {x.dtype} and y of {y.dtype}: numbers needed")
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)

"""The content store on a kubo node, over its HTTP RPC (``FILECOIN_IPFS_ENDPOINT``).

Every RPC call is a POST under ``/api/v0``; errors come back as ``{"Message", "Code", "Type"}``.
``add`` gets ``cid-version=1``, ``raw-leaves=true`` and ``chunker=size-262144`` explicitly, so the
node's own ``Import.*`` defaults cannot change the CID; the bytes are also hashed here while they
stream through, and a node answering a different CID is refused. Reads, stats and pins pass
``offline=true``: the server serves and pins what its node holds and never waits on the public
network for a CID someone made up. A node that is down or slow is 503 with the endpoint named.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Collection
from typing import Any

import httpx

from parity.core.storage import reader
from parity.core.storage.importer import CHUNK_SIZE, FileImporter
from parity.core.storage.multiformats import RAW, Cid, CidError
from parity.storage.errors import ContentNotFound, NotAFile, StoreFailed, StoreUnavailable
from parity.storage.ports import GcReport, Stored

HASH_BATCH_BYTES = 1 << 20
STATUS_TIMEOUT = 2.0  # seconds: /status must answer quickly even when the node hangs
ADD_PARAMS = {
    "cid-version": "1",
    "raw-leaves": "true",
    "chunker": f"size-{CHUNK_SIZE}",
    "hash": "sha2-256",
    "progress": "false",
}
_NOT_FOUND_HINTS = ("not found", "could not find", "no link named", "not pinned")


class KuboContentStore:
    kind = "kubo"

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_seconds: float = 30.0,
        with_cidv0: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.with_cidv0 = with_cidv0
        self._client = httpx.AsyncClient(
            base_url=self.endpoint,
            timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 5.0)),
            transport=transport,
        )

    # -- plumbing

    def _down(self, exc: httpx.HTTPError) -> StoreUnavailable:
        if isinstance(exc, httpx.TimeoutException):
            why = f"did not answer within {self.timeout_seconds:g} s"
        else:
            why = f"is unreachable ({type(exc).__name__}: {exc})"
        return StoreUnavailable(
            f"the IPFS node at {self.endpoint} {why}; retry later",
            details={"endpoint": self.endpoint},
        )

    def _failed(self, command: str, status: int, body: bytes) -> Exception:
        message = body[:500].decode("utf-8", "replace").strip()
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("Message"), str):
                message = parsed["Message"]
        except ValueError:
            pass
        if any(hint in message.lower() for hint in _NOT_FOUND_HINTS):
            return ContentNotFound(f"the IPFS node does not have it: {message}")
        return StoreFailed(
            f"the IPFS node refused {command} (HTTP {status}): {message}",
            details={"endpoint": self.endpoint, "command": command},
        )

    async def _call(
        self, command: str, params: dict[str, str] | None = None, timeout: float | None = None
    ) -> bytes:
        try:
            r = await self._client.post(
                f"/api/v0/{command}",
                params=params,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise self._down(exc) from None
        if r.status_code != 200:
            raise self._failed(command, r.status_code, r.content)
        return r.content

    async def _json(
        self, command: str, params: dict[str, str] | None = None, timeout: float | None = None
    ) -> Any:
        body = await self._call(command, params, timeout)
        try:
            return json.loads(body)
        except ValueError:
            raise StoreFailed(f"the IPFS node answered {command} with non-JSON") from None

    # -- put

    async def put(self, chunks: AsyncIterable[bytes], *, pin: bool = False) -> Stored:
        importer = FileImporter(with_cidv0=self.with_cidv0, keep_blocks=False)
        boundary = secrets.token_hex(16)
        head = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="file"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        failure: list[BaseException] = []

        async def body() -> AsyncIterator[bytes]:
            yield head
            pending: list[bytes] = []
            size = 0
            try:
                async for piece in chunks:
                    pending.append(piece)
                    size += len(piece)
                    if size >= HASH_BATCH_BYTES:
                        batch = b"".join(pending)
                        pending, size = [], 0
                        await asyncio.to_thread(importer.write, batch)
                        yield batch
            except BaseException as exc:  # surfaced unchanged after httpx gives up
                failure.append(exc)
                raise
            batch = b"".join(pending)
            importer.write(batch)
            yield batch
            yield tail

        params = {**ADD_PARAMS, "pin": "true" if pin else "false"}
        try:
            r = await self._client.post(
                "/api/v0/add",
                params=params,
                content=body(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
        except BaseException as exc:
            if failure:  # the upload itself failed (too large, client gone): say that
                raise failure[0] from None
            if isinstance(exc, httpx.HTTPError):
                raise self._down(exc) from None
            raise
        if failure:
            raise failure[0]
        if r.status_code != 200:
            raise self._failed("add", r.status_code, r.content)
        _, result = importer.finish()
        answered = _last_hash(r.content)
        if answered is None or answered.to_v1() != result.cid:
            raise StoreFailed(
                f"the IPFS node stored the file as {answered}, expected {result.cid}; "
                "it does not chunk or hash as kubo does with these options",
                details={"endpoint": self.endpoint},
            )
        return Stored(result.cid, result.size, result.cid_v0)

    # -- read

    async def _block(self, cid: Cid) -> bytes:
        return await self._call("block/get", {"arg": str(cid), "offline": "true"})

    async def stat(self, cid: Cid) -> int | None:
        try:
            if cid.codec == RAW:
                doc = await self._json("block/stat", {"arg": str(cid), "offline": "true"})
                return int(doc["Size"])
            block = await self._block(cid)
        except ContentNotFound:
            return None
        except (KeyError, TypeError, ValueError):
            raise StoreFailed("the IPFS node answered block/stat without a Size") from None
        try:
            return reader.file_size(cid, block)
        except reader.NotAFile as exc:
            raise NotAFile(str(exc)) from None

    async def cat(self, cid: Cid, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        params = {"arg": str(cid), "offline": "true", "offset": str(start)}
        if end is not None:
            if end <= start:
                return
            params["length"] = str(end - start)
        try:
            async with self._client.stream("POST", "/api/v0/cat", params=params) as r:
                if r.status_code != 200:
                    raise self._failed("cat", r.status_code, await r.aread())
                async for piece in r.aiter_bytes():
                    yield piece
        except httpx.HTTPError as exc:
            raise self._down(exc) from None

    # -- pins

    async def pin(self, cid: Cid) -> None:
        await self._call("pin/add", {"arg": str(cid), "recursive": "true", "offline": "true"})

    async def unpin(self, cid: Cid) -> None:
        try:
            await self._call("pin/rm", {"arg": str(cid), "recursive": "true"})
        except ContentNotFound:  # "not pinned or pinned indirectly"
            return

    async def pins(self) -> set[Cid]:
        doc = await self._json("pin/ls", {"type": "recursive"})
        keys = doc.get("Keys") if isinstance(doc, dict) else None
        out: set[Cid] = set()
        for key in keys or {}:
            try:
                out.add(Cid.parse(key).to_v1())
            except CidError:
                continue
        return out

    async def gc(self, *, keep: Collection[Cid] = (), older_than: float | None = None) -> GcReport:
        missing = {c.to_v1() for c in keep} - await self.pins()
        for cid in missing:  # kubo's GC keeps only what the node has pinned
            await self.pin(cid)
        body = await self._call("repo/gc")
        removed = 0
        for line in body.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("Key"):
                removed += 1
        return GcReport(removed, None)

    async def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "endpoint": self.endpoint}
        try:
            doc = await self._json("version", timeout=min(self.timeout_seconds, STATUS_TIMEOUT))
            out.update(reachable=True, version=doc.get("Version"))
        except (StoreUnavailable, StoreFailed) as exc:
            out.update(reachable=False, error=exc.message)
        return out

    async def aclose(self) -> None:
        await self._client.aclose()


def _last_hash(body: bytes) -> Cid | None:
    """The ``Hash`` of the last NDJSON line of an ``add`` answer."""
    for line in reversed(body.splitlines()):
        try:
            entry = json.loads(line)
            return Cid.parse(str(entry["Hash"]))
        except (ValueError, KeyError, TypeError):
            continue
    return None

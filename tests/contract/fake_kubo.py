"""A fake kubo node: the few RPC commands the kubo adapter uses, answered the way kubo answers
them (POST only, errors as HTTP 500 ``{"Message", "Code", "Type": "error"}``, ``add`` as NDJSON),
backed by the local blockstore (this project's importer).

It stands in for kubo because no kubo daemon can run on the build machines. It proves the
adapter's wire handling, not kubo's CIDs: those are proven by the oracle vectors. ``add`` refuses
requests that lack ``cid-version=1``, ``raw-leaves=true`` and ``chunker=size-262144``, because
without them a real node would import with its own defaults and answer another CID.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from parity.core.storage.multiformats import Cid, CidError
from parity.storage.errors import ContentNotFound
from parity.storage.local import LocalContentStore

REQUIRED_ADD_PARAMS = {"cid-version": "1", "raw-leaves": "true", "chunker": "size-262144"}


def _error(message: str, status: int = 500) -> JSONResponse:
    return JSONResponse({"Message": message, "Code": 0, "Type": "error"}, status_code=status)


class FakeKubo:
    def __init__(self, store: LocalContentStore) -> None:
        self.store = store
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.answer_cid: str | None = None  # set to make `add` lie about the CID
        commands = {
            "add": self.add,
            "cat": self.cat,
            "block/stat": self.block_stat,
            "block/get": self.block_get,
            "pin/add": self.pin_add,
            "pin/rm": self.pin_rm,
            "pin/ls": self.pin_ls,
            "repo/gc": self.repo_gc,
            "version": self.version,
        }
        self.app = Starlette(
            routes=[
                Route(f"/api/v0/{name}", self._wrap(name, fn), methods=["POST"])
                for name, fn in commands.items()
            ]
        )

    def _wrap(self, name: str, fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            self.requests.append((name, dict(request.query_params)))
            try:
                response: Response = await fn(request)
                return response
            except ContentNotFound as exc:
                return _error(f"block was not found locally (offline): {exc.message}")
            except CidError as exc:
                return _error(f"invalid path: {exc}", 400)

        return endpoint

    @staticmethod
    def _arg(request: Request) -> Cid:
        return Cid.parse(request.query_params["arg"])

    async def add(self, request: Request) -> Response:
        wrong = {k: v for k, v in REQUIRED_ADD_PARAMS.items() if request.query_params.get(k) != v}
        if wrong:
            return _error(f"fake kubo: add needs {wrong} (kubo would use its own defaults)")
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return _error("file argument 'path' is required", 400)

        async def chunks() -> AsyncIterator[bytes]:
            while piece := await upload.read(65536):
                yield piece

        pin = request.query_params.get("pin", "true") == "true"
        stored = await self.store.put(chunks(), pin=pin)
        answer = self.answer_cid or stored.cid.encode()
        line = {"Name": upload.filename or answer, "Hash": answer, "Size": str(stored.size)}
        return Response(json.dumps(line) + "\n", media_type="application/json")

    async def cat(self, request: Request) -> Response:
        cid = self._arg(request)
        if await self.store.stat(cid) is None:
            raise ContentNotFound(f"ipld: could not find {cid}")
        start = int(request.query_params.get("offset", "0"))
        length = request.query_params.get("length")
        end = start + int(length) if length is not None else None
        return StreamingResponse(self.store.cat(cid, start, end))

    async def block_stat(self, request: Request) -> Response:
        cid = self._arg(request)
        block = await self.store.get_block(cid)
        return JSONResponse({"Key": str(cid), "Size": len(block)})

    async def block_get(self, request: Request) -> Response:
        return Response(await self.store.get_block(self._arg(request)))

    async def pin_add(self, request: Request) -> Response:
        cid = self._arg(request)
        await self.store.pin(cid)
        return JSONResponse({"Pins": [str(cid)]})

    async def pin_rm(self, request: Request) -> Response:
        cid = self._arg(request)
        if cid.to_v1() not in await self.store.pins():
            return _error("not pinned or pinned indirectly")
        await self.store.unpin(cid)
        return JSONResponse({"Pins": [str(cid)]})

    async def pin_ls(self, request: Request) -> Response:
        keys = {str(c): {"Type": "recursive"} for c in await self.store.pins()}
        return JSONResponse({"Keys": keys})

    async def repo_gc(self, request: Request) -> Response:
        report = await self.store.gc()
        lines = "".join(
            json.dumps({"Key": {"/": f"removed-{i}"}}) + "\n" for i in range(report.removed_blocks)
        )
        return Response(lines, media_type="application/json")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"Version": "0.0.0-fake", "Commit": "", "Repo": "16"})

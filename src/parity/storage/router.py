"""Storage endpoints (the original README's /api/storage/upload, download/{cid}, info/{cid},
pin/{cid}, plus a raw-body PUT upload, unpin, pin list and usage).

Uploads stream from the request into the content store; no database session is open while the
body arrives (the SQLite write lock is taken only to record the result). They do not take
``Idempotency-Key``: an upload is idempotent by its CID. Downloads stream and honour ``Range``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, StringConstraints
from starlette.requests import ClientDisconnect

from parity.api.deps import ContainerDep, CurrentPrincipal, Idempotency, ReadSession, WriteSession
from parity.api.errors import envelope
from parity.api.jsonbody import JsonRoute
from parity.api.pagination import Page, PageParamsDep, make_page
from parity.api.queryflags import Flag
from parity.auth.schemas import Principal
from parity.container import Container
from parity.core.storage.ranges import RangeNotSatisfiable, parse_range
from parity.db.types import check_name
from parity.errors import InvalidInput
from parity.storage import service
from parity.storage.multipart import MultipartFile
from parity.storage.ports import Stored
from parity.storage.schemas import ContentRead, PinCreate, PinRead, UsageRead

router = APIRouter(route_class=JsonRoute, tags=["storage"])

UPLOAD_PATH = "/storage/upload"
DOWNLOAD_PATH = "/storage/download/{cid}"
MULTIPART_SLACK = 64 * 1024  # form framing around the file, allowed above the file size limit


PinQuery = Annotated[
    Flag, Query(description="Pin it for you (counts against your quota): true or false")
]
MAX_NAME = 255
# The length is checked on the text (a plain "at most 255 characters"), then the characters.
NameQuery = Annotated[
    Annotated[str, StringConstraints(max_length=MAX_NAME), AfterValidator(check_name)] | None,
    Query(description="A label for your pin (one line, no control characters)"),
]

_BINARY = {"schema": {"type": "string", "format": "binary"}}


def declared_size(request: Request) -> int | None:
    """The body's size its ``Content-Length`` declares, when it declares one."""
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


async def _precheck(c: Container, principal: Principal, declared: int | None, pin: bool) -> None:
    service.check_declared_size(c.storage, declared)
    if pin:
        async with c.db.read_session() as session:
            await service.check_quota_room(session, c.storage, principal.address, declared)


async def store_body(c: Container, body: Any) -> Stored:
    """An upload's body into the content store (no pin yet); a client gone mid-body is 422."""
    try:
        return await service.store_stream(c.content_store, c.storage, body)
    except ClientDisconnect:
        raise InvalidInput("body", "the client went away before the upload ended") from None


async def _record(
    c: Container, principal: Principal, stored: Stored, pin: bool, name: str | None
) -> ContentRead:
    # The unit of work commits here, before the answer is sent.
    async with c.db.transaction() as session:
        return await service.record_upload(
            session,
            c.content_store,
            c.storage,
            principal.address,
            stored,
            pin=pin,
            name=name,
            now=c.clock.now(),
        )


@router.put(
    UPLOAD_PATH,
    status_code=201,
    response_model=ContentRead,
    summary="Upload a file as the raw request body (streamed)",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/octet-stream": _BINARY}}
    },
)
async def upload_raw(
    request: Request,
    principal: CurrentPrincipal,
    c: ContainerDep,
    pin: PinQuery = True,
    name: NameQuery = None,
) -> ContentRead:
    """The body is the file. Size limit STORAGE_MAX_UPLOAD_BYTES (413); the CID is computed as
    the bytes arrive and equals ``ipfs add --cid-version=1 --raw-leaves``."""
    await _precheck(c, principal, declared_size(request), pin)
    stored = await store_body(c, request.stream())
    return await _record(c, principal, stored, pin, name)


@router.post(
    UPLOAD_PATH,
    status_code=201,
    response_model=ContentRead,
    summary="Upload a file as a multipart form (field 'file', streamed)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                }
            },
        }
    },
)
async def upload_form(
    request: Request,
    principal: CurrentPrincipal,
    c: ContainerDep,
    pin: PinQuery = True,
    name: NameQuery = None,
) -> ContentRead:
    """The original README's form upload. The file part streams into the store; the pin is
    named after the part's filename (its first 255 characters) unless ``name`` is given."""
    declared = declared_size(request)
    payload = None if declared is None else max(declared - MULTIPART_SLACK, 0)
    await _precheck(c, principal, payload, pin)
    # The part's filename names the pin when `name` does not: checked as a name as soon as the
    # part's headers are read, before any of its bytes reach the store.
    check = None if name else _check_filename
    form = MultipartFile(request.stream(), request.headers.get("content-type"), check)
    stored = await store_body(c, form)
    filename = form.filename[:MAX_NAME] if form.filename else None
    return await _record(c, principal, stored, pin, name or filename)


def _check_filename(filename: str) -> None:
    try:
        check_name(filename[:MAX_NAME])
    except ValueError as exc:
        raise InvalidInput("file", f"its filename {exc} (or give the pin a `name`)") from None


@router.get(
    DOWNLOAD_PATH,
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": _BINARY}}, 206: {}, 416: {}},
)
async def download(
    cid: str,
    request: Request,
    principal: CurrentPrincipal,
    session: ReadSession,
    c: ContainerDep,
) -> Response:
    """The file's bytes (streamed). ``Range: bytes=a-b`` gives 206, a range past the end 416.
    A plain-``ipfs add`` CIDv0 of content uploaded here resolves to the same bytes."""
    root, size = await service.resolve(session, c.content_store, cid)
    etag = f'"{root}"'
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Cache-Control": "private, max-age=31536000, immutable",
        "X-Content-CID": str(root),
        "Content-Disposition": f'attachment; filename="{root}"',
    }
    if request.headers.get("if-none-match") in (etag, "*"):
        return Response(status_code=304, headers=headers)
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range != etag:
        range_header = None  # the client's copy is of something else: send it all
    try:
        wanted = parse_range(range_header, size)
    except RangeNotSatisfiable as exc:
        return envelope(
            416,
            "range_not_satisfiable",
            str(exc),
            {"size": size},
            headers={"Content-Range": f"bytes */{size}"},
        )
    status, start, end = 200, 0, size
    if wanted is not None:
        status, start, end = 206, wanted.start, wanted.end
        headers["Content-Range"] = wanted.content_range(size)
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    return StreamingResponse(
        c.content_store.cat(root, start, end),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


router.add_api_route(DOWNLOAD_PATH, download, methods=["HEAD"], include_in_schema=False)


@router.get("/storage/info/{cid}", response_model=ContentRead)
async def info(
    cid: str, principal: CurrentPrincipal, session: ReadSession, c: ContainerDep
) -> ContentRead:
    """CID, size, whether you pin it, when it was first stored, the gateway URL."""
    return await service.describe(session, c.content_store, c.storage, principal, cid)


@router.post(
    "/storage/pin/{cid}",
    status_code=201,
    response_model=PinRead,
    responses={200: {"model": PinRead, "description": "You already pin it"}},
)
async def pin(
    cid: str,
    response: Response,
    principal: CurrentPrincipal,
    session: WriteSession,
    idem: Idempotency,
    c: ContainerDep,
    body: Annotated[PinCreate | None, Body()] = None,
) -> Any:
    """Pin content this server holds for you: 201 when new, 200 when you already pin it.
    409 ``storage_quota_exceeded`` when it does not fit your quota."""
    stored = await idem.replay()
    if stored is not None:
        return JSONResponse(stored.body, status_code=stored.status_code)
    out, created = await service.pin_content(
        session,
        c.content_store,
        c.storage,
        principal,
        cid,
        body.name if body else None,
        c.clock.now(),
    )
    response.status_code = 201 if created else 200
    await idem.remember(response.status_code, out.model_dump(mode="json"))
    return out


@router.delete("/storage/pin/{cid}", status_code=204)
async def unpin(
    cid: str, principal: CurrentPrincipal, session: WriteSession, c: ContainerDep
) -> Response:
    """Remove your pin. The content stays while another account pins it; otherwise the next
    ``parity-server storage gc`` removes it."""
    await service.unpin_content(session, c.content_store, principal, cid, c.clock.now())
    return Response(status_code=204)


@router.get("/storage/pins", response_model=Page[PinRead])
async def list_pins(
    principal: CurrentPrincipal, session: ReadSession, page: PageParamsDep
) -> Page[PinRead]:
    """Your pins, newest first."""
    rows = await service.list_pins(session, principal, page.limit, page.cursor)
    items = [service.pin_read(r) for r in rows]
    return make_page(items, rows, page.limit)


@router.get("/storage/usage", response_model=UsageRead)
async def usage(principal: CurrentPrincipal, session: ReadSession, c: ContainerDep) -> UsageRead:
    """Your pinned bytes and pins against your quota, and the upload size limit."""
    return await service.usage(session, c.storage, principal)

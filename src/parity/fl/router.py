"""/api/v1/federated-learning (and the /api/federated-learning mirror): the original README's
session endpoints, working, plus rounds, participants, metrics, cancel and the model file."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, StreamingResponse

from parity.api.deps import (
    ContainerDep,
    CurrentPrincipal,
    CurrentRunner,
    Idempotency,
    ReadSession,
    WalletPrincipal,
    WriteSession,
)
from parity.api.errors import json_object
from parity.api.jsonbody import JsonRoute
from parity.api.pagination import PageParamsDep
from parity.db.pagination import next_cursor
from parity.db.types import INT32_MAX
from parity.fl import secagg_router, service, start, store_io, updates
from parity.fl.schemas import (
    MetricsRead,
    ModelRead,
    ModelUpdateCreate,
    RoundList,
    RoundRead,
    SessionCreate,
    SessionList,
    SessionRead,
    SessionStarted,
    UpdateAccepted,
    request_body,
)
from parity.fl.views import (
    metrics_read,
    model_read,
    participant_read,
    round_read,
    session_read,
)

router = APIRouter(route_class=JsonRoute, prefix="/federated-learning", tags=["federated-learning"])
SAFETENSORS = "application/octet-stream"


def _json(out: Any, status_code: int = 200) -> JSONResponse:
    """The views' dicts as JSON. The routes' response models describe the shapes in the
    OpenAPI document; the views build them (a model would only re-validate them)."""
    return JSONResponse(jsonable_encoder(out), status_code=status_code)


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionRead,
    openapi_extra=request_body(SessionCreate),
)
async def create_session(
    request: Request,
    principal: WalletPrincipal,
    session: WriteSession,
    idem: Idempotency,
    c: ContainerDep,
) -> JSONResponse:
    """Create a session (`pending`). The README's request is accepted as written
    (`creator_address` is ignored: identity is the token); every missing or out-of-range field
    is a 422 naming it. With `training_data.dataset_cid` the file must be in the store. A
    `reward_pool` (decimal string, base units) is held in escrow when the server prices work."""
    stored = await idem.replay()
    if stored is not None:
        return JSONResponse(stored.body, status_code=stored.status_code)
    body = await json_object(request)
    row = await service.create_session(session, c.fl, principal, body)
    out = jsonable_encoder(session_read(row, 0))
    await idem.remember(201, out)
    return JSONResponse(out, status_code=201)


@router.get("/sessions", response_model=SessionList)
async def list_sessions(
    principal: CurrentPrincipal, session: ReadSession, page: PageParamsDep
) -> JSONResponse:
    """Your sessions, newest first (an operator's: everyone's): `{sessions, count,
    next_cursor, limit}`, `count` being the sessions on this page; pass `next_cursor` back as
    `cursor` for the next page."""
    found = await service.list_sessions(session, principal, page.cursor, page.limit)
    shown = found.rows[: page.limit]
    items = [session_read(r, found.participant_counts.get(r.id, 0)) for r in shown]
    return _json(
        {
            "sessions": items,
            "count": len(items),
            "next_cursor": next_cursor(found.rows, page.limit),
            "limit": page.limit,
        }
    )


@router.get("/sessions/{session_id}", response_model=SessionRead)
async def get_session(
    session_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSession
) -> JSONResponse:
    """One of your sessions (someone else's is 404)."""
    row = await service.get_session(session, principal, session_id)
    return _json(session_read(row, await service.participant_count(session, row)))


@router.post("/sessions/{session_id}/start", response_model=SessionStarted)
async def start_session(
    session_id: uuid.UUID, principal: WalletPrincipal, c: ContainerDep
) -> JSONResponse:
    """Select `min_participants` (up to `max_participants`) online runners that advertise FL
    (and serve the `runner_dataset`, when one is named), partition the data, store the initial
    model and open round 1. 409 `insufficient_runners` ("insufficient online runners: need N,
    have M", for a runner dataset "… have M serving runner_dataset 'NAME' …"); 409 when the
    session is not pending."""
    row = await start.start_session(c.db, c.fl, principal, session_id)
    async with c.db.read_session() as session:
        count = await service.participant_count(session, row)
    return _json({"message": "Session started successfully", "session": session_read(row, count)})


@router.post("/sessions/{session_id}/cancel", response_model=SessionStarted)
async def cancel_session(
    session_id: uuid.UUID, principal: WalletPrincipal, session: WriteSession, c: ContainerDep
) -> JSONResponse:
    """pending/active → cancelled: open rounds end, their waiting training tasks are cancelled
    and the rest of the reward pool goes back. 409 `session_finished` for a completed or
    failed session; cancelling again answers with the cancelled session."""
    row = await service.cancel_session(session, c.fl, principal, session_id)
    count = await service.participant_count(session, row)
    return _json({"message": "Session cancelled successfully", "session": session_read(row, count)})


@router.get("/sessions/{session_id}/rounds", response_model=RoundList)
async def list_rounds(
    session_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: ReadSession,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JSONResponse:
    """The session's rounds, newest first: `{items, next_cursor, limit}`."""
    page = await service.list_rounds(session, principal, session_id, cursor, limit)
    items = [round_read(r, page.slot_counts) for r in page.rounds]
    return _json({"items": items, "next_cursor": page.next_cursor, "limit": limit})


@router.get("/sessions/{session_id}/rounds/{number}", response_model=RoundRead)
async def get_round(
    session_id: uuid.UUID,
    number: Annotated[int, Path(ge=1, le=INT32_MAX)],
    principal: CurrentPrincipal,
    session: ReadSession,
) -> JSONResponse:
    """One round: status, deadline, updates received and dropped, its model and metrics."""
    found, counts = await service.get_round(session, principal, session_id, number)
    return _json(round_read(found, counts))


@router.get("/sessions/{session_id}/participants")
async def list_participants(
    session_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: ReadSession,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 1000,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JSONResponse:
    """The runners bound to the session, by participant index (replaced ones too):
    `{session_id, participants, count, next_cursor, limit}` (`count`: this page's)."""
    page = await service.list_participants(session, principal, session_id, cursor, limit)
    items = [participant_read(p, page.slot_counts) for p in page.participants]
    return _json(
        {
            "session_id": session_id,
            "participants": items,
            "count": len(items),
            "next_cursor": page.next_cursor,
            "limit": limit,
        }
    )


@router.get("/sessions/{session_id}/metrics", response_model=MetricsRead)
async def session_metrics(
    session_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSession
) -> JSONResponse:
    """Per aggregated round: participants, examples, mean and weighted train loss/accuracy,
    test loss/accuracy (with a held-out split), duration and coordination overhead (ms)."""
    row, rounds = await service.session_rounds(session, principal, session_id)
    return _json(metrics_read(row, rounds))


@router.get("/sessions/{session_id}/model", response_model=ModelRead)
async def get_model(
    session_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSession
) -> JSONResponse:
    """The latest global model (marked `intermediate` until the session completes): round,
    CID, sha256, format, tensor shapes, metrics history. 404 `no_global_model` before start."""
    row, rounds = await service.session_rounds(session, principal, session_id)
    service.require_model(row)
    return _json(model_read(row, rounds))


@router.get(
    "/sessions/{session_id}/model/download",
    response_class=StreamingResponse,
    responses={200: {"content": {SAFETENSORS: {"schema": {"type": "string", "format": "binary"}}}}},
)
async def download_model(
    session_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSession, c: ContainerDep
) -> StreamingResponse:
    """The latest global model as a safetensors file."""
    row = await service.get_session(session, principal, session_id)
    cid, size = await service.model_file(c.fl, row)
    name = f"fl-{row.id}-round-{row.global_model_round}.safetensors"
    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Content-CID": cid,
        "X-Content-SHA256": row.global_model_sha256 or "",
        "X-Model-Round": str(row.global_model_round),
    }
    return StreamingResponse(
        store_io.stream(c.fl.store, cid), media_type=SAFETENSORS, headers=headers
    )


@router.post(
    "/model-updates", response_model=UpdateAccepted, openapi_extra=request_body(ModelUpdateCreate)
)
async def submit_model_update(
    request: Request, runner_id: CurrentRunner, c: ContainerDep
) -> JSONResponse:
    """A participant's update for its round (runner token, fenced by the task's claim token):
    `weights` per tensor (JSON) or `update_cid` (safetensors in the store), with `data_size`,
    `loss`, `accuracy`, `training_time_ms`. Repeating it with the same token answers again."""
    body = await json_object(request)
    out = await updates.submit_update(c.db, c.fl, runner_id, body)
    return _json(out)


# SecAgg+ stage messages: /sessions/{id}/rounds/{n}/secagg/{stage}.
router.include_router(secagg_router.router)

"""SecAgg+ stage messages of a federated-learning round (runner token):
``POST/GET /federated-learning/sessions/{id}/rounds/{n}/secagg/{stage}`` with ``stage`` one of
``advertise_keys``, ``share_keys``, ``masked_input``, ``unmask``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from parity.api.deps import ContainerDep, CurrentRunner
from parity.api.errors import json_object
from parity.api.jsonbody import JsonRoute
from parity.db.types import INT32_MAX
from parity.fl import secagg_service

router = APIRouter(route_class=JsonRoute, tags=["federated-learning"])
STAGE_PATH = "/sessions/{session_id}/rounds/{number}/secagg/{stage}"


@router.post(STAGE_PATH)
async def post_stage_message(
    session_id: uuid.UUID,
    number: Annotated[int, Path(ge=1, le=INT32_MAX)],
    stage: str,
    request: Request,
    runner_id: CurrentRunner,
    c: ContainerDep,
    wait: Annotated[
        float | None,
        Query(ge=0, description="Seconds to wait for `reply` (30 at most); absent: no reply"),
    ] = None,
) -> JSONResponse:
    """Post this participant's message for a stage of a SecAgg+ round, with the claim token of
    its `fl_train` task (`claim_token`). `advertise_keys`: `c_public`, `s_public` (X25519, 32
    bytes, base64); `share_keys`: `commitment` and `shares` (participant index → sealed
    bundle); `masked_input`: `vector` (uint64 little-endian, base64) with `data_size`, `loss`,
    `accuracy`, `training_time_ms`; `unmask`: `self_mask_shares` and `key_shares`
    (participant index → share). 409 `stage_closed` names the stage's deadline. With `wait`,
    the answer's `reply` is what `GET` of the stage whose messages come next would answer
    (`advertise_keys` → `advertise_keys`, `share_keys` → `share_keys`, `masked_input` →
    `unmask`), waited for up to `wait` seconds; not for `unmask`."""
    body = await json_object(request)
    out = await secagg_service.post_message(
        c.db,
        c.fl,
        runner_id,
        session_id,
        number,
        stage,
        body,
        wait=None if wait is None else (0.0 if c.draining else wait),
        recheck_seconds=c.settings.long_poll_recheck_seconds,
    )
    return JSONResponse(jsonable_encoder(out))


@router.get(STAGE_PATH)
async def get_stage_messages(
    session_id: uuid.UUID,
    number: Annotated[int, Path(ge=1, le=INT32_MAX)],
    stage: str,
    runner_id: CurrentRunner,
    c: ContainerDep,
    wait: Annotated[float, Query(ge=0, description="Long-poll seconds (30 at most)")] = 0,
    x_claim_token: Annotated[str | None, Header(description="The task's claim token")] = None,
) -> JSONResponse:
    """The messages of a stage addressed to this participant, once final (`ready`): the
    neighbours' keys, the share bundles sent to it, or the unmask request. Waits up to `wait`
    seconds (capped at 30) without holding a database connection."""
    out = await secagg_service.read_messages(
        c.db,
        c.fl,
        runner_id,
        session_id,
        number,
        stage,
        claim_token=x_claim_token,
        wait=0.0 if c.draining else wait,
        recheck_seconds=c.settings.long_poll_recheck_seconds,
    )
    return JSONResponse(jsonable_encoder(out))

"""SecAgg+ stage messages: a participant's request body read into the rows the server stores,
each checked as the FL core checks it (:mod:`parity.core.fl.secagg_server`) against the stage's
messages already in (read once per batch, :mod:`parity.fl.secagg_accept`); what a participant
receives is :mod:`parity.fl.secagg_relay`'s. Bytes travel as base64."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from parity.core.fl.privacy_errors import SecAggError
from parity.core.fl.secagg import KeyAdvert, RoundSetup, ShareMessage, check_vector
from parity.core.fl.secagg_config import SecAggConfig
from parity.core.fl.secagg_server import check_adverts, route_shares
from parity.errors import InvalidInput
from parity.fl import secagg_stages as stages
from parity.fl.errors import RoundClosed
from parity.fl.models import FLRound, FLRoundSlot, FLSession
from parity.fl.secagg_models import FLSecAggMessage, FLSecAggRound
from parity.fl.spec_fields import read_mapping, read_str, required

KEY_BYTES = 32
SHARE_BYTES = 68  # a Shamir share over GF(2^521 - 1): 2-byte index, 66-byte value
MAX_SEALED_BYTES = 4096
REFUSED = "secagg_refused"
KEYS = {
    stages.ADVERTISE: frozenset({"claim_token", "c_public", "s_public"}),
    stages.SHARE: frozenset({"claim_token", "commitment", "shares"}),
    stages.MASKED: frozenset(
        {"claim_token", "vector", "data_size", "loss", "accuracy", "training_time_ms"}
    ),
    stages.UNMASK: frozenset({"claim_token", "self_mask_shares", "key_shares"}),
}


@dataclass
class Caller:
    """A participant of a SecAgg+ round, as one request sees it."""

    fl_session: FLSession
    round_: FLRound
    state: FLSecAggRound
    slot: FLRoundSlot
    config: SecAggConfig

    @property
    def index(self) -> int:
        return self.slot.participant_index

    def setups(self) -> dict[str, RoundSetup]:
        try:
            return stages.setups_of(self.fl_session, self.round_, self.state, self.config)
        except SecAggError as exc:
            raise RoundClosed(f"round {self.round_.number} cannot run: {exc.reason}") from None


def _decode(value: Any, path: str, *, size: int | None = None, most: int | None = None) -> bytes:
    text = read_str(value, path, max_length=4 * ((most or size or 0) // 3 + 2))
    try:
        data = base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(path, f"{path} must be base64") from None
    if size is not None and len(data) != size:
        raise InvalidInput(path, f"{path} must be {size} bytes, got {len(data)}")
    if most is not None and not 0 < len(data) <= most:
        raise InvalidInput(path, f"{path} must be 1 to {most} bytes")
    return data


def _participant_key(key: str, path: str, allowed: set[int], what: str, number: int) -> int:
    if not key.isdigit():
        raise InvalidInput(f"{path}.{key}", f"{path} is keyed by participant index")
    index = int(key)
    if index not in allowed:
        raise InvalidInput(
            f"{path}.{key}", f"participant {index} is not {what} of round {number}", code=REFUSED
        )
    return index


def _message(
    caller: Caller,
    stage: str,
    now: datetime,
    *,
    recipient: int | None = None,
    payload: dict[str, Any] | None = None,
    data: bytes | None = None,
) -> FLSecAggMessage:
    return FLSecAggMessage(
        id=uuid.uuid4(),
        session_id=caller.fl_session.id,
        round_id=caller.round_.id,
        round=caller.round_.number,
        stage=stage,
        sender_index=caller.index,
        recipient_index=recipient,
        payload=payload or {},
        data=data,
        created_at=now,
    )


Seen = Mapping[str, Mapping[int, Mapping[str, Any]]]
Built = list[FLSecAggMessage]
Builder = Callable[[Caller, Mapping[str, Any], datetime, Seen], Built]
# The messages to the server a stage's message is checked against (read in its transaction).
CHECKED_AGAINST = {
    stages.ADVERTISE: (stages.ADVERTISE,),
    stages.SHARE: (stages.ADVERTISE, stages.SHARE),
    stages.MASKED: (stages.MASKED,),
    stages.UNMASK: (stages.UNMASK,),
}


def _adverts(seen: Seen, only: set[int] | None) -> list[KeyAdvert]:
    return [
        KeyAdvert(
            stages.pid(sender),
            base64.b64decode(payload["c_public"]),
            base64.b64decode(payload["s_public"]),
        )
        for sender, payload in sorted(seen.get(stages.ADVERTISE, {}).items())
        if only is None or sender in only
    ]


def _advertise(caller: Caller, body: Mapping[str, Any], now: datetime, seen: Seen) -> Built:
    """Stage 1: two X25519 public keys, 32 bytes each, that no other participant uses."""
    c_public = _decode(required(body, "c_public", "c_public"), "c_public", size=KEY_BYTES)
    s_public = _decode(required(body, "s_public", "s_public"), "s_public", size=KEY_BYTES)
    others = [a for a in _adverts(seen, None) if a.participant != str(caller.index)]
    try:
        check_adverts(caller.setups(), [*others, KeyAdvert(str(caller.index), c_public, s_public)])
    except SecAggError as exc:
        raise InvalidInput("c_public", exc.reason, code=REFUSED) from None
    payload = {"c_public": stages.b64(c_public), "s_public": stages.b64(s_public)}
    return [_message(caller, stages.ADVERTISE, now, payload=payload)]


def _share(caller: Caller, body: Mapping[str, Any], now: datetime, seen: Seen) -> Built:
    """Stage 2: the self-mask commitment (stored for the server) and one sealed bundle per
    neighbour that advertised keys (stored for its recipient)."""
    commitment = _decode(required(body, "commitment", "commitment"), "commitment", size=32)
    given = read_mapping(required(body, "shares", "shares"), "shares")
    everyone = set(caller.state.participants)
    sealed: dict[int, bytes] = {}
    for key, value in given.items():
        index = _participant_key(key, "shares", everyone, "a participant", caller.round_.number)
        sealed[index] = _decode(value, f"shares.{key}", most=MAX_SEALED_BYTES)
    advertised = set(stages.members(caller.state, stages.ADVERTISE))
    adverts = {a.participant: a for a in _adverts(seen, advertised)}
    message = ShareMessage(
        str(caller.index), commitment, {stages.pid(i): s for i, s in sealed.items()}
    )
    try:
        route_shares(caller.setups(), adverts, [message])
    except SecAggError as exc:
        raise InvalidInput("shares", exc.reason, code=REFUSED) from None
    rows = [_message(caller, stages.SHARE, now, payload={"commitment": stages.b64(commitment)})]
    rows += [
        _message(caller, stages.SHARE, now, recipient=i, data=data)
        for i, data in sorted(sealed.items())
    ]
    return rows


def _masked(caller: Caller, body: Mapping[str, Any], now: datetime, seen: Seen) -> Built:
    """Stage 3: the masked vector, one uint64 below the modulus per value."""
    size = caller.state.vector_size
    raw = _decode(required(body, "vector", "vector"), "vector", size=8 * size)
    vector = np.frombuffer(raw, "<u8").astype(np.uint64)
    try:
        check_vector(vector, size, caller.config.modulus_range, str(caller.index))
    except SecAggError as exc:
        raise InvalidInput("vector", exc.reason, code=REFUSED) from None
    return [_message(caller, stages.MASKED, now, data=raw)]


def _unmask(caller: Caller, body: Mapping[str, Any], now: datetime, seen: Seen) -> Built:
    """Stage 4: shares of survivors' self-mask seeds and of dropped participants' mask keys,
    each for a participant the request names in that role (checked when they are combined)."""
    number = caller.round_.number
    survivors, dropped = set(caller.state.survivors or []), set(caller.state.dropped or [])
    payload: dict[str, dict[str, str]] = {}
    for field, allowed, what in (
        ("self_mask_shares", survivors, "a survivor"),
        ("key_shares", dropped, "a dropped participant"),
    ):
        # Either may be left out (or null): a participant holds shares only of its neighbours.
        raw = body.get(field)
        given = {} if raw is None else read_mapping(raw, field)
        payload[field] = {}
        for key, value in given.items():
            index = _participant_key(key, field, allowed, what, number)
            share = _decode(value, f"{field}.{key}", size=SHARE_BYTES)
            payload[field][str(index)] = stages.b64(share)
    return [_message(caller, stages.UNMASK, now, payload=payload)]


BUILDERS: dict[str, Builder] = {
    stages.ADVERTISE: _advertise,
    stages.SHARE: _share,
    stages.MASKED: _masked,
    stages.UNMASK: _unmask,
}


def same(stored: list[FLSecAggMessage], built: Built) -> bool:
    """Whether a repeated message is the one already accepted (a retry)."""

    def key(m: FLSecAggMessage) -> tuple[Any, ...]:
        return (m.recipient_index, json.dumps(m.payload, sort_keys=True), m.data)

    return sorted(map(key, stored), key=repr) == sorted(map(key, built), key=repr)


def answer(caller: Caller, stage: str) -> dict[str, Any]:
    return {
        "message": f"{stage} message accepted",
        "session_id": str(caller.fl_session.id),
        "round": caller.round_.number,
        "stage": stage,
        "participant_index": caller.index,
    }

"""What a SecAgg+ stage relays to each participant once its messages are final, and the
long-poll that waits for it.

A stage's messages are final once it closed (for ``unmask``: once the request is out), and
never change after: the neighbours' public keys (``advertise_keys``), the sealed bundles sent
to each participant (``share_keys``), the survivors and dropped of the unmask request
(``unmask``). So a replica keeps a closed stage, for every participant at once, and answers
all of its waiters from it (:class:`Relays`): the stage message that closes a stage keeps what
its close made final before it wakes the waiters, and a replica that did not close it reads it
once, however many of its participants wait. Reads that find the stage still open are shared
only by callers that arrive while they run and before another stage closes anywhere (a read
begun before a close may have missed it); they are never kept.

Waiting (:func:`await_relay`) holds no database connection: a round's waiters are woken after
the commit that closes one of its stages, and check again every few seconds in case another
replica closed it. A stage whose deadline passed before the rounds job closed it is closed by
the waiter itself.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from parity.db.session import Database
from parity.fl import rounds_repository as rounds_repo
from parity.fl import secagg_repository as repo
from parity.fl import secagg_stages as stages
from parity.fl.deps import FLDeps
from parity.fl.errors import RoundClosed
from parity.fl.models import FLRound, FLSession
from parity.fl.secagg_models import FLSecAggRound

MAX_WAIT_SECONDS = 30.0
KEEP = 128  # closed stages kept per replica (a few per running round)
# What a participant needs after posting a stage's message: the next stage's input.
REPLY_STAGE = {
    stages.ADVERTISE: stages.ADVERTISE,
    stages.SHARE: stages.SHARE,
    stages.MASKED: stages.UNMASK,
}


@dataclass(frozen=True)
class Snapshot:
    """A SecAgg+ round as one read found it."""

    session_id: uuid.UUID
    round_id: uuid.UUID
    number: int
    failure: str | None  # why the round failed, None while it runs
    stage: str  # the round's current stage
    stage_deadline_at: Any
    deadlines: Mapping[str, str | None]


@dataclass(frozen=True)
class Relay:
    """A final stage: who took part, and what each of them receives."""

    stage: str
    members: frozenset[int]
    messages: Mapping[int, list[dict[str, Any]]] = field(default_factory=dict)

    def to(self, index: int) -> list[dict[str, Any]]:
        return self.messages.get(index, [])


def is_final(state_stage: str, stage: str) -> bool:
    """Whether ``stage``'s messages are final when the round is in ``state_stage``."""
    if stage == stages.UNMASK:
        return state_stage in (stages.UNMASK, stages.DONE)
    return stages.ORDER.get(state_stage, -1) > stages.ORDER[stage]


class Relays:
    """Closed stages read once per replica (the last :data:`KEEP`), and the reads under way."""

    def __init__(self) -> None:
        self._final: OrderedDict[tuple[uuid.UUID, str], tuple[Snapshot, Relay]] = OrderedDict()
        self._reading: dict[tuple[uuid.UUID, str], tuple[int, asyncio.Task[Any]]] = {}

    async def read(
        self, db: Database, round_id: uuid.UUID, stage: str
    ) -> tuple[Snapshot, Relay | None]:
        """The round as it is now, and the stage's relay once it is final."""
        key = (round_id, stage)
        kept = self._final.get(key)
        if kept is not None:
            self._final.move_to_end(key)
            return kept
        under_way = self._reading.get(key)
        if under_way is None or under_way[0] != stages.rings():
            task = asyncio.ensure_future(_read(db, round_id, stage))
            under_way = (stages.rings(), task)
            self._reading[key] = under_way
            task.add_done_callback(functools.partial(self._done, key))
        snapshot, relay = await asyncio.shield(under_way[1])
        return snapshot, relay

    def prime(self, snapshot: Snapshot, relay: Relay) -> None:
        """Keep a stage its close just made final (after that commit): its waiters, woken
        next, need not read it."""
        self._keep((snapshot.round_id, relay.stage), snapshot, relay)

    def _keep(self, key: tuple[uuid.UUID, str], snapshot: Snapshot, relay: Relay) -> None:
        self._final[key] = (snapshot, relay)
        while len(self._final) > KEEP:
            self._final.popitem(last=False)

    def _done(self, key: tuple[uuid.UUID, str], task: asyncio.Task[Any]) -> None:
        current = self._reading.get(key)
        if current is not None and current[1] is task:
            del self._reading[key]
        if task.cancelled() or task.exception() is not None:
            return
        snapshot, relay = task.result()
        if relay is not None:
            self._keep(key, snapshot, relay)


RELAYS = Relays()


async def _read(db: Database, round_id: uuid.UUID, stage: str) -> tuple[Snapshot, Relay | None]:
    async with db.read_session() as session:
        found = await repo.round_with_state(session, round_id)
        if found is None:
            raise RoundClosed(f"round {round_id} has no secure aggregation state")
        fl_session, round_, state = found
        snapshot = snapshot_of(fl_session, round_, state)
        if snapshot.failure is not None or not is_final(state.stage, stage):
            return snapshot, None
        adverts, bundles = None, None
        if stage == stages.ADVERTISE:
            adverts = (await repo.sent_to_server(session, round_id, [stage]))[stage]
        elif stage == stages.SHARE:
            bundles = await repo.relayed_bundles(session, round_id)
        return snapshot, relay_of(fl_session, round_, state, stage, adverts, bundles)


def snapshot_of(fl_session: FLSession, round_: FLRound, state: FLSecAggRound) -> Snapshot:
    failed = state.stage == stages.FAILED or round_.status == rounds_repo.FAILED
    return Snapshot(
        fl_session.id,
        round_.id,
        round_.number,
        (round_.failure_reason or f"round {round_.number} failed") if failed else None,
        state.stage,
        state.stage_deadline_at,
        {k: (v or {}).get("deadline_at") for k, v in (state.stages or {}).items()},
    )


def relay_of(
    fl_session: FLSession,
    round_: FLRound,
    state: FLSecAggRound,
    stage: str,
    adverts: Mapping[int, Mapping[str, Any]] | None = None,
    bundles: Iterable[tuple[int, int, bytes]] | None = None,
) -> Relay:
    """What a final stage relays to each participant, from the round's state and (for the
    first two stages) the stage's adverts or sealed bundles ``(sender, recipient, sealed)``."""
    if stage == stages.UNMASK:
        survivors = frozenset(int(i) for i in state.survivors or [])
        request = {
            "sender": None,
            "survivors": sorted(survivors),
            "dropped": sorted(int(i) for i in state.dropped or []),
        }
        return Relay(stage, survivors, {i: [request] for i in survivors})
    members = frozenset(stages.members(state, stage))
    if stage == stages.MASKED:  # nothing to relay: final once the stage closed
        return Relay(stage, members)
    if stage == stages.ADVERTISE:
        config = stages.config_of(fl_session)
        assert config is not None and adverts is not None
        setups = stages.setups_of(fl_session, round_, state, config)
        by_member = {
            u: [
                {"sender": v, **_keys(adverts[v])}
                for v in sorted(int(n) for n in setups[stages.pid(u)].neighbours)
                if v in members and v in adverts
            ]
            for u in members
        }
        return Relay(stage, members, by_member)
    sealed_for: dict[int, list[dict[str, Any]]] = {u: [] for u in members}
    for sender, recipient, sealed in sorted(bundles or ()):
        if sender in members and recipient in members:
            sealed_for[recipient].append({"sender": sender, "sealed": stages.b64(sealed)})
    return Relay(stage, members, sealed_for)


def _keys(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {"c_public": payload["c_public"], "s_public": payload["s_public"]}


def answer(snapshot: Snapshot, stage: str, relay: Relay | None, index: int) -> dict[str, Any]:
    """The long-poll's answer to participant ``index``: ``ready`` with its messages once the
    stage is final; a participant the stage went on without hears why (409 ``round_closed``)."""
    if relay is not None and index not in relay.members:
        verb = "is not among the survivors" if stage == stages.UNMASK else f"left the {stage} stage"
        raise RoundClosed(
            f"this runner was dropped from round {snapshot.number}: it {verb}",
            details={"round": snapshot.number, "stage": stage},
        )
    return {
        "session_id": str(snapshot.session_id),
        "round": snapshot.number,
        "stage": stage,
        "ready": relay is not None,
        "current_stage": snapshot.stage,
        "stage_deadline_at": snapshot.deadlines.get(stage),
        "messages": relay.to(index) if relay is not None else [],
    }


async def await_relay(
    db: Database,
    deps: FLDeps,
    round_id: uuid.UUID,
    index: int,
    stage: str,
    *,
    wait: float,
    recheck_seconds: float,
) -> dict[str, Any]:
    """Participant ``index``'s messages of ``stage`` once final, waiting up to ``wait``
    seconds (30 at most); ``ready: false`` when the time passed first. 409 ``round_closed``
    with the reason when the round failed or went on without the participant."""
    give_up = time.monotonic() + min(max(wait, 0.0), MAX_WAIT_SECONDS)
    with stages.BELL.watching(round_id) as watch:
        while True:
            snapshot, relay = await RELAYS.read(db, round_id, stage)
            if snapshot.failure is not None:
                raise RoundClosed(
                    snapshot.failure, details={"round": snapshot.number, "status": "failed"}
                )
            if relay is not None:
                return answer(snapshot, stage, relay, index)
            if (
                snapshot.stage == stage
                and stage != stages.UNMASK
                and deps.clock.now() >= snapshot.stage_deadline_at
            ):
                # Its deadline passed and the rounds job has not closed it yet: close it now.
                async with db.transaction() as session:
                    await stages.close_stage(session, deps, round_id)
                continue
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return answer(snapshot, stage, None, index)
            await watch.wait(min(remaining, recheck_seconds))

"""The server's side of one SecAgg+ round: checking and relaying stage messages, summing the
masked inputs, and removing the masks (see :mod:`.secagg` for the stages).

Pure functions of the round's data, so the FL domain can keep each stage's messages wherever it
likes between stages. Nothing here ever sees an individual update in clear: the server holds
sealed bundles it cannot open, masked vectors, their sum, and — after stage 4 — the self-mask
seeds of survivors and the mask keys of dropped participants, which remove masks from the sum
only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from parity.core.fl.privacy_errors import SecAggError, ShamirError
from parity.core.fl.secagg import (
    KeyAdvert,
    MaskedInput,
    RoundSetup,
    ShareMessage,
    UInt,
    UnmaskReply,
    UnmaskRequest,
    add_mod,
    check_vector,
    prg_mask,
    self_mask_commitment,
    sub_mod,
)
from parity.core.fl.secagg_keys import KEY_BYTES, pairwise_seed, public_from_private
from parity.core.fl.shamir import Share, combine_robust

__all__ = [
    "UnmaskResult",
    "check_adverts",
    "neighbour_adverts",
    "route_shares",
    "sum_masked",
    "unmask_request",
    "unmask_sum",
]


def _round(setups: Mapping[str, RoundSetup]) -> RoundSetup:
    if not setups:
        raise SecAggError("participants", "the round has no participants")
    return next(iter(setups.values()))


def check_adverts(
    setups: Mapping[str, RoundSetup], adverts: Iterable[KeyAdvert]
) -> dict[str, KeyAdvert]:
    """Stage 1's adverts by participant: each from a participant of the round, once, with
    32-byte keys that no one else uses (a copied key would let one participant pose as two)."""
    result: dict[str, KeyAdvert] = {}
    seen_keys: set[bytes] = set()
    for advert in adverts:
        who = advert.participant
        if who not in setups:
            raise SecAggError(who, f"{who!r} is not a participant of this round")
        if who in result:
            raise SecAggError(who, f"{who!r} advertised keys twice")
        keys = (advert.c_public, advert.s_public)
        if any(len(k) != KEY_BYTES for k in keys) or keys[0] == keys[1]:
            raise SecAggError(who, f"the keys of {who!r} are malformed")
        if seen_keys & set(keys):
            raise SecAggError(who, f"{who!r} advertised a key another participant uses")
        seen_keys.update(keys)
        result[who] = advert
    return result


def neighbour_adverts(
    setups: Mapping[str, RoundSetup], adverts: Mapping[str, KeyAdvert]
) -> dict[str, dict[str, KeyAdvert]]:
    """What each advertising participant receives before stage 2: its neighbours' adverts."""
    return {u: {v: adverts[v] for v in setups[u].neighbours if v in adverts} for u in adverts}


def route_shares(
    setups: Mapping[str, RoundSetup],
    adverts: Mapping[str, KeyAdvert],
    messages: Iterable[ShareMessage],
) -> tuple[dict[str, dict[str, bytes]], dict[str, bytes]]:
    """Stage 2: ``(recipient -> {sender -> sealed bundle}, sender -> commitment)``. Senders are
    the participants that shared keys, each with one bundle for every neighbour that advertised
    keys; bundles go only to senders' neighbours that shared too (the others are out of the
    round)."""
    commitments: dict[str, bytes] = {}
    bundles: dict[str, dict[str, bytes]] = {}
    checked: list[ShareMessage] = []
    for message in messages:
        who = message.sender
        if who not in adverts:
            raise SecAggError(who, f"{who!r} shares keys without having advertised any")
        if who in commitments:
            raise SecAggError(who, f"{who!r} shared keys twice")
        if len(message.commitment) != 32:
            raise SecAggError(who, f"the self-mask commitment of {who!r} is malformed")
        for recipient in message.sealed:
            if recipient not in setups[who].neighbours or recipient not in adverts:
                raise SecAggError(who, f"{who!r} sent shares to {recipient!r}, not a neighbour")
        # Every neighbour that advertised keys holds a share of the sender's secrets: without
        # them its mask could not be removed (were it to drop) with the threshold it promised.
        missing = [v for v in setups[who].neighbours if v in adverts and v not in message.sealed]
        if missing:
            names = ", ".join(repr(v) for v in missing)
            raise SecAggError(who, f"{who!r} sent no shares to its neighbour(s) {names}")
        commitments[who] = message.commitment
        checked.append(message)
    for message in checked:
        for recipient, sealed in message.sealed.items():
            if recipient in commitments:
                bundles.setdefault(recipient, {})[message.sender] = sealed
    return bundles, commitments


def sum_masked(
    setups: Mapping[str, RoundSetup], sharers: Iterable[str], inputs: Iterable[MaskedInput]
) -> tuple[UInt, tuple[str, ...]]:
    """Stage 3: the modular sum of the masked inputs and who sent one (the survivors). Only
    participants that shared keys may send one, once."""
    setup = _round(setups)
    allowed = set(sharers)
    total: UInt | None = None
    senders: set[str] = set()
    for item in inputs:
        who = item.participant
        if who not in allowed:
            raise SecAggError(who, f"{who!r} sends an input without having shared keys")
        if who in senders:
            raise SecAggError(who, f"{who!r} sent two masked inputs")
        vector = check_vector(item.vector, setup.vector_size, setup.modulus, who)
        total = vector.copy() if total is None else add_mod(total, vector, setup.modulus)
        senders.add(who)
    if total is None:
        raise SecAggError("masked_input", "no participant sent a masked input")
    return total, tuple(sorted(senders))


def unmask_request(
    setups: Mapping[str, RoundSetup], sharers: Iterable[str], survivors: Iterable[str]
) -> UnmaskRequest:
    """Stage 4's request. Refused below the threshold: the sum of fewer inputs than that
    would say too much about each of them, and their shares could not rebuild the masks."""
    setup = _round(setups)
    alive = tuple(sorted(set(survivors)))
    if len(alive) < setup.threshold:
        raise SecAggError(
            "survivors",
            f"only {len(alive)} participants sent a masked input; "
            f"reconstruction_threshold is {setup.threshold}",
        )
    dropped = tuple(sorted(set(sharers) - set(alive)))
    return UnmaskRequest(alive, dropped)


@dataclass(frozen=True)
class UnmaskResult:
    """The exact sum (mod ``modulus_range``) of the survivors' quantized vectors, who they are,
    who dropped, and ``(holder, owner)`` for every share that was refused (wrong index, not a
    holder, malformed, or inconsistent with the rebuilt secret): evidence of misbehaviour."""

    total: UInt
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    rejected_shares: tuple[tuple[str, str], ...]


def _shares_of(
    owner: str,
    setups: Mapping[str, RoundSetup],
    replies: Mapping[str, UnmaskReply],
    survivors: set[str],
    kind: str,
    rejected: list[tuple[str, str]],
) -> dict[int, Share]:
    owner_setup = setups[owner]
    shares: dict[int, Share] = {}
    for holder, reply in replies.items():
        if holder not in survivors:
            continue  # only survivors were asked; anything else is not part of the round
        data = (reply.self_mask_shares if kind == "self" else reply.key_shares).get(owner)
        if data is None:
            continue
        if holder not in owner_setup.holders:
            rejected.append((holder, owner))
            continue
        try:
            share = Share.from_bytes(data)
        except ShamirError:
            rejected.append((holder, owner))
            continue
        if share.index != owner_setup.share_index(holder):
            rejected.append((holder, owner))
            continue
        shares[share.index] = share
    return shares


def _rebuild(
    owner: str,
    what: str,
    shares: dict[int, Share],
    setups: Mapping[str, RoundSetup],
    check: Callable[[bytes], bool],
    rejected: list[tuple[str, str]],
) -> bytes:
    owner_setup = setups[owner]
    try:
        secret, wrong = combine_robust(shares.values(), owner_setup.threshold, check)
    except ShamirError as exc:
        raise SecAggError(
            owner, f"the {what} of {owner!r} cannot be rebuilt: {exc.reason}"
        ) from exc
    rejected.extend((owner_setup.holder_of(i) or str(i), owner) for i in wrong)
    return secret


def unmask_sum(
    setups: Mapping[str, RoundSetup],
    adverts: Mapping[str, KeyAdvert],
    commitments: Mapping[str, bytes],
    masked_sum: UInt,
    request: UnmaskRequest,
    replies: Iterable[UnmaskReply],
) -> UnmaskResult:
    """Stage 4: rebuild each survivor's self-mask seed (checked against its commitment) and
    each dropped participant's mask key (checked against its advertised public key), remove
    those masks, and return the exact sum. A secret that cannot be rebuilt from the honest
    shares fails the round with a :class:`SecAggError` naming whose and why."""
    setup = _round(setups)
    modulus, size, context = setup.modulus, setup.vector_size, setup.context
    by_holder: dict[str, UnmaskReply] = {}
    for reply in replies:
        by_holder.setdefault(reply.holder, reply)
    survivors = set(request.survivors)
    rejected: list[tuple[str, str]] = []
    total = masked_sum.copy()
    for owner in request.survivors:
        shares = _shares_of(owner, setups, by_holder, survivors, "self", rejected)
        expected = commitments[owner]

        def seed_ok(seed: bytes, owner: str = owner, expected: bytes = expected) -> bool:
            return self_mask_commitment(context, owner, seed) == expected

        seed = _rebuild(owner, "self-mask seed", shares, setups, seed_ok, rejected)
        total = sub_mod(total, prg_mask(seed, size, modulus), modulus)
    for owner in request.dropped:
        shares = _shares_of(owner, setups, by_holder, survivors, "key", rejected)
        public = adverts[owner].s_public

        def key_ok(key: bytes, public: bytes = public) -> bool:
            return public_from_private(key) == public

        key = _rebuild(owner, "mask key", shares, setups, key_ok, rejected)
        for u in setups[owner].neighbours:
            if u not in survivors:
                continue
            mask = prg_mask(
                pairwise_seed(key, adverts[u].s_public, context, owner, u), size, modulus
            )
            # u added +mask when its id sorts lower than the dropped owner's, -mask otherwise.
            total = sub_mod(total, mask, modulus) if u < owner else add_mod(total, mask, modulus)
    return UnmaskResult(total, tuple(request.survivors), tuple(request.dropped), tuple(rejected))

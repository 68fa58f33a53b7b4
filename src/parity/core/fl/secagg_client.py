"""A participant's side of one SecAgg+ round (see :mod:`.secagg` for the stages).

:class:`SecAggClient` holds the round's secrets (two X25519 key pairs and the self-mask seed)
in memory only; the runner's executor creates one per round, calls :meth:`advertise`,
:meth:`share_keys`, :meth:`masked_input` and :meth:`unmask` with what the server relays, and
drops it afterwards. Every refusal is a :class:`SecAggError` naming the participant or message
at fault: the runner then leaves the round (the others recover its contribution's masks).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

import numpy as np

from parity.core.fl.privacy_errors import SecAggError
from parity.core.fl.secagg import (
    KeyAdvert,
    MaskedInput,
    RoundSetup,
    ShareMessage,
    UInt,
    UnmaskReply,
    UnmaskRequest,
    add_mod,
    decode_bundle,
    encode_bundle,
    prg_mask,
    self_mask_commitment,
    sub_mod,
)
from parity.core.fl.secagg_keys import (
    KEY_BYTES,
    key_pair_from_private,
    open_sealed,
    pairwise_seed,
    seal,
)
from parity.core.fl.shamir import Share, split_secret

__all__ = ["SecAggClient"]


class SecAggClient:
    """One participant in one round. ``token_bytes`` and ``randbelow`` are the sources of
    secrets (the OS CSPRNG by default; tests pass seeded ones to replay a round)."""

    def __init__(
        self,
        setup: RoundSetup,
        *,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> None:
        self.setup = setup
        self._randbelow = randbelow
        # Any 32 random bytes are an X25519 private key (the curve clamps them).
        self._c = key_pair_from_private(token_bytes(KEY_BYTES))
        self._s = key_pair_from_private(token_bytes(KEY_BYTES))
        self._self_seed = token_bytes(KEY_BYTES)
        self._adverts: dict[str, KeyAdvert] = {}
        # Per neighbour whose bundle opened: (its self-mask seed share, its mask key share).
        self._received: dict[str, tuple[bytes, bytes]] = {}
        self._own_self_share = b""
        self._submitted = False

    @property
    def participant(self) -> str:
        return self.setup.participant

    def advertise(self) -> KeyAdvert:
        """Stage 1: the public keys to post."""
        return KeyAdvert(self.participant, self._c.public, self._s.public)

    def share_keys(self, adverts: Mapping[str, KeyAdvert]) -> ShareMessage:
        """Stage 2: split the self-mask seed and the mask private key among the neighbours that
        advertised keys (and ourselves); one sealed bundle per neighbour."""
        setup = self.setup
        present = [v for v in setup.neighbours if v in adverts]
        for v in present:
            advert = adverts[v]
            if advert.participant != v or advert.c_public == advert.s_public:
                raise SecAggError(v, f"the key advert of {v!r} is malformed")
        if len(present) + 1 < setup.threshold:
            raise SecAggError(
                "participants",
                f"only {len(present)} neighbours advertised keys; the threshold is "
                f"{setup.threshold} shares",
            )
        self._adverts = {v: adverts[v] for v in present}
        holders = setup.holders
        indices = [setup.share_index(h) for h in holders]
        seed_shares = dict(
            zip(
                holders,
                split_secret(self._self_seed, setup.threshold, indices, self._randbelow),
                strict=True,
            )
        )
        key_shares = dict(
            zip(
                holders,
                split_secret(self._s.private, setup.threshold, indices, self._randbelow),
                strict=True,
            )
        )
        sealed: dict[str, bytes] = {}
        for v in present:
            bundle = encode_bundle(
                self.participant, v, seed_shares[v].to_bytes(), key_shares[v].to_bytes()
            )
            sealed[v] = seal(
                bundle,
                self._c.private,
                self._adverts[v].c_public,
                setup.context,
                self.participant,
                v,
            )
        self._own_self_share = seed_shares[self.participant].to_bytes()
        commitment = self_mask_commitment(setup.context, self.participant, self._self_seed)
        return ShareMessage(self.participant, commitment, sealed)

    def _open(self, sender: str, sealed: bytes) -> None:
        setup = self.setup
        advert = self._adverts.get(sender)
        if advert is None:
            raise SecAggError(sender, f"shares from {sender!r}, which is not a neighbour")
        plaintext = open_sealed(
            sealed, self._c.private, advert.c_public, setup.context, sender, self.participant
        )
        from_id, to_id, seed_share, key_share = decode_bundle(plaintext)
        if from_id != sender or to_id != self.participant:
            raise SecAggError(sender, f"the bundle from {sender!r} names other participants")
        for share in (seed_share, key_share):
            if Share.from_bytes(share).index != setup.share_index(self.participant):
                raise SecAggError(sender, f"the shares from {sender!r} carry the wrong index")
        self._received[sender] = (seed_share, key_share)

    def masked_input(self, received: Mapping[str, bytes], quantized: UInt) -> MaskedInput:
        """Stage 3: open the bundles relayed to us (``sender -> sealed``) and mask the quantized
        vector with the self mask and a pairwise mask per sender."""
        setup = self.setup
        vector = np.asarray(quantized)
        if vector.shape != (setup.vector_size,) or vector.dtype != np.uint64:
            raise SecAggError("masked_input", f"the input must be {setup.vector_size} uint64s")
        if setup.modulus < 2**64 and bool((vector >= np.uint64(setup.modulus)).any()):
            raise SecAggError("masked_input", "the input has values outside the modulus")
        for sender, sealed in received.items():
            self._open(sender, sealed)
        if len(self._received) + 1 < setup.threshold:
            raise SecAggError(
                "participants",
                f"shares came from {len(self._received)} neighbours; the threshold is "
                f"{setup.threshold}",
            )
        masked = add_mod(
            vector, prg_mask(self._self_seed, setup.vector_size, setup.modulus), setup.modulus
        )
        for v in sorted(self._received):
            seed = pairwise_seed(
                self._s.private, self._adverts[v].s_public, setup.context, self.participant, v
            )
            mask = prg_mask(seed, setup.vector_size, setup.modulus)
            if self.participant < v:
                masked = add_mod(masked, mask, setup.modulus)
            else:
                masked = sub_mod(masked, mask, setup.modulus)
        self._submitted = True
        return MaskedInput(self.participant, masked)

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Stage 4: per neighbour whose shares we hold, the share the server may have — of the
        self-mask seed if it survived, of the mask key if it dropped — never both."""
        setup = self.setup
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            raise SecAggError("unmask", "the server names a participant both survivor and dropped")
        if not self._submitted or self.participant not in survivors:
            raise SecAggError("unmask", "we did not send a masked input in this round")
        alive = 1 + sum(1 for v in self._received if v in survivors)
        if alive < setup.threshold:
            # Bell et al.: with fewer live neighbours the server could be collecting shares to
            # unmask someone's individual input; refuse rather than help it.
            raise SecAggError(
                "unmask",
                f"only {alive} of our share holders survived; the threshold is {setup.threshold}",
            )
        self_mask_shares = {self.participant: self._own_self_share}
        key_shares: dict[str, bytes] = {}
        for v, (seed_share, key_share) in sorted(self._received.items()):
            if v in survivors:
                self_mask_shares[v] = seed_share
            elif v in dropped:
                key_shares[v] = key_share
        return UnmaskReply(self.participant, self_mask_shares, key_shares)

"""SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", on Bonawitz et al. 2017's SecAgg): the shared pieces of the protocol.

The server learns the sum of the participants' quantized updates (:mod:`.quantize`) and
nothing else, and the sum survives participants dropping out after they shared their keys.
One round, in four stages (the participant's side is :class:`.secagg_client.SecAggClient`, the
server's :mod:`.secagg_server`):

1. **advertise keys** — the server plans the round (:func:`plan_round`: a communication graph in
   which each participant has ``num_shares - 1`` neighbours); each participant makes two X25519
   key pairs and posts the public halves (:class:`KeyAdvert`);
2. **share keys** — each participant draws a 32-byte self-mask seed ``b``, splits ``b`` and its
   mask private key into Shamir shares (threshold t) among its neighbours and itself, and posts
   one sealed bundle per neighbour plus a hash commitment to ``b`` (:class:`ShareMessage`);
3. **masked input** — each participant adds to its quantized vector the self mask ``PRG(b)`` and,
   for every neighbour whose bundle it received, ``+PRG(s_uv)`` (lower id) or ``-PRG(s_uv)``
   (higher id), all modulo ``modulus_range`` (:class:`MaskedInput`); pairwise masks cancel in the
   sum;
4. **unmask** — the server names who sent an input (survivors) and who shared keys but did not
   (dropped); each survivor reveals, per neighbour, the share of ``b`` (a survivor) or of the
   mask key (a dropped one), never both. With t shares the server rebuilds each survivor's ``b``
   and each dropped participant's key, removes those masks and holds the exact sum.

Masks come from ChaCha20 keyed with the full 32-byte seed (:func:`prg_mask`); every key is bound
to the round's context (:func:`round_context`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import NDArray

from parity.core.fl.privacy_errors import SecAggError
from parity.core.fl.secagg_config import SecAggConfig

__all__ = [
    "KeyAdvert",
    "MaskedInput",
    "RoundSetup",
    "ShareMessage",
    "UnmaskReply",
    "UnmaskRequest",
    "add_mod",
    "check_vector",
    "communication_graph",
    "decode_bundle",
    "distinct_ids",
    "encode_bundle",
    "plan_round",
    "prg_mask",
    "round_context",
    "self_mask_commitment",
    "sub_mod",
]

UInt = NDArray[np.uint64]
_LABEL = b"parity-secagg-v1"


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def round_context(session_id: str, round_number: int) -> bytes:
    """The bytes every key and mask of one round is bound to."""
    return hashlib.sha256(
        _LABEL + _field(session_id.encode()) + round_number.to_bytes(8, "big")
    ).digest()


def prg_mask(seed: bytes, size: int, modulus: int) -> UInt:
    """``size`` integers uniform in ``[0, modulus)`` (a power of two up to 2^64): the ChaCha20
    keystream of the 32-byte ``seed``, 8 bytes per integer, low bits kept. Each seed is used for
    one stream only, so the fixed nonce is safe."""
    if len(seed) != 32:
        raise SecAggError("seed", "mask seeds are 32 bytes")
    encryptor = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * size))
    values = np.frombuffer(stream, dtype="<u8").astype(np.uint64)
    return values & np.uint64(modulus - 1)


def add_mod(a: UInt, b: UInt, modulus: int) -> UInt:
    """``(a + b) mod modulus`` for a power-of-two modulus (uint64 wraps mod 2^64)."""
    return (a + b) & np.uint64(modulus - 1)


def sub_mod(a: UInt, b: UInt, modulus: int) -> UInt:
    return (a - b) & np.uint64(modulus - 1)


def self_mask_commitment(context: bytes, participant: str, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed, posted in stage 2: the server checks the seed it
    rebuilds from shares against it (a tampered share gives another seed)."""
    return hashlib.sha256(
        _LABEL + b"self-mask" + _field(context) + _field(participant.encode()) + seed
    ).digest()


def communication_graph(
    participants: Sequence[str], num_shares: int, seed: bytes
) -> dict[str, tuple[str, ...]]:
    """Each participant's neighbours (sorted), a symmetric graph fixed by ``seed``.

    Participants are ordered by ``SHA-256(seed || id)`` into a ring and each is linked to the
    ``(num_shares - 1) / 2`` next on either side (a Harary graph on a seeded permutation, as in
    SecAgg+), so it has ``num_shares - 1`` neighbours; with ``num_shares`` or fewer participants
    everyone neighbours everyone."""
    ids = list(participants)
    if len(set(ids)) != len(ids):
        raise SecAggError("participants", "participant ids must be distinct")
    n = len(ids)
    if n <= num_shares:
        return {u: tuple(sorted(v for v in ids if v != u)) for u in ids}
    order = sorted(ids, key=lambda i: hashlib.sha256(seed + b"\0" + i.encode()).digest())
    half = (num_shares - 1) // 2
    graph: dict[str, set[str]] = {u: set() for u in ids}
    for position, u in enumerate(order):
        for step in range(1, half + 1):
            v = order[(position + step) % n]
            graph[u].add(v)
            graph[v].add(u)
    return {u: tuple(sorted(graph[u])) for u in ids}


@dataclass(frozen=True)
class RoundSetup:
    """What the server tells one participant before stage 1. ``share_indices`` gives the
    Shamir x of every holder of this participant's secrets (its neighbours and itself): one
    index per participant for the whole round (its position among all of them, from 1), so a
    share's index says who holds it, to the owner, the holder and the server alike."""

    context: bytes
    participant: str
    neighbours: tuple[str, ...]
    threshold: int
    modulus: int
    vector_size: int
    share_indices: Mapping[str, int]

    @property
    def holders(self) -> tuple[str, ...]:
        """Who holds a share of this participant's secrets: its neighbours and itself."""
        return tuple(sorted((*self.neighbours, self.participant)))

    def share_index(self, holder: str) -> int:
        """The Shamir x of ``holder``'s share of this participant's secrets."""
        return self.share_indices[holder]

    def holder_of(self, index: int) -> str | None:
        return next((h for h, i in self.share_indices.items() if i == index), None)


def plan_round(
    participants: Sequence[str],
    config: SecAggConfig,
    graph_seed: bytes,
    context: bytes,
    vector_size: int,
) -> dict[str, RoundSetup]:
    """Every participant's :class:`RoundSetup`; an error when the round cannot reach the
    reconstruction threshold even before anyone drops."""
    if len(participants) < config.reconstruction_threshold:
        raise SecAggError(
            "participants",
            f"{len(participants)} participants cannot reach reconstruction_threshold "
            f"{config.reconstruction_threshold}",
        )
    graph = communication_graph(participants, config.num_shares, graph_seed)
    index = {u: i + 1 for i, u in enumerate(sorted(participants))}
    return {
        u: RoundSetup(
            context,
            u,
            graph[u],
            config.reconstruction_threshold,
            config.modulus_range,
            vector_size,
            {h: index[h] for h in (*graph[u], u)},
        )
        for u in participants
    }


@dataclass(frozen=True)
class KeyAdvert:
    """Stage 1: a participant's public keys (``c`` for sealing shares, ``s`` for masks)."""

    participant: str
    c_public: bytes
    s_public: bytes


@dataclass(frozen=True)
class ShareMessage:
    """Stage 2: sealed share bundles by recipient, and the commitment to the self-mask seed."""

    sender: str
    commitment: bytes
    sealed: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskedInput:
    """Stage 3: the masked vector (integers modulo ``modulus_range``)."""

    participant: str
    vector: UInt


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4, server to survivors: who sent an input, and who shared keys but sent none."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class UnmaskReply:
    """Stage 4, a survivor's answer: per owner, one share (bytes of a :class:`.shamir.Share`)
    of its self-mask seed (owner survived) or of its mask private key (owner dropped)."""

    holder: str
    self_mask_shares: Mapping[str, bytes] = field(default_factory=dict)
    key_shares: Mapping[str, bytes] = field(default_factory=dict)


def encode_bundle(sender: str, recipient: str, self_mask_share: bytes, key_share: bytes) -> bytes:
    """The plaintext of one sealed bundle (length-prefixed fields)."""
    parts = (sender.encode(), recipient.encode(), self_mask_share, key_share)
    return b"".join(_field(p) for p in parts)


def decode_bundle(data: bytes) -> tuple[str, str, bytes, bytes]:
    parts: list[bytes] = []
    offset = 0
    while offset < len(data) and len(parts) < 4:
        size = int.from_bytes(data[offset : offset + 4], "big")
        parts.append(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
    if len(parts) != 4 or offset != len(data):
        raise SecAggError("shares", "a share bundle is malformed")
    return parts[0].decode(), parts[1].decode(), parts[2], parts[3]


def check_vector(vector: object, size: int, modulus: int, who: str) -> UInt:
    """A masked vector of the round's size with every value below the modulus."""
    array = np.asarray(vector)
    if array.shape != (size,) or array.dtype != np.uint64:
        raise SecAggError(who, f"the masked input must be {size} uint64 values")
    if modulus < 2**64 and bool((array >= np.uint64(modulus)).any()):
        raise SecAggError(who, "the masked input has values outside the modulus")
    return array


def distinct_ids(ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(ids)))

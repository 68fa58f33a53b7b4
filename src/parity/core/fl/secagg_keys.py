"""SecAgg+ key material: X25519 key pairs, key agreement + HKDF, sealed share bundles.

Each participant has two X25519 key pairs per round (Bonawitz et al. 2017): ``c`` to agree on
the keys that encrypt the shares it sends to its neighbours through the server, and ``s`` to
agree on the pairwise mask seeds. Every derived key goes through HKDF-SHA256 with an ``info``
that names its purpose, the round context (session and round) and the two participants, so no
key serves two purposes, two rounds or two pairs; seeds are the full 32 bytes.

Share bundles travel sealed with AES-256-GCM under a key per (sender, recipient) direction; the
associated data binds them to the round and both ids, so the server can neither read them nor
move one to another recipient or round without the recipient noticing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from parity.core.fl.privacy_errors import SecAggError

__all__ = [
    "KEY_BYTES",
    "KeyPair",
    "agree",
    "derive_key",
    "generate_key_pair",
    "key_pair_from_private",
    "open_sealed",
    "pairwise_seed",
    "public_from_private",
    "seal",
]

KEY_BYTES = 32
_NONCE_BYTES = 12
_LABEL = b"parity-secagg-v1"


@dataclass(frozen=True)
class KeyPair:
    """Raw X25519 keys, 32 bytes each (the private one never leaves its participant except as
    Shamir shares of it)."""

    private: bytes
    public: bytes


def generate_key_pair() -> KeyPair:
    """A fresh key pair from the operating system's CSPRNG."""
    return key_pair_from_private(X25519PrivateKey.generate().private_bytes_raw())


def key_pair_from_private(private: bytes) -> KeyPair:
    """The key pair of 32 private bytes (X25519 clamps them; any 32 bytes are a key)."""
    return KeyPair(bytes(private), public_from_private(private))


def public_from_private(private: bytes) -> bytes:
    if len(private) != KEY_BYTES:
        raise SecAggError("private_key", f"an X25519 private key is {KEY_BYTES} bytes")
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def agree(private: bytes, peer_public: bytes) -> bytes:
    """The X25519 shared secret; a peer key of the wrong size or of low order is refused."""
    if len(peer_public) != KEY_BYTES:
        raise SecAggError("public_key", f"an X25519 public key is {KEY_BYTES} bytes")
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public)
        return X25519PrivateKey.from_private_bytes(private).exchange(peer)
    except ValueError as exc:  # all-zero shared secret: a low-order (malicious) public key
        raise SecAggError("public_key", f"unusable public key: {exc}") from exc


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def derive_key(shared: bytes, purpose: str, context: bytes, first: str, second: str) -> bytes:
    """HKDF-SHA256 of ``shared`` to 32 bytes, bound to the purpose, the round context and the
    ordered pair ``(first, second)`` (callers order it: sorted for a symmetric key,
    sender-recipient for a directional one)."""
    info = b"".join(
        (
            _LABEL,
            _field(purpose.encode()),
            _field(context),
            _field(first.encode()),
            _field(second.encode()),
        )
    )
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def pairwise_seed(
    private: bytes, peer_public: bytes, context: bytes, own_id: str, peer_id: str
) -> bytes:
    """The 32-byte mask seed two participants share (the same from either side); the server
    computes it too, from a dropped participant's rebuilt private key."""
    low, high = sorted((own_id, peer_id))
    return derive_key(agree(private, peer_public), "pairwise-mask", context, low, high)


def _direction_key(
    private: bytes, peer_public: bytes, context: bytes, sender: str, recipient: str
) -> bytes:
    return derive_key(agree(private, peer_public), "share-encryption", context, sender, recipient)


def _associated(context: bytes, sender: str, recipient: str) -> bytes:
    return b"".join((_LABEL, _field(context), _field(sender.encode()), _field(recipient.encode())))


def seal(
    plaintext: bytes,
    own_private: bytes,
    peer_public: bytes,
    context: bytes,
    sender: str,
    recipient: str,
    nonce: bytes | None = None,
) -> bytes:
    """``nonce || AES-GCM(plaintext)`` for ``recipient``; a random nonce unless one is given."""
    key = _direction_key(own_private, peer_public, context, sender, recipient)
    nonce = secrets.token_bytes(_NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != _NONCE_BYTES:
        raise SecAggError("nonce", f"the nonce is {_NONCE_BYTES} bytes")
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _associated(context, sender, recipient))


def open_sealed(
    sealed: bytes,
    own_private: bytes,
    peer_public: bytes,
    context: bytes,
    sender: str,
    recipient: str,
) -> bytes:
    """The plaintext of a bundle :func:`seal` made for us; an error naming the sender when it
    was altered, is for another recipient or round, or was not made by ``sender``'s key."""
    key = _direction_key(own_private, peer_public, context, sender, recipient)
    nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, body, _associated(context, sender, recipient))
    except (InvalidTag, ValueError) as exc:
        raise SecAggError(sender, f"the shares from {sender!r} do not authenticate") from exc

"""CIDs, multihashes and the multibase encodings IPFS uses, from the specs (stdlib only).

- unsigned varint: https://github.com/multiformats/unsigned-varint (LEB128, at most 9 bytes)
- multihash: ``varint(hash code) ‖ varint(digest length) ‖ digest``; sha2-256 is code 0x12
- CIDv0: a bare sha2-256 multihash of a dag-pb block, written in base58btc (``Qm…``)
- CIDv1: ``varint(1) ‖ varint(codec) ‖ multihash``, written with a multibase prefix; kubo writes
  base32 lower case (``b…``). Codecs used here: raw 0x55 (leaves), dag-pb 0x70 (nodes).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

__all__ = [
    "DAG_PB",
    "RAW",
    "SHA2_256",
    "Cid",
    "CidError",
    "b58decode",
    "b58encode",
    "decode_varint",
    "encode_varint",
    "sha256_multihash",
]

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12
MAX_CID_TEXT = 200  # longer strings are refused before any decoding work

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


class CidError(ValueError):
    """A string or byte sequence is not a CID this server can use."""


def encode_varint(n: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant group first, MSB set on all but last."""
    if n < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Read a varint at ``pos``; returns ``(value, next position)``. At most 9 bytes (63 bits)."""
    value = 0
    shift = 0
    for i in range(pos, min(pos + 9, len(buf))):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    raise CidError("truncated or over-long varint")


def b58encode(data: bytes) -> str:
    """Bitcoin base58: big-endian base-58 digits, one leading '1' per leading zero byte."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        digit = _B58_INDEX.get(ch)
        if digit is None:
            raise CidError(f"not base58btc: {ch!r}")
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def _b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _b32decode(text: str) -> bytes:
    try:
        return base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except ValueError:
        raise CidError("not base32") from None


def sha256_multihash(digest: bytes) -> bytes:
    """The multihash of a sha2-256 digest: ``0x12 0x20 ‖ digest``."""
    return b"\x12\x20" + digest


def _check_multihash(mh: bytes) -> None:
    code, pos = decode_varint(mh)
    length, pos = decode_varint(mh, pos)
    if len(mh) - pos != length:
        raise CidError("multihash length does not match its digest")
    if code != SHA2_256 or length != 32:
        raise CidError("only sha2-256 content is supported")


_V0_LENGTH = 46  # base58btc of a 34-byte sha2-256 multihash


def _parse_v0(text: str) -> bytes:
    """The multihash a ``Qm…`` CIDv0 spells, or a :class:`CidError` saying why it is not one."""
    what = "not a valid CIDv0 (a base58btc sha2-256 multihash: 'Qm' and 44 more characters)"
    if len(text) != _V0_LENGTH:
        raise CidError(f"{what}: it has {len(text)} characters, not {_V0_LENGTH}")
    try:
        mh = b58decode(text)
        _check_multihash(mh)
    except CidError as exc:
        raise CidError(f"{what}: {exc}") from None
    return mh


@dataclass(frozen=True, slots=True)
class Cid:
    """A content identifier. Equality is exact (a CIDv0 and its CIDv1 differ); compare
    ``multihash`` (what a blockstore is keyed by) or ``to_v1()`` to treat them as one."""

    version: int
    codec: int
    multihash: bytes

    @classmethod
    def v1(cls, codec: int, data: bytes) -> Cid:
        """The CIDv1 of a block: sha2-256 of its bytes."""
        return cls(1, codec, sha256_multihash(hashlib.sha256(data).digest()))

    @classmethod
    def parse(cls, text: str) -> Cid:
        """Read ``Qm…`` (v0) or a multibase CIDv1 (``b`` base32, ``B``, ``z`` base58btc,
        ``f`` base16)."""
        text = text.strip()
        if not text or len(text) > MAX_CID_TEXT:
            raise CidError("not a CID")
        if text.startswith("Qm"):  # 'Q' is no multibase prefix: this is meant as a CIDv0
            return cls(0, DAG_PB, _parse_v0(text))
        prefix, body = text[0], text[1:]
        if prefix in "bB":
            raw = _b32decode(body)
        elif prefix == "z":
            raw = b58decode(body)
        elif prefix in "fF":
            try:
                raw = bytes.fromhex(body)
            except ValueError:
                raise CidError("not base16") from None
        else:
            raise CidError(f"unsupported multibase prefix {prefix!r}")
        return cls.from_bytes(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Cid:
        """Binary CID as found in dag-pb links (a bare multihash for v0)."""
        if len(raw) == 34 and raw[:2] == b"\x12\x20":
            return cls(0, DAG_PB, bytes(raw))
        version, pos = decode_varint(raw)
        if version != 1:
            raise CidError(f"unsupported CID version {version}")
        codec, pos = decode_varint(raw, pos)
        if codec not in (RAW, DAG_PB):
            raise CidError(f"unsupported codec 0x{codec:x} (only raw and dag-pb)")
        mh = bytes(raw[pos:])
        _check_multihash(mh)
        return cls(1, codec, mh)

    def to_bytes(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return encode_varint(1) + encode_varint(self.codec) + self.multihash

    def encode(self) -> str:
        """Canonical text: base58btc for v0, base32 lower case for v1 (as kubo prints)."""
        if self.version == 0:
            return b58encode(self.multihash)
        return "b" + _b32encode(self.to_bytes())

    def to_v1(self) -> Cid:
        return Cid(1, self.codec, self.multihash)

    def to_v0(self) -> Cid:
        if self.codec != DAG_PB:
            raise CidError("only dag-pb content has a CIDv0")
        return Cid(0, DAG_PB, self.multihash)

    @property
    def digest(self) -> bytes:
        return self.multihash[2:]

    @property
    def block_key(self) -> str:
        """The blockstore key: base32 of the multihash (one block, whatever the CID version)."""
        return _b32encode(self.multihash)

    def __str__(self) -> str:
        return self.encode()

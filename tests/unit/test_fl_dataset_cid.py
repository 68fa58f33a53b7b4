"""A session's ``training_data.dataset_cid`` as the content store reads it: a malformed
``Qm…`` string is refused as the CIDv0 it is meant to be (a base58btc sha2-256 multihash),
not as an unknown multibase prefix 'Q'."""

from __future__ import annotations

import pytest

from parity.core.storage.multiformats import Cid, CidError

CID_V0 = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("QmYourDatasetCID", "it has 16 characters, not 46"),  # the README's placeholder
        ("Qm" + "0" * 44, "not base58btc: '0'"),
        ("Qm" + "1" * 44, "multihash"),
        (CID_V0 + "x", "it has 47 characters, not 46"),
    ],
)
def test_a_malformed_cidv0_says_it_is_not_a_valid_cidv0(text: str, why: str) -> None:
    with pytest.raises(CidError) as caught:
        Cid.parse(text)
    message = str(caught.value)
    assert message.startswith("not a valid CIDv0 (a base58btc sha2-256 multihash")
    assert why in message and "multibase prefix" not in message


def test_a_real_cidv0_still_parses() -> None:
    cid = Cid.parse(CID_V0)
    assert cid.version == 0 and cid.encode() == CID_V0

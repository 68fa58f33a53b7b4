"""A refused pin says which limit it would pass: the pin count, the bytes it adds, or (for a
body of undeclared length, checked before it is read) the bytes already pinned."""

from __future__ import annotations

import pytest

from parity.storage.errors import StorageQuotaExceeded
from parity.storage.service import StorageConfig, _check_quota

CFG = StorageConfig(
    max_upload_bytes=1000,
    quota_bytes=300,
    max_pins=2,
    gateway_url="",
    download_base="http://x/api/v1/storage/download/",
    gc_grace_seconds=0,
)


@pytest.mark.parametrize(
    ("used", "count", "adding", "says"),
    [
        (
            100,
            0,
            250,
            "pinning 250 more bytes would exceed the storage quota (STORAGE_QUOTA_BYTES)",
        ),
        (400, 0, 0, "the storage quota (STORAGE_QUOTA_BYTES) is used up"),
        (0, 2, 1, "one more pin would exceed the pin limit (STORAGE_MAX_PINS)"),
    ],
)
def test_the_refusal_names_the_limit_it_would_pass(used: int, count: int, adding: int, says: str):
    with pytest.raises(StorageQuotaExceeded) as refused:
        _check_quota(CFG, "0xabc", used, count, adding)
    assert refused.value.message.startswith(f"0xabc: {says} (")
    assert "pinning 0 more bytes" not in refused.value.message


def test_a_pin_that_fits_passes():
    _check_quota(CFG, "0xabc", 100, 1, 200)

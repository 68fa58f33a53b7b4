"""`storage put` refuses a file over the server's upload limit before sending any of it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from parity.cli import client as cli_client
from parity.cli.server_url import ServerChoice
from parity.cli.storage import human_bytes, storage_app

LIMIT = 1024


class FakeStorage:
    def __init__(self) -> None:
        self.uploads: list[int] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/storage/usage":
            return httpx.Response(
                200,
                json={
                    "address": "0xabc",
                    "pinned_bytes": 0,
                    "pin_count": 0,
                    "quota_bytes": 10 * LIMIT,
                    "max_pins": 10,
                    "max_upload_bytes": LIMIT,
                },
            )
        if request.method == "PUT" and request.url.path == "/api/v1/storage/upload":
            body = request.read()
            self.uploads.append(len(body))
            doc = {"cid": "bafyfake", "cid_v0": None, "size": len(body), "pinned": True}
            return httpx.Response(201, json=doc)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeStorage:
    monkeypatch.setenv("PARITY_HOME", str(tmp_path / "home"))
    server = FakeStorage()

    def client(choice: ServerChoice, token: str | None, *_: object, **__: object) -> httpx.Client:
        return httpx.Client(base_url=choice.url, transport=httpx.MockTransport(server.handler))

    monkeypatch.setattr(cli_client, "open_client", client)
    return server


def _put(path: Path) -> tuple[int, str]:
    args = ["put", str(path), "--server", "http://parity.test", "--token", "t", "-q"]
    result = CliRunner().invoke(storage_app, args)
    return result.exit_code, result.output


def test_a_file_over_the_limit_is_refused_before_any_byte_is_sent(
    fake: FakeStorage, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (LIMIT + 512))

    code, output = _put(big)

    assert code == 1
    assert "1.5 KiB (1536 bytes)" in output
    assert "upload limit of 1 KiB (1024 bytes, STORAGE_MAX_UPLOAD_BYTES)" in output
    assert "nothing was sent" in output
    assert fake.uploads == []


def test_a_file_at_the_limit_is_uploaded(fake: FakeStorage, tmp_path: Path) -> None:
    fits = tmp_path / "fits.bin"
    fits.write_bytes(b"x" * LIMIT)

    code, output = _put(fits)

    assert code == 0, output
    assert fake.uploads == [LIMIT]
    assert "bafyfake" in output


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (1 << 30, "1 GiB"),
        (5 * (1 << 40), "5 TiB"),
    ],
)
def test_sizes_are_shown_in_binary_units(n: int, shown: str) -> None:
    assert human_bytes(n) == shown

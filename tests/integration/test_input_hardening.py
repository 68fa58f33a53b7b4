"""Input that the database cannot hold is refused where the request is validated: 422 naming
the field, the same on SQLite and PostgreSQL, before anything is written (never a 500, nor a
database error naming nothing). Tampered pagination cursors, timestamps with no UTC value,
NUL and control characters in names, integers past an INTEGER column."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest

from parity.container import Container
from parity.core.fl.errors import PartitionError
from parity.core.fl.partitioning import parse_options
from parity.core.storage.importer import FileImporter
from parity.core.storage.multiformats import Cid
from parity.db.pagination import KEY_INT_MAX, decode_cursor, decode_keyed
from parity.errors import InvalidInput
from parity.fl.service import decode_participant_cursor, decode_round_cursor
from tests.conftest import ALICE, bearer, sign_in
from tests.integration.queue_helpers import device, register_runner
from tests.integration.test_fl_api import FL, World, created, world

__all__ = ["world"]  # a fixture, used by name

V1 = "/api/v1"
JSON = {"content-type": "application/json"}
ID = "4ebf1750-b8e1-450b-aa25-c41ae4c3c3e7"


def opaque(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def field_of(r: httpx.Response) -> str:
    """The field a 422 names (``details.field``, else the first of ``details.errors``)."""
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    return str(details.get("field") or details["errors"][0]["field"])


# -- tampered cursors ---------------------------------------------------------------------------

TAMPERED = {
    "no offset": opaque(f"2026-12-06T10:59:02|{ID}"),
    "past 9999 in UTC": opaque(f"9999-12-31T23:59:59-14:00|{ID}"),
    "before year 1 in UTC": opaque(f"0001-01-01T00:00:00+14:00|{ID}"),
    "a date only": opaque(f"2026-12-06|{ID}"),
}
CURSOR_LISTS = [
    "auth/keys",
    "runners",
    "webhooks",
    "storage/pins",
    "federated-learning/sessions",
    "ledger/entries",
    "ledger/reservations",
    "ledger/payouts",
    "ledger/settlements",
]


@pytest.mark.parametrize("kind", sorted(TAMPERED))
async def test_a_tampered_cursor_is_refused_naming_cursor_on_every_list(
    client: httpx.AsyncClient, kind: str
):
    token = await sign_in(client, ALICE)
    for path in CURSOR_LISTS:
        r = await client.get(
            f"{V1}/{path}", params={"cursor": TAMPERED[kind]}, headers=bearer(token)
        )
        assert r.status_code == 422, (path, r.text)
        error = r.json()["error"]
        assert error["details"] == {"field": "cursor"}, path
        assert error["message"] == "cursor: not a cursor returned by this list", path


def test_the_codec_gives_the_cursor_back_in_utc_and_refuses_tampered_ones():
    ts, id_ = decode_cursor(opaque(f"2026-12-06T12:00:00+02:00|{ID}")) or (None, None)
    assert ts is not None and ts.utcoffset() is not None and ts.hour == 10
    assert id_ == uuid.UUID(ID)
    for text in TAMPERED.values():
        with pytest.raises(InvalidInput, match="cursor"):
            decode_cursor(text)


@pytest.mark.parametrize(
    "text",
    [
        "round|2147483648",
        "round|9223372036854775808",
        "round|99999999999999999999999999",
        "round|-1",
        "round|" + "9" * 5000,
    ],
)
def test_a_round_cursor_past_an_integer_column_is_refused(text: str):
    with pytest.raises(InvalidInput, match="cursor"):
        decode_round_cursor(opaque(text))


@pytest.mark.parametrize(
    "text",
    [
        f"participant|99999999999999999999999|2026-01-01T00:00:00+00:00|{ID}",
        f"participant|2147483648|2026-01-01T00:00:00+00:00|{ID}",
        f"participant|0|2026-01-01T00:00:00|{ID}",
        f"participant|0|9999-12-31T23:59:59-14:00|{ID}",
    ],
)
def test_a_tampered_participant_cursor_is_refused(text: str):
    with pytest.raises(InvalidInput, match="cursor"):
        decode_participant_cursor(opaque(text))


def test_keyed_cursors_within_range_still_decode():
    assert decode_round_cursor(opaque(f"round|{KEY_INT_MAX}")) == KEY_INT_MAX
    key = decode_keyed(opaque("k|3|2026-01-01T00:00:00+00:00"), "k", lambda p: (int(p[0]), p[1]))
    assert key == (3, "2026-01-01T00:00:00+00:00")


async def test_tampered_fl_cursors_are_422_on_both_databases(world: World):
    session = await created(world.client, world.alice, world.body())
    base, h = f"{FL}/sessions/{session['id']}", bearer(world.alice)
    for path, text in [
        ("rounds", "round|9223372036854775808"),  # past SQLite's INTEGER too
        ("rounds", "round|2147483648"),  # past PostgreSQL's integer
        ("participants", f"participant|99999999999999999999999|2026-01-01T00:00:00+00:00|{ID}"),
        ("participants", f"participant|0|2026-01-01T00:00:00|{ID}"),
    ]:
        r = await world.client.get(f"{base}/{path}", params={"cursor": opaque(text)}, headers=h)
        assert field_of(r) == "cursor", (path, text)


# -- timestamps with no UTC value ----------------------------------------------------------------

OUT_OF_RANGE = [
    "9999-12-31T20:00:00-05:00",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00+14:00",
]


def task(**extra: Any) -> dict[str, Any]:
    return {"title": "t", "type": "command", "config": {"command": ["true"]}, **extra}


async def test_not_before_past_year_9999_in_utc_is_refused_naming_it(client: httpx.AsyncClient):
    h = bearer(await sign_in(client, ALICE))
    r = await client.post(f"{V1}/tasks", json=task(), headers=h)
    assert r.status_code == 201, r.text
    task_id = r.json()["id"]
    for when in OUT_OF_RANGE:
        r = await client.post(f"{V1}/tasks", json=task(not_before=when), headers=h)
        assert field_of(r) == "not_before", when
        assert "out of range" in r.json()["error"]["message"]
        r = await client.put(f"{V1}/tasks/{task_id}", json={"not_before": when}, headers=h)
        assert field_of(r) == "not_before", when
    r = await client.get(f"{V1}/tasks", headers=h)
    assert len(r.json()) == 1  # nothing half-written
    # In range, with any offset: accepted, and kept in UTC.
    r = await client.post(f"{V1}/tasks", json=task(not_before="9999-12-31T23:59:59Z"), headers=h)
    assert r.status_code == 201, r.text
    r = await client.post(f"{V1}/tasks", json=task(not_before="2026-01-01T00:00:00"), headers=h)
    assert field_of(r) == "not_before"
    assert "must carry a timezone" in r.json()["error"]["message"]


async def test_billing_since_and_until_past_the_range_are_refused_naming_them(
    client: httpx.AsyncClient,
):
    h = bearer(await sign_in(client, ALICE))
    for name in ("since", "until"):
        for when in OUT_OF_RANGE:
            r = await client.get(f"{V1}/llm/billing/metrics", params={name: when}, headers=h)
            assert field_of(r) == name, (name, when)
        r = await client.get(
            f"{V1}/llm/billing/metrics", params={name: "2026-01-01T00:00:00"}, headers=h
        )
        assert field_of(r) == name
    r = await client.get(
        f"{V1}/llm/billing/metrics", params={"since": "2026-01-01T00:00:00+02:00"}, headers=h
    )
    assert r.status_code == 200, r.text


# -- names: NUL and control characters -------------------------------------------------------------


def cid_of(data: bytes) -> Cid:
    importer = FileImporter(keep_blocks=False)
    importer.write(data)
    return importer.finish()[1].cid


FORM = {"content-type": "multipart/form-data; boundary=XX"}


def form(filename: str, data: bytes) -> bytes:
    """A multipart body of one file part whose filename is written as it is."""
    body = (
        b"--XX\r\n"
        + f'Content-Disposition: form-data; name="file"; filename="{filename}"'.encode()
        + b"\r\n\r\n"
        + data
        + b"\r\n--XX--\r\n"
    )
    return body


async def pins(client: httpx.AsyncClient, h: dict[str, str]) -> list[dict[str, Any]]:
    r = await client.get(f"{V1}/storage/pins", headers=h)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


@pytest.mark.parametrize("name", ["a\x00b", "line\nbreak", "tab\there", "esc\x1b", "c1\x85"])
async def test_a_pin_name_with_a_control_character_is_refused_before_storing(
    client: httpx.AsyncClient, container: Container, name: str
):
    h = bearer(await sign_in(client, ALICE))
    data = f"raw upload named {name!r}".encode()
    r = await client.put(f"{V1}/storage/upload", params={"name": name}, content=data, headers=h)
    assert field_of(r) == "name"
    assert "must not contain" in r.json()["error"]["message"]
    assert await container.content_store.stat(cid_of(data)) is None  # nothing written
    # The multipart form: the file part's filename names the pin (written raw, as curl does;
    # httpx would percent-encode it).
    data = f"form upload named {name!r}".encode()
    r = await client.post(f"{V1}/storage/upload", content=form(name, data), headers={**h, **FORM})
    assert field_of(r) == "file"
    assert "filename must not contain control characters" in r.json()["error"]["message"]
    assert await container.content_store.stat(cid_of(data)) is None
    assert await pins(client, h) == []
    # A pin's name given in the body.
    r = await client.put(f"{V1}/storage/upload", content=b"pinned later", headers=h)
    cid = r.json()["cid"]
    r = await client.post(f"{V1}/storage/pin/{cid}", json={"name": name}, headers={**h, **JSON})
    # (JSON's \u0000 is refused by the parser, as invalid_json at its position.)
    assert field_of(r) == ("body" if "\x00" in name else "name")
    assert [p["name"] for p in await pins(client, h)] == [None]


async def test_a_bad_filename_is_no_matter_when_the_pin_is_named(client: httpx.AsyncClient):
    h = bearer(await sign_in(client, ALICE))
    r = await client.post(
        f"{V1}/storage/upload",
        params={"name": "report"},
        content=form("x\x00y.txt", b"named by the query"),
        headers={**h, **FORM},
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        f"{V1}/storage/upload", files={"file": ("plain name.txt", b"named by its file")}, headers=h
    )
    assert r.status_code == 201, r.text
    assert sorted(p["name"] for p in await pins(client, h)) == ["plain name.txt", "report"]


async def test_an_api_key_name_with_a_line_break_is_refused(client: httpx.AsyncClient):
    h = bearer(await sign_in(client, ALICE))
    r = await client.post(f"{V1}/auth/keys", json={"name": "laptop\nmalicious"}, headers=h)
    assert field_of(r) == "name"


async def test_a_nul_in_a_query_parameter_is_refused_naming_it(client: httpx.AsyncClient):
    h = bearer(await sign_in(client, ALICE))
    r = await client.get(f"{V1}/tasks?status=pend%00ing", headers=h)
    assert field_of(r) == "status"
    assert r.json()["error"]["message"] == "status: must not contain NUL (%00)"
    r = await client.get(f"{V1}/tasks?status=pending&unknown=%00", headers=h)
    assert r.status_code == 200, r.text  # a parameter the route does not read is ignored


# -- integers past an INTEGER column -------------------------------------------------------------


async def test_log_attempt_and_position_are_bounded_to_their_columns(client: httpx.AsyncClient):
    h = bearer(await sign_in(client, ALICE))
    r = await client.post(f"{V1}/tasks", json=task(), headers=h)
    logs = f"{V1}/tasks/{r.json()['id']}/logs"
    for value in (2**31, 9223372036854775807):
        r = await client.get(logs, params={"attempt": value}, headers=h)
        assert field_of(r) == "attempt", value
    r = await client.get(logs, params={"after": (2**31) * 10**8}, headers=h)
    assert field_of(r) == "after"
    for params in ({"attempt": 2**31 - 1}, {"after": (2**31 - 1) * 10**8 + 99_999_999}):
        r = await client.get(logs, params=params, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["items"] == []


async def test_fl_round_numbers_are_bounded_to_their_column(client: httpx.AsyncClient):
    """A round number past 32 bits is a 422 naming it on both databases (PostgreSQL refused it
    naming nothing; SQLite answered 404)."""
    h = bearer(await sign_in(client, ALICE))
    fl = f"{V1}/federated-learning/sessions/{ID}/rounds"
    for value in (2**31, 9223372036854775807):
        r = await client.get(f"{fl}/{value}", headers=h)
        assert field_of(r) == "number", (value, r.text)
    r = await client.get(f"{fl}/{2**31 - 1}", headers=h)
    assert r.status_code == 404, r.text  # in range: no such session
    runner_h = bearer((await register_runner(client, h["Authorization"][7:], device()))[0])
    for method in ("GET", "POST"):
        r = await client.request(method, f"{fl}/{2**31}/secagg/setup", headers=runner_h, json={})
        assert field_of(r) == "number", (method, r.text)


def test_min_samples_is_a_row_count():
    for value in (1e300, 2**63, 2**31):
        with pytest.raises(PartitionError) as caught:
            parse_options("iid", {"min_samples": value}, 3)
        assert caught.value.field.endswith("min_samples"), value
    assert parse_options("iid", {"min_samples": 2**31 - 1}, 3).min_samples == 2**31 - 1

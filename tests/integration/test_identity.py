"""Every identity path of ARCHITECTURE §4 "Identity"."""

from __future__ import annotations

import asyncio

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct

from parity.clock import FrozenClock
from tests.conftest import ADMIN, ALICE, BOB, bearer, sign_in


async def _nonce(client: httpx.AsyncClient, address: str) -> dict[str, str]:
    r = await client.post("/api/v1/auth/nonce", json={"address": address})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _sign(account: object, message: str) -> str:
    return account.sign_message(encode_defunct(text=message)).signature.hex()  # type: ignore[attr-defined]


async def test_nonce_message_is_eip4361_for_the_checksummed_address(client: httpx.AsyncClient):
    body = await _nonce(client, ALICE.address.lower())
    lines = body["message"].split("\n")
    assert lines[0] == "parity.test wants you to sign in with your Ethereum account:"
    assert lines[1] == ALICE.address  # EIP-55 form even when asked in lowercase
    assert f"Nonce: {body['nonce']}" in lines
    assert "Version: 1" in lines and "Chain ID: 314159" in lines
    assert any(line.startswith("Expiration Time: ") for line in lines)


async def test_signed_nonce_gives_a_working_session_token(client: httpx.AsyncClient):
    token = await sign_in(client, ALICE)
    assert token.startswith("ps_sess_") and len(token) == len("ps_sess_") + 64
    me = await client.get("/api/v1/auth/me", headers=bearer(token))
    assert me.status_code == 200
    assert me.json() == {
        "address": ALICE.address.lower(),
        "kind": "session",
        "is_admin": False,
        "runner_id": None,
    }


async def test_token_request_without_nonce_finds_the_open_nonce(client: httpx.AsyncClient):
    body = await _nonce(client, ALICE.address)
    r = await client.post(
        "/api/v1/auth/token",
        json={"address": ALICE.address, "signature": _sign(ALICE, body["message"])},
    )
    assert r.status_code == 200
    assert r.json()["address"] == ALICE.address.lower()


async def test_signature_with_v_0_or_1_and_without_0x_is_accepted(client: httpx.AsyncClient):
    body = await _nonce(client, ALICE.address)
    raw = bytearray(ALICE.sign_message(encode_defunct(text=body["message"])).signature)
    raw[64] -= 27
    r = await client.post(
        "/api/v1/auth/token",
        json={"address": ALICE.address, "signature": raw.hex(), "nonce": body["nonce"]},
    )
    assert r.status_code == 200, r.text


async def test_replayed_nonce_is_refused(client: httpx.AsyncClient):
    body = await _nonce(client, ALICE.address)
    req = {
        "address": ALICE.address,
        "signature": _sign(ALICE, body["message"]),
        "nonce": body["nonce"],
    }
    assert (await client.post("/api/v1/auth/token", json=req)).status_code == 200
    again = await client.post("/api/v1/auth/token", json=req)
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "nonce_invalid"


async def test_concurrent_use_of_one_nonce_yields_one_token(client: httpx.AsyncClient):
    body = await _nonce(client, ALICE.address)
    req = {
        "address": ALICE.address,
        "signature": _sign(ALICE, body["message"]),
        "nonce": body["nonce"],
    }
    results = await asyncio.gather(*[client.post("/api/v1/auth/token", json=req) for _ in range(5)])
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) == 1
    assert all(c in (401, 409) for c in codes if c != 200)


async def test_signature_by_another_key_is_refused(client: httpx.AsyncClient):
    body = await _nonce(client, ALICE.address)
    r = await client.post(
        "/api/v1/auth/token",
        json={
            "address": ALICE.address,
            "signature": _sign(BOB, body["message"]),
            "nonce": body["nonce"],
        },
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_signature"
    # The nonce was not consumed by the failed attempt: the owner can still use it.
    ok = await client.post(
        "/api/v1/auth/token",
        json={
            "address": ALICE.address,
            "signature": _sign(ALICE, body["message"]),
            "nonce": body["nonce"],
        },
    )
    assert ok.status_code == 200


async def test_signature_over_a_different_message_is_refused(client: httpx.AsyncClient):
    body = await _nonce(client, ALICE.address)
    r = await client.post(
        "/api/v1/auth/token",
        json={
            "address": ALICE.address,
            "signature": _sign(ALICE, body["message"] + " "),
            "nonce": body["nonce"],
        },
    )
    assert r.status_code == 401


async def test_expired_nonce_is_refused(client: httpx.AsyncClient, clock: FrozenClock):
    body = await _nonce(client, ALICE.address)
    clock.advance(301)
    r = await client.post(
        "/api/v1/auth/token",
        json={
            "address": ALICE.address,
            "signature": _sign(ALICE, body["message"]),
            "nonce": body["nonce"],
        },
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "nonce_invalid"


async def test_malformed_addresses_are_422_naming_the_field(client: httpx.AsyncClient):
    bad_checksum = "0x" + ALICE.address[2:].swapcase()
    for addr in ["0x1234", "hello", ALICE.address[2:], bad_checksum, "0x" + "zz" * 20]:
        r = await client.post("/api/v1/auth/nonce", json={"address": addr})
        assert r.status_code == 422, addr
        err = r.json()["error"]
        assert err["code"] == "invalid_address"
        assert err["details"]["field"] == "address"


async def test_malformed_signature_is_401(client: httpx.AsyncClient):
    await _nonce(client, ALICE.address)
    r = await client.post(
        "/api/v1/auth/token", json={"address": ALICE.address, "signature": "0xdeadbeef"}
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_signature"


async def test_missing_or_garbage_tokens_are_401(client: httpx.AsyncClient):
    assert (await client.get("/api/v1/auth/me")).status_code == 401
    for value in ["Bearer nope", "Basic abc", "Bearer ps_sess_" + "0" * 64, "Bearer "]:
        r = await client.get("/api/v1/auth/me", headers={"Authorization": value})
        assert r.status_code == 401, value
        assert r.headers["www-authenticate"] == "Bearer"


async def test_session_token_expires(client: httpx.AsyncClient, clock: FrozenClock):
    token = await sign_in(client, ALICE)
    clock.advance(86400 + 1)
    r = await client.get("/api/v1/auth/me", headers=bearer(token))
    assert r.status_code == 401
    assert "expired" in r.json()["error"]["message"]


async def test_logout_revokes_the_token(client: httpx.AsyncClient):
    token = await sign_in(client, ALICE)
    assert (await client.post("/api/v1/auth/logout", headers=bearer(token))).status_code == 204
    r = await client.get("/api/v1/auth/me", headers=bearer(token))
    assert r.status_code == 401
    assert "revoked" in r.json()["error"]["message"]


async def test_api_key_lifecycle(client: httpx.AsyncClient):
    token = await sign_in(client, ALICE)
    created = await client.post("/api/v1/auth/keys", json={"name": "ci"}, headers=bearer(token))
    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith("ps_key_")
    # An API key authenticates like a session.
    me = await client.get("/api/v1/auth/me", headers=bearer(key))
    assert me.json()["kind"] == "api_key"
    # ...except that it makes no keys: a leaked one could mint others that outlive it.
    child = await client.post("/api/v1/auth/keys", json={"name": "child"}, headers=bearer(key))
    assert child.status_code == 403, child.text
    assert child.json()["error"]["code"] == "session_token_required"
    listed = await client.get("/api/v1/auth/keys", headers=bearer(token))
    assert [k["name"] for k in listed.json()["items"]] == ["ci"]
    assert "key" not in listed.json()["items"][0]
    key_id = created.json()["id"]
    revoked = await client.delete(f"/api/v1/auth/keys/{key_id}", headers=bearer(token))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert (await client.get("/api/v1/auth/me", headers=bearer(key))).status_code == 401


async def test_api_key_of_another_account_is_not_found(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    bob = await sign_in(client, BOB)
    created = await client.post("/api/v1/auth/keys", json={"name": "a"}, headers=bearer(alice))
    r = await client.delete(f"/api/v1/auth/keys/{created.json()['id']}", headers=bearer(bob))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "api_key_not_found"
    # Bob's list never shows Alice's key.
    listed = await client.get("/api/v1/auth/keys", headers=bearer(bob))
    assert listed.json()["items"] == []


async def test_api_keys_paginate_newest_first(client: httpx.AsyncClient, clock: FrozenClock):
    token = await sign_in(client, ALICE)
    for i in range(5):
        clock.advance(1)
        r = await client.post("/api/v1/auth/keys", json={"name": f"k{i}"}, headers=bearer(token))
        assert r.status_code == 201
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/v1/auth/keys", params=params, headers=bearer(token))).json()
        seen += [k["name"] for k in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["k4", "k3", "k2", "k1", "k0"]
    bad = await client.get("/api/v1/auth/keys", params={"cursor": "%%%"}, headers=bearer(token))
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "cursor"


async def test_admin_endpoint_refused_to_a_plain_client(client: httpx.AsyncClient):
    alice = await sign_in(client, ALICE)
    r = await client.post(
        f"/api/v1/admin/accounts/{BOB.address}/revoke-tokens", headers=bearer(alice)
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "admin_required"


async def test_admin_revokes_every_token_of_an_account(client: httpx.AsyncClient):
    admin = await sign_in(client, ADMIN)
    assert (await client.get("/api/v1/auth/me", headers=bearer(admin))).json()["is_admin"]
    bob1 = await sign_in(client, BOB)
    bob2 = await sign_in(client, BOB)
    r = await client.post(
        f"/api/v1/admin/accounts/{BOB.address}/revoke-tokens", headers=bearer(admin)
    )
    assert r.status_code == 200 and r.json()["revoked"] == 2
    for t in (bob1, bob2):
        assert (await client.get("/api/v1/auth/me", headers=bearer(t))).status_code == 401
    assert (await client.get("/api/v1/auth/me", headers=bearer(admin))).status_code == 200


async def test_legacy_identity_headers_are_ignored(client: httpx.AsyncClient):
    token = await sign_in(client, ALICE)
    r = await client.get(
        "/api/v1/auth/me",
        headers=bearer(token) | {"X-Device-ID": "spoof", "X-Client-ID": BOB.address},
    )
    assert r.json()["address"] == ALICE.address.lower()


async def test_nonces_asked_for_by_others_never_lock_a_wallet_out_of_sign_in(
    client: httpx.AsyncClient,
):
    # Anyone may ask for an address's nonces without a token; a per-address cap would let a
    # third party keep the wallet from signing in (it answered 429 after 20 such requests).
    mine = (await client.post("/api/v1/auth/nonce", json={"address": ALICE.address})).json()
    for _ in range(30):
        r = await client.post("/api/v1/auth/nonce", json={"address": ALICE.address})
        assert r.status_code == 200
    # The nonce asked for before the flood, and one asked for after it, both sign in.
    assert await sign_in(client, ALICE)
    sig = _sign(ALICE, mine["message"])
    r = await client.post(
        "/api/v1/auth/token",
        json={"address": ALICE.address, "signature": sig, "nonce": mine["nonce"]},
    )
    assert r.status_code == 200, r.text


async def test_concurrent_first_sign_ins_of_one_address_all_succeed(client: httpx.AsyncClient):
    fresh = Account.create()
    tokens = await asyncio.gather(*(sign_in(client, fresh) for _ in range(4)))
    assert len(set(tokens)) == 4

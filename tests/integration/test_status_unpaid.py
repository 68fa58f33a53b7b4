"""A server started on a ledger that holds priced work (open escrow, unpaid postings, a payment
under way) while its settlement worker is off says so: a start-up warning, an entry in
/api/status's `warnings`, and a /reward that does not claim a payment is under way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from parity.chain.fake import FakeChain, FakeChainClient
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.ledger.settlement import SettlementConfig, SettlementWorker
from tests.conftest import ALICE, BOB, bearer, make_settings, sign_in
from tests.integration.queue_helpers import (
    V1,
    claimed,
    create_task,
    device,
    register_runner,
    served,
)
from tests.integration.test_ledger import CHAIN, PRICING
from tests.settlement_support import Crash, CrashAt, settlements

OWNER = Account.from_key("0x" + "a1" * 32)
UNDER_WAY = "a settlement transaction is under way"
WAITING = "posted; waiting for the settlement worker"


@dataclass
class Server:
    http: httpx.AsyncClient
    container: Container


@asynccontextmanager
async def _server(
    database_url: str, home: Path, clock: FrozenClock, chain: FakeChain | None, **settings: str
) -> AsyncIterator[Server]:
    s = make_settings(database_url, home, **settings)
    c = Container(settings=s, db=Database(s.resolved_database_url), clock=clock)
    if chain is not None:
        c.chain = FakeChainClient(chain)
    async with served(c) as http:
        yield Server(http, c)


async def _complete_one(server: Server, runner_token: str, client_token: str) -> str:
    task = await create_task(server.http, client_token, timeout_seconds=60)
    got = await claimed(server.http, runner_token, start="true")
    r = await server.http.post(
        f"{V1}/runners/tasks/{task['id']}/complete",
        json={"claim_token": got["claim_token"], "output": "ok", "exit_code": 0},
        headers=bearer(runner_token),
    )
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    return str(task["id"])


async def _reward(server: Server, token: str, task_id: str) -> dict[str, Any]:
    r = await server.http.get(f"{V1}/tasks/{task_id}/reward", headers=bearer(token))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def _warnings(server: Server) -> list[str]:
    r = await server.http.get("/api/status")
    assert r.status_code == 200, r.text
    out: list[str] = r.json()["warnings"]
    return out


@dataclass
class Ledger:
    paying: str  # completed; its payment was signed, then the worker stopped
    unpaid: str  # completed after that; in no payment yet
    chain: FakeChain


@pytest.fixture
async def ledger(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
) -> Ledger:
    """Priced work on the database: a payment signed but not confirmed, a posting in no
    payment, and an open reservation (a task not run yet)."""
    chain = FakeChain(owner=OWNER.address)
    async with _server(database_url, tmp_path / "priced", clock, chain, **PRICING) as priced:
        alice, bob = await sign_in(priced.http, ALICE), await sign_in(priced.http, BOB)
        client = FakeChainClient(chain)
        chain.mint(ALICE.address, 100_000)
        await client.approve(ALICE, 100_000)
        await client.add_funds(ALICE, ALICE.address.lower(), 100_000)
        runner_token, _ = await register_runner(priced.http, bob, device())
        paying = await _complete_one(priced, runner_token, alice)
        worker = SettlementWorker(
            priced.container.db,
            client,
            OWNER,
            clock,
            SettlementConfig(confirmations=1),
            hook=CrashAt("after_sign"),
        )
        with pytest.raises(Crash):
            await worker.run_once()
        assert {s.status for s in await settlements(priced.container.db)} & {"signed"}
        unpaid = await _complete_one(priced, runner_token, alice)
        await create_task(priced.http, alice, timeout_seconds=60)  # held in escrow

        # With a settlement worker, all of this is on its way: no warning, the usual words.
        priced.container.settlement = worker
        assert await _warnings(priced) == []
        assert (await _reward(priced, alice, paying))["message"] == UNDER_WAY
        assert (await _reward(priced, alice, unpaid))["message"] == WAITING
    return Ledger(paying, unpaid, chain)


async def test_a_server_without_the_chain_settings_on_a_priced_ledger_says_nothing_will_settle(
    ledger: Ledger,
    database_url: str,
    tmp_path: Path,
    clock: FrozenClock,
    capsys: pytest.CaptureFixture[str],
):
    capsys.readouterr()
    # The same database, started without the chain settings (no FILECOIN_RPC, no prices).
    async with _server(database_url, tmp_path / "plain", clock, None) as plain:
        logs = capsys.readouterr()
        assert plain.container.settlement is None
        assert "ledger_unpaid_settlement_off" in logs.out + logs.err

        [warning] = await _warnings(plain)
        assert "settlement worker is off" in warning and "FILECOIN_RPC is not set" in warning
        assert "nothing is settled on chain until the chain settings" in warning
        assert "1 open priced reservation" in warning
        assert "not confirmed on chain" in warning and "not yet in a settlement" in warning
        assert "pricing is off" in warning

        alice = await sign_in(plain.http, ALICE)
        paying = await _reward(plain, alice, ledger.paying)
        assert paying["status"] == "settling" and paying["paid"] is False
        assert paying["message"] != UNDER_WAY and "does not settle" in paying["message"]
        unpaid = await _reward(plain, alice, ledger.unpaid)
        assert unpaid["status"] == "unsettled" and unpaid["paid"] is False
        assert unpaid["message"] != WAITING and "does not settle" in unpaid["message"]
        assert "until a server with the chain settings runs" in unpaid["message"]


async def test_a_server_without_a_settlement_signer_names_what_is_missing(
    ledger: Ledger, database_url: str, tmp_path: Path, clock: FrozenClock
):
    async with _server(database_url, tmp_path / "signerless", clock, ledger.chain, **CHAIN) as s:
        [warning] = await _warnings(s)
        assert "no settlement signer: SETTLEMENT_PRIVATE_KEY or SETTLEMENT_KEYSTORE_PATH" in warning


async def test_an_unpriced_ledger_gives_no_settlement_warning(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
):
    r = await client.get("/api/status")
    assert r.json()["warnings"] == []
    logs = capsys.readouterr()
    assert "ledger_unpaid_settlement_off" not in logs.out + logs.err

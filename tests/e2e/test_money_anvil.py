"""The whole money path on a real anvil, with real processes: a client stakes with the CLI,
creates priced work, a parity-runner process completes it, the server's settlement worker pays
the runner and the protocol from the client's stake on chain, and `parity-server balance`
shows it. Skips with the reason printed when Node.js/npm or anvil are unavailable."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from parity.chain import keystore
from parity.chain.devchain import Anvil, DevDeployment, deploy_dev_contracts, dev_accounts
from parity.chain.web3_adapter import Web3ChainClient
from parity.core.billing.units import format_token_amount
from tests.chain_support import anvil_node, cli_env, require_anvil
from tests.e2e.procs import ServerProcess, run_with
from tests.e2e.runner_procs import PASSWORD as RUNNER_PASSWORD
from tests.e2e.runner_procs import RunnerProcess, client_token, make_keystore, wait_for

__all__ = ["anvil_node"]
pytestmark = pytest.mark.slow

TOKEN = 10**18
PASSWORD = "correct horse battery staple"
OWNER, CLIENT, RUNNER = dev_accounts(3)
BASE = TOKEN // 10  # 0.1 token per task
PER_CORE_SECOND = TOKEN // 1000


def _env_for(home: Path) -> dict[str, str]:
    return cli_env(home, PASSWORD)


async def _stakes(deployed: DevDeployment, *ids: str) -> list[int]:
    client = Web3ChainClient(
        deployed.rpc_url, chain_id=314159, stake_wallet_address=deployed.stake_wallet_address
    )
    try:
        return [await client.stake_of(i) for i in ids]
    finally:
        await client.aclose()


def test_a_staked_client_pays_a_runner_through_settlement(
    anvil_node: Anvil | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    node = require_anvil(anvil_node)
    deployed = asyncio.run(deploy_dev_contracts(node.rpc_url, OWNER, [CLIENT.address], 100 * TOKEN))
    chain_env = deployed.env()
    server = ServerProcess(
        tmp_path / "server-home",
        **chain_env,
        LOG_LEVEL="info",
        PRICE_TASK_BASE=str(BASE),
        PRICE_CPU_CORE_SECOND=str(PER_CORE_SECOND),
        PROTOCOL_FEE_BPS="500",
        PROTOCOL_FEE_ADDRESS=OWNER.address,
        SETTLEMENT_PRIVATE_KEY="0x" + bytes(OWNER.key).hex(),
        SETTLEMENT_INTERVAL_SECONDS="0.5",
        FILECOIN_CONFIRMATIONS="1",
        FILECOIN_RECEIPT_POLL_SECONDS="0.2",
        STAKE_CACHE_SECONDS="10",  # the stake read at creation is still cached once paid
        SCHEDULER_INTERVAL_SECONDS="1",
        RUNNER_HEARTBEAT_INTERVAL_SECONDS="1",
    ).start()
    runner: RunnerProcess | None = None
    try:
        server.wait_healthy()
        # The client stakes 5 tokens with the CLI (approve + addFunds, its own key).
        monkeypatch.setattr(keystore, "SCRYPT_N", 2**10)
        cli_home = tmp_path / "client-home"
        ks = cli_home / "keystore.json"
        keystore.create_keystore(ks, PASSWORD, "0x" + bytes(CLIENT.key).hex())
        config = tmp_path / "chain.env"
        config.write_text("".join(f"{k}={v}\n" for k, v in chain_env.items()))
        common = ["--keystore", str(ks), "--config", str(config)]
        staked = run_with(_env_for(cli_home), ["stake", "--amount", "5", *common], tmp_path)
        assert staked.returncode == 0, staked.stderr

        api = httpx.Client(base_url=server.url, timeout=15)
        api.headers["Authorization"] = "Bearer " + client_token(server.url, CLIENT)
        r = api.post(
            "/api/v1/tasks",
            json={"title": "paid", "type": "command",
                  "config": {"command": ["sh", "-c", "sleep 1; echo done"]},
                  "timeout_seconds": 60},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        task_id = r.json()["id"]
        reserved = BASE + 60 * PER_CORE_SECOND
        balance = api.get("/api/v1/ledger/balance").json()
        assert balance["reserved"] == str(reserved)

        runner_ks = tmp_path / "runner-keystore.json"
        make_keystore(runner_ks, "0x" + bytes(RUNNER.key).hex())
        runner = RunnerProcess(server.url, runner_ks, "paid-runner", tmp_path).start()
        runner.wait_registered()

        def reward() -> dict[str, Any]:
            out: dict[str, Any] = api.get(f"/api/v1/tasks/{task_id}/reward").json()
            return out

        assert wait_for(lambda: reward()["status"] == "paid", timeout=90), (
            reward(),
            server.log()[-4000:],
        )
        paid = reward()
        price, earned, fee = int(paid["price"]), int(paid["reward"]), int(paid["fee"])
        assert price == earned + fee and fee == price * 500 // 10_000
        assert BASE + PER_CORE_SECOND <= price <= reserved  # at least a second of run time
        assert [s["status"] for s in paid["settlements"]] == ["confirmed", "confirmed"]

        client_stake, runner_stake, fee_stake = asyncio.run(
            _stakes(deployed, CLIENT.address.lower(), RUNNER.address.lower(), OWNER.address.lower())
        )
        assert (client_stake, runner_stake, fee_stake) == (5 * TOKEN - price, earned, fee)

        # The stake cached when the task was created predates the payment: the payment is
        # never available again (for about a second after its confirmation it may be counted
        # twice), and work that fits only the stake from before it is refused.
        balance = api.get("/api/v1/ledger/balance").json()
        assert int(balance["available"]) <= client_stake
        too_big = (client_stake - BASE) // PER_CORE_SECOND + 1  # fits the stake before payment
        r = api.post(
            "/api/v1/tasks",
            json={"title": "too big", "type": "command", "config": {"command": ["true"]},
                  "timeout_seconds": too_big},
        )  # fmt: skip
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "insufficient_funds"

        def settled_balance() -> bool:
            b = api.get("/api/v1/ledger/balance").json()
            return (b["stake"], b["unsettled_debits"], b["reserved"], b["available"]) == (
                str(client_stake),
                "0",
                "0",
                str(client_stake),
            )

        assert wait_for(settled_balance, timeout=10), api.get("/api/v1/ledger/balance").json()

        # `parity-server balance --server` shows the ledger beside the chain.
        signed = run_with(
            _env_for(cli_home), ["auth", "--keystore", str(ks), "--server", server.url], tmp_path
        )
        assert signed.returncode == 0, signed.stderr
        shown = run_with(_env_for(cli_home), ["balance", *common, "--server", server.url], tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert f"({5 * TOKEN - price} base units)" in shown.stdout
        assert "available after reservations: " in shown.stdout
        assert "n/a" not in shown.stdout

        # The amounts carry the token contract's own symbol.
        assert "PRTY" in shown.stdout

        # `parity-runner status` shows what the paid runner's wallet earned (not "not priced").
        runner_status = subprocess.run(
            [sys.executable, "-c", "from parity.agent.cli import main; main()", "status",
             "--server", server.url, "--keystore", str(runner_ks)],
            env={**_env_for(tmp_path / "runner-home"), "PARITY_KEYSTORE_PASSWORD": RUNNER_PASSWORD},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert runner_status.returncode == 0, runner_status.stderr
        assert "not priced" not in runner_status.stdout
        assert f"paid {format_token_amount(earned, 18)} PRTY" in runner_status.stdout

        status = httpx.get(f"{server.url}/api/status", timeout=5).json()
        assert status["billing"]["settlement"] == {
            "worker": "on",
            "by_status": {"confirmed": 2},
        }

        runner_api = httpx.Client(base_url=server.url, timeout=15)
        runner_api.headers["Authorization"] = "Bearer " + client_token(server.url, RUNNER)
        payouts = runner_api.get("/api/v1/ledger/payouts").json()["items"]
        assert [(p["amount"], p["status"]) for p in payouts] == [(str(earned), "confirmed")]
        assert payouts[0]["tx_hash"].startswith("0x")
        events = runner_api.get("/api/v1/events", params={"wait": 0}).json()["items"]
        settled = [e for e in events if e["type"] == "payment.settled"]
        assert [e["data"]["amount"] for e in settled] == [str(earned)]
    finally:
        if runner is not None:
            runner.stop()
        server.stop()

"""End to end on a real anvil: dev-chain's deployment, then `parity-server stake`, `balance`
and `withdraw` as separate processes signing with an encrypted keystore; the `dev-chain`
command itself; and a server reporting the chain (or refusing a wrong chain id). Skips with
the reason printed when Node.js/npm or anvil are unavailable."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from parity.chain import keystore
from parity.chain.devchain import (
    Anvil,
    DevDeployment,
    deploy_dev_contracts,
    dev_accounts,
    find_anvil,
    free_port,
)
from parity.chain.stake_ids import stake_id
from parity.chain.web3_adapter import Web3ChainClient
from tests.chain_support import REPO, anvil_node, cli_env, require_anvil
from tests.e2e.procs import ServerProcess, run_with

__all__ = ["anvil_node"]
pytestmark = pytest.mark.slow

TOKEN = 10**18
PASSWORD = "correct horse battery staple"
OWNER, STAKER = dev_accounts(2)


def _write_config(path: Path, deployed: DevDeployment, **extra: str) -> None:
    lines = [f"{k}={v}" for k, v in {**deployed.env(), **extra}.items()]
    path.write_text("\n".join(lines) + "\n")


def _env_for(home: Path) -> dict[str, str]:
    return cli_env(home, PASSWORD)


async def _stake_on_chain(deployed: DevDeployment, sid: str) -> int:
    client = Web3ChainClient(
        deployed.rpc_url, chain_id=314159, stake_wallet_address=deployed.stake_wallet_address
    )
    try:
        return await client.stake_of(sid)
    finally:
        await client.aclose()


@pytest.fixture
def keystore_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Cheap scrypt: the CLI reads the cost back from the file, so it decrypts fast too.
    monkeypatch.setattr(keystore, "SCRYPT_N", 2**10)
    path = tmp_path / "home" / "keystore.json"
    keystore.create_keystore(path, PASSWORD, "0x" + bytes(STAKER.key).hex())
    return path


def test_stake_balance_and_withdraw_from_the_command_line(
    anvil_node: Anvil | str, tmp_path: Path, keystore_path: Path
):
    node = require_anvil(anvil_node)
    deployed = asyncio.run(deploy_dev_contracts(node.rpc_url, OWNER, [STAKER.address], 100 * TOKEN))
    config = tmp_path / "chain.env"
    _write_config(config, deployed, FILECOIN_TOKEN_SYMBOL="PRTY")
    env = _env_for(keystore_path.parent)
    common = ["--keystore", str(keystore_path), "--config", str(config)]

    staked = run_with(env, ["stake", "--amount", "5", *common], tmp_path)
    assert staked.returncode == 0, staked.stderr
    assert "approve: tx 0x" in staked.stdout and "addFunds: tx 0x" in staked.stdout
    assert "stake: 5.0 PRTY (5000000000000000000 base units)" in staked.stdout
    sid = stake_id(STAKER.address)
    assert f"stake id: {sid}" in staked.stdout
    assert asyncio.run(_stake_on_chain(deployed, sid)) == 5 * TOKEN

    shown = run_with(env, ["balance", *common], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "wallet: 95.0 PRTY" in shown.stdout
    assert "stake: 5.0 PRTY" in shown.stdout
    assert "available after reservations: n/a (ledger not available)" in shown.stdout
    assert "pending earnings: n/a (ledger not available)" in shown.stdout

    taken = run_with(env, ["withdraw", "--amount", "1.5", *common], tmp_path)
    assert taken.returncode == 0, taken.stderr
    assert "stake: 3.5 PRTY" in taken.stdout and "wallet: 96.5 PRTY" in taken.stdout
    assert asyncio.run(_stake_on_chain(deployed, sid)) == 35 * TOKEN // 10

    too_much = run_with(env, ["withdraw", "--amount", "4", *common], tmp_path)
    assert too_much.returncode == 1 and "less than 4.0 PRTY" in too_much.stderr


def test_dev_chain_deploys_writes_env_and_stops_on_ctrl_c(anvil_node: Anvil | str, tmp_path: Path):
    require_anvil(anvil_node)  # same prerequisites; this test runs its own anvil via the CLI
    binary = find_anvil((REPO,))
    assert binary is not None
    port = free_port()
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_LEVEL=debug\nFILECOIN_RPC=https://elsewhere\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "parity",
            "dev-chain",
            "--port",
            str(port),
            "--accounts",
            "3",
            "--env-file",
            str(env_file),
        ],
        env={**_env_for(tmp_path / "home"), "ANVIL_BIN": str(binary)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while "FILECOIN_STAKE_WALLET_ADDRESS" not in env_file.read_text():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "dev-chain did not write .env in time"
            time.sleep(0.1)
        values = dict(
            line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
        )
        assert values["LOG_LEVEL"] == "debug"
        assert values["FILECOIN_RPC"] == f"http://127.0.0.1:{port}"
        assert values["FILECOIN_CHAIN_ID"] == "314159"
        owner = dev_accounts(1)[0]
        assert values["SETTLEMENT_PRIVATE_KEY"] == "0x" + bytes(owner.key).hex()
        assert values["FILECOIN_CONFIRMATIONS"] == "1"
        answer = httpx.post(
            values["FILECOIN_RPC"],
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "eth_getCode",
                "params": [values["FILECOIN_STAKE_WALLET_ADDRESS"], "latest"],
            },
            timeout=5,
        ).json()
        assert len(answer["result"]) > 100
    finally:
        proc.send_signal(signal.SIGINT)
        # A bound, not a speed claim: anvil (an npm wrapper and its binary) holds the output
        # pipe until both have exited, which takes longer on a loaded machine.
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "Account 0 owns the contracts" in out
    for account in dev_accounts(3):
        assert account.address in out


def test_the_server_reports_the_chain_and_refuses_a_wrong_chain_id(
    anvil_node: Anvil | str, tmp_path: Path
):
    node = require_anvil(anvil_node)
    deployed = asyncio.run(deploy_dev_contracts(node.rpc_url, OWNER, [], 0))
    server = ServerProcess(tmp_path / "ok-home", **deployed.env()).start()
    try:
        server.wait_healthy()
        status = httpx.get(f"{server.url}/api/status", timeout=5).json()
        assert status["backends"]["chain"] == "ok"
        assert status["chain"]["stake_wallet_address"] == deployed.stake_wallet_address
        # Not signed in to this server: balance says the ledger is not available rather than
        # inventing numbers.
        config = tmp_path / "chain.env"
        _write_config(config, deployed)
        args = ["balance", "--address", OWNER.address, "--server", server.url]
        shown = run_with(
            _env_for(tmp_path / "cli-home"), [*args, "--config", str(config)], tmp_path
        )
        assert shown.returncode == 0, shown.stderr
        assert "stake: 0.0 PRTY" in shown.stdout  # the contract's symbol, not a placeholder
        assert "available after reservations: n/a (ledger not available)" in shown.stdout
    finally:
        server.stop()
    wrong = ServerProcess(tmp_path / "wrong-home", **{**deployed.env(), "FILECOIN_CHAIN_ID": "314"})
    wrong.start()
    assert wrong.wait_exit() == 2
    assert (
        "FILECOIN_CHAIN_ID is 314 but the node at FILECOIN_RPC serves chain 314159" in wrong.log()
    )

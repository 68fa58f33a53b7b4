"""The committed ABI/bytecode (src/parity/chain/artifacts) are what contracts/compile.js makes
from the committed sources with the pinned solc. Needs Node.js and contracts/node_modules
(installed with `npm ci` when npm is available); skips with the reason otherwise."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from parity.chain.compiled import load_artifact
from tests.chain_support import CONTRACTS, REPO, ensure_node_modules

ARTIFACTS = REPO / "src" / "parity" / "chain" / "artifacts"


def test_committed_artifacts_match_a_fresh_compile(tmp_path: Path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found: cannot recompile the contracts to compare")
    reason = ensure_node_modules()
    if reason is not None:
        pytest.skip(reason)
    done = subprocess.run(
        [node, "compile.js", str(tmp_path)],
        cwd=CONTRACTS,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    committed = sorted(p.name for p in ARTIFACTS.glob("*.json"))
    assert committed == ["ParityToken.json", "StakeWallet.json"]
    for name in committed:
        assert (tmp_path / name).read_bytes() == (ARTIFACTS / name).read_bytes(), (
            f"{name} is stale: run `make contracts` and commit the result"
        )


def test_artifacts_target_paris_and_keep_the_deployed_interface():
    stake_wallet = load_artifact("StakeWallet")
    functions = {e["name"] for e in stake_wallet.abi if e["type"] == "function"}
    assert {
        "addFunds",
        "getBalance",
        "getWalletInfo",
        "transferPayment",
        "withdrawFunds",
        "updateWalletAddress",
        "wallets",
        "token",
        "owner",
        "recoverTokens",
        "transferPaymentRef",
        "refUsed",
    } <= functions
    events = {e["name"] for e in stake_wallet.abi if e["type"] == "event"}
    assert {
        "FundsAdded",
        "FundsWithdrawn",
        "TaskPayment",
        "TokenRecovered",
        "OwnershipTransferred",
    } <= events
    info = next(e for e in stake_wallet.abi if e.get("name") == "getWalletInfo")
    assert [o["type"] for o in info["outputs"]] == ["uint256", "string", "address", "bool"]
    add = next(e for e in stake_wallet.abi if e.get("name") == "addFunds")
    assert [i["type"] for i in add["inputs"]] == ["uint256", "string", "address"]
    # Compiled for paris (no PUSH0 from Shanghai): runs on FEVM and every local chain.
    for name in ("ParityToken", "StakeWallet"):
        doc = json.loads((ARTIFACTS / f"{name}.json").read_text())
        assert doc["evmVersion"] == "paris"
        assert doc["compiler"].startswith("solc 0.8.37+")

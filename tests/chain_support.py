"""Shared chain test support: getting anvil (npm, in contracts/) and a session-wide node.

The anvil parametrizations skip, with the reason printed in the summary, when Node.js/npm are
absent or anvil cannot start; everything else in the suite runs without them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from parity.chain.devchain import Anvil, DevChainError, find_anvil, free_port

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = REPO / "contracts"
_install_failure: list[str] = []


def ensure_node_modules() -> str | None:
    """Install contracts/node_modules with `npm ci` when missing. None when ready, else why
    not (a skip reason)."""
    if (CONTRACTS / "node_modules" / "solc").is_dir() and _anvil_in_node_modules():
        return None
    if _install_failure:
        return _install_failure[0]
    npm = shutil.which("npm")
    if npm is None:
        reason = "npm not found: install Node.js to run the anvil and solc checks"
        _install_failure.append(reason)
        return reason
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=CONTRACTS,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"npm ci in contracts/ failed: {exc}"
    else:
        if done.returncode == 0:
            return None
        reason = f"npm ci in contracts/ failed: {(done.stderr or done.stdout).strip()[-300:]}"
    _install_failure.append(reason)
    return reason


def _anvil_in_node_modules() -> bool:
    return any((CONTRACTS / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil"))


def anvil_binary() -> Path | str:
    """The anvil binary, or the reason there is none."""
    found = find_anvil((REPO,))
    if found is not None:
        return found
    reason = ensure_node_modules()
    if reason is not None:
        return reason
    found = find_anvil((REPO,))
    return found if found is not None else "anvil not found under contracts/node_modules"


@pytest.fixture(scope="session")
def anvil_node() -> Iterator[Anvil | str]:
    """A session-wide anvil (chain id 314159) on a free loopback port, or the reason it could
    not start (tests call pytest.skip with it)."""
    binary = anvil_binary()
    if isinstance(binary, str):
        yield binary
        return
    node = Anvil(binary, port=free_port(), accounts=10)
    try:
        node.start()
    except (OSError, DevChainError) as exc:
        yield f"anvil did not start: {exc}"
        return
    try:
        yield node
    finally:
        node.stop()


def require_anvil(node: Anvil | str) -> Anvil:
    if isinstance(node, str):
        pytest.skip(node)
    return node


def cli_env(home: Path, password: str) -> dict[str, str]:
    """The environment of a `parity-server` CLI process with its own PARITY_HOME and keystore
    password (nothing else inherited)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home.parent),
        "PARITY_HOME": str(home),
        "PARITY_KEYSTORE_PASSWORD": password,
    }

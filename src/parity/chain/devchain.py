"""A whole local chain for development and tests: anvil (from npm) + our two contracts.

``parity-server dev-chain`` and the test fixtures use the same pieces: :func:`find_anvil`,
:class:`Anvil` (start, wait until it answers, stop), :func:`deploy_dev_contracts` (deploy
ParityToken and StakeWallet, mint to test accounts) and :func:`update_env_text` (write the
addresses into a .env file, keeping its other lines).

The accounts are anvil's defaults, derived from the well-known public test mnemonic: their keys
are published everywhere and must never hold anything of value.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount

from parity.chain.ports import Call
from parity.chain.web3_adapter import Web3ChainClient, Web3Options

DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_CHAIN_ID = 314159
TOKEN_NAME = "Parity Token"
TOKEN_SYMBOL = "PRTY"
ANVIL_ENV = "ANVIL_BIN"
# src/parity/chain/devchain.py -> the repository root (editable installs and checkouts).
_REPO = Path(__file__).resolve().parents[3]


class DevChainError(RuntimeError):
    """anvil is missing, did not start, or the deployment failed; the message says which."""


class PortInUseError(DevChainError):
    """Something already listens on anvil's port: whatever answers there is not our anvil."""


def find_anvil(extra_roots: tuple[Path, ...] = ()) -> Path | None:
    """$ANVIL_BIN, else ``anvil`` on PATH, else the binary npm put under
    contracts/node_modules/@foundry-rs/anvil-<platform>/bin/ (``make contracts`` installs it)."""
    explicit = os.environ.get(ANVIL_ENV)
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    for root in (*extra_roots, Path.cwd(), _REPO):
        packages = root / "contracts" / "node_modules" / "@foundry-rs"
        for candidate in sorted(packages.glob("anvil-*/bin/anvil")):
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def dev_accounts(count: int) -> list[LocalAccount]:
    """anvil's default accounts 0..count-1 (BIP-44 m/44'/60'/0'/0/i of the test mnemonic)."""
    Account.enable_unaudited_hdwallet_features()
    return [
        Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        for i in range(count)
    ]


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails (SO_REUSEADDR, as servers bind: a port held only by
    closed connections in TIME_WAIT counts as free)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Anvil:
    """An anvil process on loopback. Use as a context manager, or start()/stop()."""

    def __init__(
        self,
        binary: Path,
        *,
        port: int,
        host: str = "127.0.0.1",
        chain_id: int = DEV_CHAIN_ID,
        accounts: int = 10,
        silent: bool = True,
    ) -> None:
        self.binary = binary
        self.host = host
        self.port = port
        self.chain_id = chain_id
        self.accounts = accounts
        self.silent = silent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, ready_timeout: float = 15.0) -> Anvil:
        # Checked first: anvil fails to bind a taken port only after a moment, and until then
        # the node already there would answer _wait_ready as if it were ours.
        if port_in_use(self.host, self.port):
            raise PortInUseError(
                f"port {self.port} on {self.host} is already in use (another node?): stop "
                "what listens there or pick another --port"
            )
        args = [
            str(self.binary),
            "--chain-id",
            str(self.chain_id),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--accounts",
            str(self.accounts),
            "--mnemonic",
            DEV_MNEMONIC,
        ]
        if self.silent:
            args.append("--silent")
        # Its own process group: npm's anvil is a node wrapper that spawns the real binary, and
        # stopping must reach both (a killed wrapper would leave the binary running, holding
        # our output).
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise DevChainError(f"anvil exited with status {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.post(self.rpc_url, json=body, timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise DevChainError(f"anvil did not answer on {self.rpc_url} within {timeout:g} s")

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def stop(self) -> None:
        if self.process is None:
            return
        group = self.process.pid  # the group's id (start_new_session)
        if self.process.poll() is None:
            _signal_group(group, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _signal_group(group, signal.SIGKILL)
                self.process.wait(timeout=5)
        _signal_group(group, signal.SIGKILL)  # whatever of the group outlived the wrapper

    def __enter__(self) -> Anvil:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


@dataclass(frozen=True)
class DevDeployment:
    rpc_url: str
    chain_id: int
    token_address: str
    stake_wallet_address: str
    owner: str  # deployer: owns both contracts (the settlement signer on this chain)
    funded: tuple[str, ...]  # addresses minted ``mint_each`` base units
    mint_each: int

    def env(self) -> dict[str, str]:
        """The settings that point a server or CLI at this chain."""
        return {
            "FILECOIN_RPC": self.rpc_url,
            "FILECOIN_CHAIN_ID": str(self.chain_id),
            "FILECOIN_TOKEN_ADDRESS": self.token_address,
            "FILECOIN_STAKE_WALLET_ADDRESS": self.stake_wallet_address,
        }


async def deploy_dev_contracts(
    rpc_url: str,
    deployer: LocalAccount,
    fund: list[str],
    mint_each: int,
    *,
    chain_id: int = DEV_CHAIN_ID,
) -> DevDeployment:
    """Deploy ParityToken and StakeWallet from ``deployer`` (who owns both) and mint
    ``mint_each`` base units to every address in ``fund``."""
    options = Web3Options(receipt_timeout_seconds=60.0, poll_interval_seconds=0.05)
    deployer_client = Web3ChainClient(
        rpc_url, chain_id=chain_id, stake_wallet_address="", options=options
    )
    try:
        token = await deployer_client.deploy(deployer, "ParityToken", TOKEN_NAME, TOKEN_SYMBOL)
        stake_wallet = await deployer_client.deploy(deployer, "StakeWallet", token)
    finally:
        await deployer_client.aclose()
    client = Web3ChainClient(
        rpc_url,
        chain_id=chain_id,
        stake_wallet_address=stake_wallet,
        token_address=token,
        options=options,
    )
    try:
        for address in fund:
            await client.transact(deployer, Call("token", "mint", (address, mint_each)))
    finally:
        await client.aclose()
    return DevDeployment(
        rpc_url=rpc_url,
        chain_id=chain_id,
        token_address=token,
        stake_wallet_address=stake_wallet,
        owner=deployer.address.lower(),
        funded=tuple(a.lower() for a in fund),
        mint_each=mint_each,
    )


_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def update_env_text(text: str, values: Mapping[str, str]) -> str:
    """``text`` (a .env file) with each key in ``values`` set: the first assignment of a key is
    replaced in place, later duplicates are dropped, missing keys are appended; comments and
    every other line are kept."""
    out: list[str] = []
    done: set[str] = set()
    for line in text.splitlines():
        match = _ENV_LINE.match(line)
        key = match.group(1) if match else None
        if key is not None and key.upper() in values:
            key = key.upper()
            if key not in done:
                out.append(f"{key}={values[key]}")
                done.add(key)
            continue
        out.append(line)
    missing = [k for k in values if k not in done]
    if missing:
        if out and out[-1].strip():
            out.append("")
        out.append("# written by `parity-server dev-chain`")
        out.extend(f"{k}={values[k]}" for k in missing)
    return "\n".join(out) + "\n"


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Apply :func:`update_env_text` to ``path`` (created when absent)."""
    current = path.read_text() if path.exists() else ""
    path.write_text(update_env_text(current, values))

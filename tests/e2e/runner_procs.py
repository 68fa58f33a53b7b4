"""Start real parity-runner processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from eth_account.messages import encode_defunct

import parity.chain.keystore as keystore
from tests.conftest import TEST_DB
from tests.e2e.procs import ServerProcess

PASSWORD = "runner-test-password"


def make_keystore(path: Path, private_key: str) -> str:
    # A low scrypt cost keeps the tests fast; the runner reads the cost from the file.
    saved = keystore.SCRYPT_N
    keystore.SCRYPT_N = 2**10
    try:
        return keystore.create_keystore(path, PASSWORD, private_key, overwrite=True)
    finally:
        keystore.SCRYPT_N = saved


class RunnerProcess:
    def __init__(
        self, server_url: str, keystore_path: Path, device_id: str, workdir: Path, *extra: str
    ) -> None:
        self.device_id = device_id
        self.log_path = workdir / f"runner-{device_id}.log"
        self.args = [
            sys.executable, "-c", "from parity.agent.cli import main; main()",
            "--server", server_url,
            "--keystore", str(keystore_path),
            "--device-id", device_id,
            "--heartbeat-interval", "1",
            "--claim-wait", "5",
            "--grace-seconds", "5",
            *extra,
        ]  # fmt: skip
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "PARITY_HOME": str(workdir / f"home-{device_id}"),
            "PARITY_KEYSTORE_PASSWORD": PASSWORD,
            "LOG_LEVEL": "info",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RunnerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_registered(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "runner_registered" in self.log():
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"runner exited:\n{self.log()}")
            time.sleep(0.1)
        raise TimeoutError(self.log())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


def client_token(base_url: str, account: object) -> str:
    with httpx.Client(base_url=base_url, timeout=10) as c:
        body = c.post("/api/v1/auth/nonce", json={"address": account.address}).json()  # type: ignore[attr-defined]
        sig = account.sign_message(encode_defunct(text=body["message"])).signature.hex()  # type: ignore[attr-defined]
        r = c.post(
            "/api/v1/auth/token",
            json={"address": account.address, "signature": sig, "nonce": body["nonce"]},  # type: ignore[attr-defined]
        )
        return str(r.json()["token"])


def wait_for(predicate: object, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


@contextlib.contextmanager
def running_server(home: Path, database_url: str, env: dict[str, str]) -> Iterator[ServerProcess]:
    """A healthy server process on the test database (its own embedded SQLite on SQLite runs),
    stopped afterwards."""
    s = ServerProcess(home, database_url if TEST_DB == "postgres" else "", **env).start()
    try:
        s.wait_healthy()
        yield s
    finally:
        s.stop()


def keystore_with(tmp_path: Path, private_key: str) -> Path:
    """A runner's keystore (in a folder of its own) holding ``private_key``."""
    path = tmp_path / "secret" / "keystore.json"
    make_keystore(path, private_key)
    return path

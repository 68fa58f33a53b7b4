"""The NATS server the NATS-backed tests use: ``PARITY_TEST_NATS_URL`` (``scripts/test.sh`` sets
it, starting ``nats-server`` when one is installed and none answers), else 127.0.0.1:4222. Where
none answers, those tests are skipped, saying so. ``nats_server_binary`` finds an installed
``nats-server`` for the tests that start and stop a private one."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.procs import free_port

NATS_URL = os.environ.get("PARITY_TEST_NATS_URL", "nats://127.0.0.1:4222")


def greets(url: str, timeout: float = 2.0) -> bool:
    """Whether a NATS server answers at ``url`` (it sends an INFO line to every connection)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 4222), timeout) as s:
            s.settimeout(timeout)
            return s.recv(5) == b"INFO "
    except OSError:
        return False


@functools.cache
def _unavailable() -> str | None:
    if greets(NATS_URL):
        return None
    return f"no NATS server at {NATS_URL}; set PARITY_TEST_NATS_URL or start nats-server"


def nats_url() -> str:
    """The test NATS server's URL, or the calling test is skipped with the reason."""
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    return NATS_URL


def nats_server_binary() -> str:
    """An installed ``nats-server``, or the calling test is skipped with the reason."""
    found = shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(p).exists()), None
    )
    if found is None:
        pytest.skip("nats-server is not installed (Debian: apt-get install nats-server)")
    return found


class NatsServer:
    """A private ``nats-server`` on a loopback port of its own that a test stops and starts
    again: stopped, its clients' connections break and what is published meanwhile is lost, as
    in an outage."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not greets(self.url, 0.5):
            assert self.proc.poll() is None, "nats-server exited"
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

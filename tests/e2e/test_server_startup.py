"""What `parity-server server` says and refuses at start-up, as real processes: the
`server_started` line names the URL and the docs URL and comes only once the port listens; a
busy port fails before anything is migrated or announced; a local blockstore is locked, so a
server of another database cannot share it with a running one."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_DB
from tests.e2e.procs import ServerProcess, free_port

pytestmark = pytest.mark.slow


def _events(log: str) -> list[dict[str, object]]:
    out = []
    for line in log.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def test_server_started_names_where_it_listens_and_the_docs(tmp_path: Path):
    server = ServerProcess(tmp_path / "parity").start()
    try:
        server.wait_healthy()
        [started] = [e for e in _events(server.log()) if e.get("event") == "server_started"]
        assert started["url"] == server.url
        assert started["docs_url"] == f"{server.url}/docs"
        assert started["api_url"] == f"{server.url}/api/v1"
        assert started["mode"] == "embedded"
        assert httpx.get(str(started["docs_url"]), timeout=5).status_code == 200
    finally:
        server.stop()


def test_a_busy_port_fails_before_migrating_or_announcing(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        server = ServerProcess(tmp_path / "parity", port=port).start()
        assert server.wait_exit(timeout=60) == 1
    log = server.log()
    assert f"cannot listen on http://127.0.0.1:{port}" in log
    assert "SERVER_PORT" in log
    events = {e.get("event") for e in _events(log)}
    assert "server_started" not in events and "schema_ready" not in events
    assert not (tmp_path / "parity" / "parity.db").exists()


def test_a_second_server_of_another_database_cannot_share_a_running_blockstore(
    tmp_path: Path, fresh_database_url: str
):
    blocks = tmp_path / "shared-blocks"
    embedded = ServerProcess(tmp_path / "parity", STORAGE_PATH=str(blocks)).start()
    try:
        embedded.wait_healthy()
        if TEST_DB == "postgres":
            # The case users meet: PostgreSQL mode on the same PARITY_HOME (blocks by default).
            other = ServerProcess(tmp_path / "parity", fresh_database_url, STORAGE_PATH=str(blocks))
        else:
            other = ServerProcess(tmp_path / "other-home", STORAGE_PATH=str(blocks))
        other.start()
        assert other.wait_exit(timeout=60) == 1
        log = other.log()
        assert f"already using the blockstore {blocks}" in log
        assert "embedded mode" in log and "STORAGE_PATH" in log
        assert "FILECOIN_IPFS_ENDPOINT" in log
        assert httpx.get(f"{embedded.url}/api/health", timeout=5).status_code == 200
    finally:
        assert embedded.stop() == 0
    # Stopped, the lock is gone: the other server may now use the directory.
    again = ServerProcess(tmp_path / "again", STORAGE_PATH=str(blocks), port=free_port()).start()
    try:
        again.wait_healthy()
    finally:
        again.stop()


def test_server_max_connections_bounds_the_connections_it_holds(tmp_path: Path):
    server = ServerProcess(tmp_path / "parity", SERVER_MAX_CONNECTIONS="2").start()
    clients = [httpx.Client(base_url=server.url, timeout=10) for _ in range(3)]
    try:
        server.wait_healthy()
        [limit] = [e for e in _events(server.log()) if e.get("event") == "connection_limit"]
        assert limit["max_connections"] == 2
        first, second, third = clients
        assert first.get("/api/health").status_code == 200
        assert second.get("/api/health").status_code == 200  # both kept alive
        status = second.get("/api/status").json()
        assert status["connections"] == {"open": 2, "max": 2, "refused": 0}
        assert any("2 of 2 connections in use" in w for w in status["warnings"])
        busy = third.get("/api/health")
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "server_busy"
        assert second.get("/api/status").json()["connections"]["refused"] == 1
        first.close()  # a place frees up
        for _ in range(50):
            answer = httpx.get(f"{server.url}/api/health", timeout=5)
            if answer.status_code == 200:
                break
            time.sleep(0.1)  # the server has yet to see the close
        assert answer.status_code == 200
    finally:
        for client in clients:
            client.close()
        server.stop()
    assert "connection_limit_reached" in server.log()

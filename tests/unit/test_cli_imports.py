"""The command lines start without loading what only some of their commands need.

eth_account and eth_utils (keys and signatures), web3 (the chain), alembic and SQLAlchemy
(migrations, the server) each take tens to hundreds of milliseconds to import; `parity-server
--help`, `llm models` or `storage get` need none of them. Each is imported where it is used.
The time itself is measured in bench/cli_startup.py, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from parity.chain.keystore import create_keystore, load_account, read_address
from parity.chain.stake_ids import stake_id

HEAVY = ("eth_account", "eth_utils", "eth_keys", "web3", "alembic", "sqlalchemy")


def _loaded_after(code: str) -> list[str]:
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [m for m in json.loads(done.stdout.splitlines()[-1]) if m in HEAVY]


@pytest.mark.parametrize(
    "module", ["parity.cli.main", "parity.agent.cli", "parity.cli.session", "parity.cli.storage"]
)
def test_command_line_modules_load_without_the_heavy_libraries(module: str) -> None:
    assert _loaded_after(f"import {module}") == []


def test_the_probe_sees_a_heavy_import() -> None:
    # The check above can fail: a module that does import one is reported.
    assert "eth_account" in _loaded_after("import parity.chain.keystore, eth_account")


def test_keystore_and_stake_ids_still_work_with_their_imports_deferred(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("parity.chain.keystore.SCRYPT_N", 2**4)
    key = "0x" + "11" * 32
    path = tmp_path / "keystore.json"
    address = create_keystore(path, "pw", key)
    assert read_address(path) == address  # checksummed (EIP-55)
    assert address != address.lower()
    assert load_account(path, "pw").address == address
    assert stake_id(address) == address.lower()
    with pytest.raises(ValueError, match="not a 0x address"):
        # mixed case with a wrong checksum: the deferred EIP-55 check runs
        stake_id(address[:2] + address[2:].swapcase())

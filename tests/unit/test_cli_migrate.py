"""`parity-server migrate --downgrade REV` refuses a revision it cannot go down to in one line,
naming the revision and the known ones, exit 2, and leaves the schema as it was; and
`parity-server --version`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from parity import __version__
from parity.cli.main import app as cli_app
from parity.db.migrate import revision_order

KNOWN = "known: " + ", ".join(["base", *revision_order()])


@pytest.fixture
def migrate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.setenv("PARITY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PARITY_CONFIG_PATH", "/dev/null")
    monkeypatch.delenv("DATABASE_URL", raising=False)

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli_app, ["migrate", *args])

    return run


def _one_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unknown_and_unreachable_downgrade_targets_are_one_line_errors(
    migrate: Callable[..., Result],
) -> None:
    head = revision_order()[-1]
    middle = revision_order()[4]
    assert migrate().exit_code == 0
    assert migrate("--downgrade", middle).stdout.strip() == f"schema at {middle} (head {head})"

    for bad in ("nonsense", "9999"):
        line = _one_error(migrate("--downgrade", bad))
        assert line == f"error: --downgrade: unknown revision {bad!r} ({KNOWN})"

    # Above the database's revision: not a downgrade target.
    line = _one_error(migrate("--downgrade", head))
    assert line.startswith(f"error: --downgrade: revision {head} is not below the database's ")
    assert middle in line

    line = _one_error(migrate("--downgrade", "-40"))
    assert line.startswith("error: --downgrade: cannot downgrade to '-40' from ") and KNOWN in line

    # An empty revision is not "upgrade to head".
    assert (
        _one_error(migrate("--downgrade", "")) == f"error: --downgrade: no revision given ({KNOWN})"
    )

    check = migrate("--check")
    assert check.stdout.startswith(f"current: {middle}  head: {head}")  # nothing changed


def test_version_flag_prints_the_version() -> None:
    result = CliRunner().invoke(cli_app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"parity-server {__version__}\n"


@pytest.mark.parametrize("key", ["PARITY_HOME", "STORAGE_PATH"])
@pytest.mark.parametrize("command", ["server", "migrate"])
def test_a_data_directory_that_cannot_be_made_is_named_by_its_key(
    command: str, key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PARITY_CONFIG_PATH", "/dev/null")
    monkeypatch.setenv("PARITY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SERVER_PORT", "1")  # never reached: the directory stops it first
    for other in ("DATABASE_URL", "DATABASE_HOST", "STORAGE_PATH", "FILECOIN_IPFS_ENDPOINT"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(key, str(blocker / "sub"))
    result = CliRunner().invoke(cli_app, [command])
    if command == "migrate" and key == "STORAGE_PATH":  # migrate does not touch the blockstore
        assert result.exit_code == 0, result.output
        return
    assert _one_error(result).startswith(f"error: {key}: cannot ")
    assert str(blocker) in result.stderr


def test_check_with_downgrade_is_refused_not_half_done(migrate: Callable[..., Result]):
    assert migrate().exit_code == 0
    line = _one_error(migrate("--check", "--downgrade", "base"))
    assert line == "error: --check and --downgrade exclude each other: give one"
    assert migrate("--check").exit_code == 0  # still at head

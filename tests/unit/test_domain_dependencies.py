"""No two packages of the server import each other: the dependencies between domains (and the
compositions above them) form no cycle. Two places are the known exceptions, by design:
``db/registry.py`` imports every domain's models (so metadata knows every table), and ``api``
(the routers' shared dependencies) resolves a principal through the auth service."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "parity"
_IMPORT = re.compile(r"^\s*(?:from|import) parity\.(\w+)", re.M)


REGISTRY = SRC / "db" / "registry.py"


def _packages() -> list[str]:
    return sorted(
        p.name
        for p in SRC.iterdir()
        if p.is_dir() and (p / "__init__.py").exists() and p.name != "api"
    )


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (SRC / package).rglob("*.py"):
        if path != REGISTRY:
            found.update(_IMPORT.findall(path.read_text()))
    return found - {package}


def test_no_two_packages_import_each_other():
    imports = {p: _imports(p) for p in _packages()}
    cycles = [
        (a, b) for a, b in itertools.combinations(imports, 2) if b in imports[a] and a in imports[b]
    ]
    assert cycles == []


def test_the_runner_registry_and_the_loop_framework_import_no_task_code():
    assert "tasks" not in _imports("runners")
    assert not _imports("jobs") & {"tasks", "events", "auth", "ledger", "llm", "idempotency"}

"""Every module of the package imports on its own, first, in a fresh interpreter: an import
cycle that only works in the order the server happens to import its modules breaks a script or
a tool that starts from another module (``bench/claims.py`` imported ``tasks.queue.ops`` first
and stopped on a partially initialized ``tasks.queue.transitions``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

CHECK = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import parity
    names = sorted(
        m.name for m in pkgutil.walk_packages(parity.__path__, "parity.")
        if not m.name.endswith("__main__")
    )
    failed = []
    for name in names:
        for loaded in [k for k in sys.modules if k == "parity" or k.startswith("parity.")]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
        except Exception as exc:
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    print(len(names))
    print("\\n".join(failed))
    """
)


def test_every_module_imports_first_in_a_fresh_interpreter():
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300, check=True
    ).stdout.splitlines()
    assert int(out[0]) > 300  # the walk found the package's modules
    assert [line for line in out[1:] if line] == []

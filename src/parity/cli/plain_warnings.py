"""Warnings on a command line read as one line, ``warning: MESSAGE``, not as Python's
``path:line: UserWarning: MESSAGE`` followed by a line of source code."""

from __future__ import annotations

import sys
import warnings
from typing import TextIO


def _show(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    print(f"warning: {message}", file=file or sys.stderr)


def plain_warnings() -> None:
    """Call before running a command line app."""
    warnings.showwarning = _show

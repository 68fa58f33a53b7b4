"""Help text that is read through a pipe, a file or a CI log is not cut at 80 columns.

Rich (which Typer renders help with) falls back to 80 columns when no standard stream is a
terminal, and then cuts long option names and env var names with an ellipsis. Without a
terminal there is no width to respect, so the help gets room for its longest lines.
``COLUMNS`` or ``TERMINAL_WIDTH`` still decide when set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import typer.rich_utils

UNCUT_WIDTH = 160


def _terminal_columns() -> int | None:
    for fd in (0, 1, 2):
        try:
            columns = os.get_terminal_size(fd).columns
        except (OSError, ValueError):
            continue
        if columns:
            return columns
    return None


def widen_help_without_terminal(environ: Mapping[str, str] | None = None) -> None:
    """Call before running a Typer app."""
    env = os.environ if environ is None else environ
    if env.get("COLUMNS") or env.get("TERMINAL_WIDTH") or _terminal_columns():
        return
    typer.rich_utils.MAX_WIDTH = UNCUT_WIDTH

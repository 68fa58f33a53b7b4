"""A pytest plugin that catches the event loop standing still.

A thread samples the main thread's stack every 100 ms. When the main thread is inside a turn of
an asyncio event loop (``_run_once`` is on its stack) but not waiting in the loop's selector,
and its innermost frame has not moved for a second or more, the loop is blocked: a synchronous
call (a database statement on the loop's thread, a sync, a lock) holds every coroutine of the
test, the in-process server's included. Each such stall is kept with the test that was running
and the stack where it stood; a failing test gets them as a report section, and the run's
summary lists them all, so a timing failure in CI says where the time went.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Generator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import pytest

SAMPLE_S = 0.1
REPORT_AFTER_S = 1.0


@dataclass
class Stall:
    test: str
    seconds: float
    stack: str
    where: str
    # Under a helper of the process tests (tests/e2e), which block while their servers and
    # runners, separate processes, do the work: no in-process server waited.
    test_made: bool


class _Watcher(threading.Thread):
    def __init__(self, main_id: int) -> None:
        super().__init__(name="stall-watch", daemon=True)
        self.main_id = main_id
        self.test = ""
        self.stalls: list[Stall] = []
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        held: tuple[int, int, int] | None = None
        since = 0.0
        current: Stall | None = None
        while not self._stop.wait(SAMPLE_S):
            frame = sys._current_frames().get(self.main_id)
            key = _blocked_at(frame)
            now = time.monotonic()
            if key is None or key != held:
                held, since, current = key, now, None
                continue
            if current is None and now - since >= REPORT_AFTER_S and frame is not None:
                current = Stall(
                    self.test,
                    now - since,
                    "".join(traceback.format_stack(frame, limit=key[2])),
                    f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}",
                    "/tests/e2e/" in "".join(traceback.format_stack(frame, limit=key[2])),
                )
                self.stalls.append(current)
            elif current is not None:
                current.seconds = now - since


def _blocked_at(frame: FrameType | None) -> tuple[int, int, int] | None:
    """The innermost frame's identity and line, and how many frames lie below the loop's turn,
    when the main thread is inside a turn of an event loop and not in its selector's wait;
    otherwise None."""
    if frame is None:
        return None
    if frame.f_code.co_filename.endswith("selectors.py"):
        return None  # the loop waits for I/O or a timer: idle, not blocked
    depth = 0
    f: FrameType | None = frame
    while f is not None:
        if f.f_code.co_name == "_run_once" and "asyncio" in f.f_code.co_filename:
            return id(frame), frame.f_lineno, depth
        depth += 1
        f = f.f_back
    return None


_watcher: _Watcher | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _watcher
    _watcher = _Watcher(threading.main_thread().ident or 0)
    _watcher.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _watcher is not None:
        _watcher.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    if _watcher is not None:
        _watcher.test = item.nodeid
    yield
    if _watcher is not None:
        _watcher.test = ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if _watcher is None or not report.failed:
        return
    mine = [s for s in _watcher.stalls if s.test == item.nodeid]
    if mine:
        text = "\n".join(f"{s.seconds:.1f} s at {s.where}\n{s.stack}" for s in mine)
        report.sections.append(("event loop stalls (the loop's thread stood still)", text))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _watcher is None or not _watcher.stalls:
        return
    shown = [s for s in _watcher.stalls if not s.test_made]
    terminalreporter.section("event loop stalls of 1 s or more")
    for s in shown:
        terminalreporter.write_line(f"{s.seconds:5.1f} s  {s.test}  at {s.where}")
    skipped = len(_watcher.stalls) - len(shown)
    if skipped:
        terminalreporter.write_line(
            f"(and {skipped} in the blocking helpers of the process tests, tests/e2e)"
        )

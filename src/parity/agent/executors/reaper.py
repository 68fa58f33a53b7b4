"""Process groups of command tasks that must not outlive the runner.

bubblewrap's ``--die-with-parent`` ends a sandboxed task when its runner dies. The other modes
(a dedicated uid, or unsandboxed) have no such guarantee: a runner killed outright (SIGKILL, an
OOM kill) would leave its tasks' processes running while the server hands the task to another
runner. A small watchdog process, started once per runner, holds the read end of a pipe; the
runner writes ``+PGID`` when a task's process group starts and ``-PGID`` when it has been
reaped, and ``+PATH`` / ``-PATH`` for a task's work directory. When the runner dies, however it
dies, the kernel closes the pipe and the watchdog kills every group still listed, removes every
work directory still listed (what the task downloaded or wrote; in every sandbox mode, as the
runner's own clean-up never runs), then exits. Nothing else reaches the watchdog: it ignores
SIGINT and SIGTERM (a Ctrl-C on the runner's terminal stops the runner, whose pipe then closes)
and runs in its own session."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading

# The watchdog's whole program (``python -S -E -c``: no site packages, ~15 ms to start).
WATCHDOG = """\
import os, shutil, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
groups, dirs = set(), set()
for line in sys.stdin.buffer:
    sign, item = line[:1], line[1:].rstrip(b"\\n")
    if item.isdigit():
        (groups.add if sign == b"+" else groups.discard)(int(item))
    elif item.startswith(b"/") and os.path.basename(item).startswith(b"parity-task-"):
        (dirs.add if sign == b"+" else dirs.discard)(item)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
for path in dirs:
    shutil.rmtree(path, ignore_errors=True)
"""


class Reaper:
    """The runner's side of the watchdog: started on first use, one per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Starts the watchdog if it is not running (else it starts on first use)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()

    def track(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def untrack(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def track_dir(self, path: str) -> None:
        """A task's work directory (``parity-task-*``, an absolute path): removed by the
        watchdog, after the groups are killed, if the runner dies before :meth:`untrack_dir`."""
        if path.startswith("/") and "\n" not in path:
            self._send(f"+{path}\n")

    def untrack_dir(self, path: str) -> None:
        if path.startswith("/") and "\n" not in path:
            self._send(f"-{path}\n")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _send(self, line: str) -> None:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                proc = self._proc = self._start()
            if proc is None or proc.stdin is None:
                return
            try:
                proc.stdin.write(line.encode())
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._proc = None

    @staticmethod
    def _start() -> subprocess.Popen[bytes] | None:
        try:
            return subprocess.Popen(
                [sys.executable, "-S", "-E", "-c", WATCHDOG],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except OSError:
            return None

    def close(self) -> None:
        """Ends the watchdog (it kills any group still listed, as on the runner's death)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


REAPER = Reaper()

"""The `command` executor, sandboxed.

Order of preference: bubblewrap (`bwrap`) — a fresh mount namespace with read-only system
directories, an empty home and /tmp, no network unless the task asks for it, uid 65534; else,
when running as root, a uid of the task's own (drawn at random from a range no account uses,
so two tasks on one machine, of one client or two, cannot read each other's files or
/proc/PID/environ), its work directory private to that uid, and a network namespace of its own
(no network) unless the task asks for one and the kernel allows it; else refuse unless the
runner was started with --allow-unsandboxed-commands. The child never inherits the runner's
environment (tokens, PARITY_KEYSTORE_PASSWORD): it gets a minimal one plus the task's ``env``.
Limits: wall-clock timeout, CPU time and address space (setrlimit), captured output capped."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from parity.agent.executors import CancelToken, LogSink, Outcome
from parity.agent.executors.reaper import REAPER

UNPRIVILEGED_UID = 65534
# The range of the per-task uids of the dedicated-uid mode: above the usual account, nobody
# (65534) and container sub-uid ranges, below 2^31 (some tools read uids as signed).
TASK_UID_BASE = 1_500_000_000
TASK_UID_SPAN = 500_000_000
CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)
READ_CHUNK = 64 * 1024
MAX_LOG_LINE = 64 * 1024  # bytes of one log line; a longer output line is cut into several
# A log batch goes to the server at this many lines, or this long after its first line.
LOG_BATCH_LINES = 200
LOG_FLUSH_SECONDS = 0.5
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


class SandboxMode(StrEnum):
    BWRAP = "bwrap"
    UID = "uid"
    NONE = "none"
    REFUSE = "refuse"


def detect_sandbox(allow_unsandboxed: bool, prefer: str | None = None) -> SandboxMode:
    """bwrap when it works here, else a dedicated uid as root, else none/refuse."""
    if prefer:
        return SandboxMode(prefer)
    if shutil.which("bwrap") and _bwrap_works():
        return SandboxMode.BWRAP
    if os.geteuid() == 0:
        return SandboxMode.UID
    return SandboxMode.NONE if allow_unsandboxed else SandboxMode.REFUSE


def _bwrap_works() -> bool:
    import subprocess

    try:
        res = subprocess.run(
            [*_bwrap_prefix(tempfile.gettempdir(), network=False), "true"],
            capture_output=True,
            timeout=10,
            env=BASE_ENV,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _bwrap_prefix(workdir: str, network: bool) -> list[str]:
    args = [
        "bwrap",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/sbin", "/sbin",
        "--ro-bind", "/etc", "/etc",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",  # noqa: S108 - a fresh tmpfs inside the sandbox
        "--bind", workdir, "/work",
        "--chdir", "/work",
        "--unshare-all",
        "--unshare-user",
        "--uid", str(UNPRIVILEGED_UID),
        "--gid", str(UNPRIVILEGED_UID),
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ]  # fmt: skip
    if os.path.exists("/usr/lib64"):
        args[7:7] = ["--symlink", "usr/lib64", "/lib64"]
    if network:
        args.append("--share-net")
    return args


@dataclass
class Limits:
    timeout_seconds: float = 3600.0
    memory_mb: int = 2048
    output_bytes: int = 64 * 1024  # kept inline in the result
    max_output_bytes: int = 16 * 1024 * 1024  # kept at all (stored under a CID when large)


def task_uid() -> int:
    """A uid for one task of the dedicated-uid mode, unused by any account."""
    return TASK_UID_BASE + secrets.randbelow(TASK_UID_SPAN)


def _own_network() -> bool:
    """Moves the calling process into a new, empty network namespace (loopback down): True
    when the kernel allowed it (root, and namespaces not forbidden by a container)."""
    return int(_LIBC.unshare(CLONE_NEWNET)) == 0


def network_namespaces_work() -> bool:
    """Whether this runner can give a task a network namespace of its own (probed once, in a
    short-lived child: the runner's own namespace stays as it is)."""
    if os.geteuid() != 0:
        return False
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits at once
        os._exit(0 if _own_network() else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _preexec(limits: Limits, as_uid: int | None, isolate_network: bool) -> Callable[[], None]:
    cpu = int(limits.timeout_seconds) + 5
    mem = limits.memory_mb * 1024 * 1024

    def apply() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if isolate_network and not _own_network():
            os._exit(126)  # probed at start-up: not reached unless the kernel changed its mind
        if as_uid is not None:
            os.setgroups([])
            os.setgid(as_uid)
            os.setuid(as_uid)

    return apply


async def pump_lines(
    stream: asyncio.StreamReader, keep: Callable[[bytes], None], logs: LogSink
) -> None:
    """Hand every chunk of ``stream`` to ``keep`` and its lines to ``logs`` in batches: at
    LOG_BATCH_LINES lines, or LOG_FLUSH_SECONDS after a batch's first line even when the
    command then falls silent (a long computation after "starting" is followed live). Read in
    chunks, not lines: a line may be longer than any reader buffer (a 70 KB JSON document on
    one line must not fail the task)."""
    pending: list[str] = []
    first = 0.0  # when the oldest pending line came
    split = LineSplitter()
    read = asyncio.ensure_future(stream.read(READ_CHUNK))
    try:
        while True:
            wait = max(LOG_FLUSH_SECONDS - (time.monotonic() - first), 0.0) if pending else None
            done, _ = await asyncio.wait({read}, timeout=wait)
            if done:
                chunk = read.result()
                if not chunk:
                    break
                read = asyncio.ensure_future(stream.read(READ_CHUNK))
                keep(chunk)
                if not pending:
                    first = time.monotonic()
                pending.extend(split.feed(chunk))
            due = bool(pending) and time.monotonic() - first >= LOG_FLUSH_SECONDS
            if len(pending) >= LOG_BATCH_LINES or due:
                await logs(pending)
                pending = []
    finally:
        read.cancel()
    pending.extend(split.end())
    if pending:
        await logs(pending)


class CommandExecutor:
    def __init__(self, mode: SandboxMode, default_limits: Limits | None = None) -> None:
        self.mode = mode
        self.limits = default_limits or Limits()
        # bwrap isolates the network itself; the dedicated-uid mode does where the kernel lets
        # it (a container may forbid namespaces: the network then stays shared, as unsandboxed).
        self.network_isolation = mode == SandboxMode.BWRAP or (
            mode == SandboxMode.UID and network_namespaces_work()
        )
        if mode in (SandboxMode.UID, SandboxMode.NONE):
            REAPER.start()  # now, so a task's spawn only adds a line to its pipe

    @property
    def available(self) -> bool:
        return self.mode != SandboxMode.REFUSE

    async def run(self, task: dict[str, Any], logs: LogSink, cancel: CancelToken) -> Outcome:
        if self.mode == SandboxMode.REFUSE:
            return Outcome(
                False,
                None,
                "",
                "command tasks are refused: no sandbox (install bubblewrap, run as root for a "
                "dedicated uid, or start with --allow-unsandboxed-commands)",
            )
        config = task.get("config") or {}
        argv = [str(a) for a in config.get("command") or []]
        if not argv:
            return Outcome(False, None, "", "config.command is empty")
        limits = Limits(
            timeout_seconds=float(
                config.get("timeout_seconds")
                or task.get("timeout_seconds")
                or self.limits.timeout_seconds
            ),
            memory_mb=int((task.get("resources") or {}).get("memory_mb") or self.limits.memory_mb),
            output_bytes=self.limits.output_bytes,
            max_output_bytes=self.limits.max_output_bytes,
        )
        env = {**BASE_ENV, **{str(k): str(v) for k, v in (config.get("env") or {}).items()}}
        with tempfile.TemporaryDirectory(prefix="parity-task-") as workdir, _watched_dir(workdir):
            as_uid = task_uid() if self.mode == SandboxMode.UID else None
            if self.mode == SandboxMode.BWRAP:
                os.chmod(workdir, 0o777)  # noqa: S103 - bwrap's uid 65534 writes here
            elif as_uid is not None:
                os.chown(workdir, as_uid, as_uid)  # private to this task's own uid (0700)
            env["HOME"] = "/work" if self.mode == SandboxMode.BWRAP else workdir
            sandbox_tmp = "/tmp"  # noqa: S108 - the tmpfs inside the sandbox
            env["TMPDIR"] = sandbox_tmp if self.mode == SandboxMode.BWRAP else workdir
            if self.mode == SandboxMode.BWRAP:
                full = [*_bwrap_prefix(workdir, bool(config.get("network")))]
                for k, v in env.items():
                    full += ["--setenv", k, v]
                full += ["--", *argv]
            else:
                full = argv
            isolate = (
                self.mode == SandboxMode.UID
                and self.network_isolation
                and not bool(config.get("network"))
            )
            return await self._spawn(full, env, workdir, limits, as_uid, isolate, logs, cancel)

    async def _spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        limits: Limits,
        as_uid: int | None,
        isolate_network: bool,
        logs: LogSink,
        cancel: CancelToken,
    ) -> Outcome:
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                preexec_fn=_preexec(limits, as_uid, isolate_network),
            )
        except (FileNotFoundError, PermissionError) as exc:
            return Outcome(False, 127, "", f"cannot start {argv[0]!r}: {exc}")
        # bwrap ends its sandbox with the runner (--die-with-parent); otherwise the watchdog
        # kills the task's process group if the runner dies first.
        watched = self.mode != SandboxMode.BWRAP
        if watched:
            REAPER.track(proc.pid)
        try:
            return await self._supervise(proc, limits, logs, cancel, started)
        finally:
            # The task is over: whatever it left running in its group (a background job
            # holding its output open) ends with it.
            _kill_group(proc.pid)
            if watched:
                REAPER.untrack(proc.pid)

    async def _supervise(
        self,
        proc: asyncio.subprocess.Process,
        limits: Limits,
        logs: LogSink,
        cancel: CancelToken,
        started: float,
    ) -> Outcome:
        captured = bytearray()
        truncated = False
        assert proc.stdout is not None

        def capture(chunk: bytes) -> None:
            nonlocal truncated
            if len(captured) < limits.max_output_bytes:
                captured.extend(chunk[: limits.max_output_bytes - len(captured)])
            else:
                truncated = True

        pump_task = asyncio.create_task(pump_lines(proc.stdout, capture, logs))
        exit_task = asyncio.create_task(_exited(proc))
        cancel_task = asyncio.create_task(cancel.wait())
        done, _ = await asyncio.wait(
            {exit_task, cancel_task}, timeout=limits.timeout_seconds, return_when="FIRST_COMPLETED"
        )
        reason = None
        if exit_task not in done:
            reason = (
                "cancelled: " + cancel.reason
                if cancel.cancelled
                else (f"timed out after {limits.timeout_seconds:g} s")
            )
        # The command has exited (or is being stopped): a process it left in its group may
        # still hold the output pipe open, and the task must not wait for it.
        _kill_group(proc.pid)
        await proc.wait()
        for waiter in (exit_task, cancel_task):
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        await pump_task
        code = proc.returncode
        full: bytes | None = None
        if truncated:
            captured.extend(f"\n[output truncated at {limits.max_output_bytes} bytes]".encode())
        if len(captured) > limits.output_bytes:
            full = bytes(captured)
            # The marker fits within the inline limit too: the server keeps that many bytes
            # inline, and would cut a longer text (and this marker with it).
            marker = f"\n[output truncated: {len(full)} bytes, the first ones inline]"
            keep = _char_boundary(captured, max(limits.output_bytes - len(marker), 0))
            output = _text(captured[:keep], errors="ignore") + marker
        else:
            output = _text(captured)
        usage = {"wall_seconds": round(time.monotonic() - started, 3)}
        if reason is not None:
            return Outcome(False, code, output, reason, usage, cancelled=cancel.cancelled)
        if code != 0:
            why = f"exit code {code}"
            if code is not None and code < 0:
                why = f"killed by signal {-code}"
            return Outcome(False, code, output, why, usage)
        return Outcome(True, 0, output, None, usage, full_output=full)


class LineSplitter:
    """Bytes of a process's output → its log lines, newline-free. A line longer than
    ``MAX_LOG_LINE`` bytes becomes several log lines, cut at UTF-8 character boundaries."""

    def __init__(self, max_line: int | None = None) -> None:
        self.max_line = max_line or MAX_LOG_LINE
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer.extend(chunk)
        lines: list[str] = []
        while True:
            end = self._buffer.find(b"\n", 0, self.max_line + 1)
            if end >= 0:
                lines.append(self._take(end, skip=1))
            elif len(self._buffer) > self.max_line:
                lines.append(self._take(_char_boundary(self._buffer, self.max_line), skip=0))
            else:
                return lines

    def end(self) -> list[str]:
        """The last line, when the output did not end with a newline."""
        return [self._take(len(self._buffer), skip=0)] if self._buffer else []

    def _take(self, end: int, skip: int) -> str:
        piece = bytes(self._buffer[:end])
        del self._buffer[: end + skip]
        return _text(piece)


def _text(data: bytes | bytearray, errors: str = "replace") -> str:
    """Output bytes as the text a result or log line carries: invalid UTF-8 and NUL bytes
    (which no text column of the server holds) become U+FFFD. The whole output, NUL bytes
    included, is kept byte for byte under ``output_cid`` when it is large."""
    return data.decode(errors=errors).replace("\x00", "\ufffd")


def _char_boundary(data: bytearray, at: int) -> int:
    """``at``, moved back off UTF-8 continuation bytes (never to 0)."""
    cut = at
    while cut > at - 3 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """Returns when ``proc`` has exited. ``proc.wait()`` also waits for its output pipe to
    close, which a process it left behind may hold open; a pidfd says when the process itself
    is gone (without reaping it). Without pidfds (Linux before 5.3), ``proc.wait()``."""
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return  # exited and reaped already
    except (AttributeError, OSError):
        await proc.wait()
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


@contextlib.contextmanager
def _watched_dir(path: str) -> Iterator[None]:
    """While a task's work directory exists, the watchdog removes it should the runner die
    (its own clean-up, the TemporaryDirectory's exit, would never run)."""
    REAPER.track_dir(path)
    try:
        yield
    finally:
        REAPER.untrack_dir(path)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
